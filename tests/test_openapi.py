"""The OpenAPI 3.1 document of the public API: served, valid, complete, and true.

- `/openapi.json` serves exactly `conferencing/api/openapi.json` (package data);
- the document is valid OpenAPI 3.1 (schemathesis checks it against the official OAS 3.1
  JSON Schema) and every `$ref`, link and path parameter in it resolves;
- every route of the running aiohttp app is documented, and every documented operation is
  routed;
- schemathesis (its CLI, as CI would run it) fuzzes the running WCS over real TLS with a
  real cookie, within a fixed time budget, and finds no 5xx and no response that the
  document does not describe (status, headers, content type, body schema);
- the data channel, which an HTTP fuzzer cannot drive, is checked against the document here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
import schemathesis
import tomli_w

from conferencing.api.public import load_openapi

from .conftest import Wcs

DOC_PATH = Path(__file__).resolve().parents[1] / "conferencing" / "api" / "openapi.json"
CONF = "K7Q2"  # the URI id the organizer creates; the API names it by its public id
ORGANIZER = "alice@contoso.example"
SCHEMATHESIS_BUDGET = float(os.environ.get("WEBCONF_SCHEMATHESIS_SECONDS", "30"))
SCHEMATHESIS_SEED = int(os.environ.get("WEBCONF_SCHEMATHESIS_SEED", "20240611"))
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def load_doc() -> dict[str, Any]:
    return json.loads(DOC_PATH.read_text(encoding="utf-8"))


# -- conformance of one response (for what the fuzzer cannot reach) --------------------------

def resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def documented_response(doc: dict[str, Any], path: str, method: str,
                        status: int) -> dict[str, Any]:
    operation = doc["paths"][path][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, (
        f"{method} {path} answered {status}, documented: {sorted(responses)}")
    return resolve(doc, responses[str(status)])


def assert_conforms(doc: dict[str, Any], path: str, method: str, status: int,
                    headers: Any, body: bytes) -> None:
    """Status documented, required headers present and valid, content type and body schema."""
    response = documented_response(doc, path, method, status)
    for name, header in response.get("headers", {}).items():
        header = resolve(doc, header)
        value = headers.get(name)
        if value is None:
            assert not header.get("required"), f"{status}: header {name} missing"
            continue
        jsonschema_rs.validate(header["schema"], value)
    content = response.get("content")
    if not content:
        return
    media_type = headers.get("Content-Type", "").split(";")[0].strip()
    assert media_type in content, f"{status}: content type {media_type!r} not documented"
    if media_type == "application/json":
        schema = {"components": doc["components"], **content[media_type]["schema"]}
        jsonschema_rs.validate(schema, json.loads(body))


# -- the document ------------------------------------------------------------------------------

async def test_served_document_is_the_repo_file(wcs: Wcs) -> None:
    async with wcs.http.get(f"{wcs.url}/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        served = await resp.read()
    assert served == DOC_PATH.read_bytes() == load_openapi()
    assert json.loads(served) == load_doc()


def test_document_is_valid_openapi_3_1() -> None:
    doc = load_doc()
    assert doc["openapi"].startswith("3.1.")
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # the official OAS 3.1 JSON Schema (raises on any violation)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(
        1 for item in doc["paths"].values() for m in item if m in HTTP_METHODS)

    # Every $ref resolves.
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                resolve(doc, node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    operation_ids = {op["operationId"] for item in doc["paths"].values()
                     for m, op in item.items() if m in HTTP_METHODS}
    for path, item in doc["paths"].items():
        templated = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            params = [resolve(doc, p) for p in item.get("parameters", []) + op.get(
                "parameters", [])]
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == templated, f"{method} {path}: path parameters {in_path}"
            for status, response in op["responses"].items():
                response = resolve(doc, response)
                for link in response.get("links", {}).values():
                    assert link["operationId"] in operation_ids
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema["allOf"][0] == {"$ref": "#/components/schemas/Error"}
            if op.get("security", doc["security"]):
                assert "401" in op["responses"], f"{method} {path}: 401 undocumented"
            assert "405" in op["responses"]
    # The item schema is the one the service builds (conferencing.service._item_view).
    item = doc["components"]["schemas"]["Item"]
    assert set(item["required"]) == {"id", "name", "content_type", "size", "ciphertext_size",
                                     "presenter", "created_at", "url", "key_url"}
    assert set(item["properties"]) == set(item["required"]) | {"sha256", "derived_from",
                                                                "pages"}
    assert set(doc["components"]["securitySchemes"]) == {"bearerAuth", "cookieAuth"}
    assert doc["components"]["securitySchemes"]["cookieAuth"]["name"] == "webconf_auth"


def route_pairs(wcs: Wcs) -> set[tuple[str, str]]:
    assert wcs.server is not None
    app = wcs.server.runners[0].app  # the public listener
    pairs = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        pairs.add((route.method.lower(), resource.canonical))
    return pairs


async def test_every_route_is_documented_and_every_operation_routed(wcs: Wcs) -> None:
    doc = load_doc()
    documented = {(m, path) for path, item in doc["paths"].items() for m in item
                  if m in HTTP_METHODS}
    routed = route_pairs(wcs)
    # aiohttp answers HEAD on every GET route (RFC 9110 §9.3.2: GET without the body).
    explicit = {(m, p) for m, p in routed if m != "head" or ("get", p) not in routed}
    assert explicit - documented == set(), "routes missing from openapi.json"
    assert documented - routed == set(), "documented operations without a route"


# -- the data channel (not an HTTP fuzzer's job; checked against the document here) -------

async def test_channel_answers_are_documented(wcs: Wcs) -> None:
    doc = load_doc()
    path = "/v1/conferences/{conf}/channel"
    alice = await wcs.admit("CH1", ORGANIZER)
    other = await wcs.admit("CH2", "bob@contoso.example")
    url = f"{wcs.url}/v1/conferences/{alice.conference}/channel"
    attempts = [
        ({}, url, 401),
        (alice.headers, url, 400),  # a plain GET, not an upgrade
        (other.headers, url, 403),
        (alice.headers, f"{wcs.url}/v1/conferences/bad%20id/channel", 404),
    ]
    for headers, target, expected in attempts:
        async with wcs.http.get(target, headers=headers) as resp:
            body = await resp.read()
            assert resp.status == expected, (target, body)
            assert_conforms(doc, path, "get", resp.status, resp.headers, body)
    async with wcs.http.post(url, headers=alice.headers) as resp:
        assert resp.status == 405
        assert_conforms(doc, path, "get", resp.status, resp.headers, await resp.read())
    sockets = []
    try:
        for _ in range(wcs.cfg.wcs.max_channels_per_participant):
            ws = await wcs.http.ws_connect(url, headers=alice.headers)
            sockets.append(ws)
            assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await wcs.http.ws_connect(url, headers=alice.headers)
        assert refused.value.status == 429
        documented_response(doc, path, "get", 429)
        documented_response(doc, path, "get", 101)
    finally:
        for ws in sockets:
            await ws.close()


# -- schemathesis against the running WCS ---------------------------------------------------

def schemathesis_config(wcs: Wcs, cookie: str, conf: str, report_dir: Path,
                        pids: list[str] | None = None) -> dict[str, Any]:
    """Everything the run needs, as a schemathesis.toml.

    The cookie is the organizer's of `CONF`, whose public id is `conf`; `{conf}` is drawn
    from a dictionary holding `conf` three times out of four, so most requests get past
    authentication while the rest hit other (and invalid) conference ids. Links in the
    document carry item ids from an upload to its key, content and delete (the stateful
    phase). The organizer's cookie may turn attendee downloads off (`updateConference`);
    its own downloads stay open. `{pid}` is drawn from `pids` (attendees of `CONF`) three
    times out of four, so role changes and ejects succeed too (docs/protocol.md §9.2).
    """
    accepted_anyway = ["2xx", "3xx", "401", "403", "404", "409", "429"]
    return {
        "base-url": wcs.url,
        "tls-verify": str(wcs.cfg.certs_dir / "ca.pem"),
        "headers": {"Authorization": f"Bearer {cookie}"},
        "seed": SCHEMATHESIS_SEED,
        "max-time": SCHEMATHESIS_BUDGET,
        "request-timeout": 10.0,
        "workers": 1,
        "generation": {"max-examples": 40, "database": "none", "no-shrink": False},
        "dictionaries": {"conference": {"values": [conf]},
                         "participant": {"values": pids or ["none"]}},
        "parameters": {"path.conf": {"dictionary": "conference", "probability": 0.75},
                       "path.pid": {"dictionary": "participant", "probability": 0.75}},
        "reports": {"json": {"enabled": True, "path": str(report_dir / "report.json")},
                    "har": {"enabled": True, "path": str(report_dir / "requests.har")}},
        "operations": [
            # Semantic checks a JSON schema cannot express: a declared X-Content-SHA256 that
            # does not match the body, or an X-Item-Name that decodes to something invalid.
            {"include-operation-id": "uploadItem",
             "checks": {"positive_data_acceptance": {
                 "expected-statuses": [*accepted_anyway, "400"]}}},
            # A well-formed Range may still be unsatisfiable for this blob.
            {"include-operation-id": "getItemContent",
             "checks": {"positive_data_acceptance": {
                 "expected-statuses": [*accepted_anyway, "416"]}}},
            {"include-operation-id": "getItemDocument",
             "checks": {"positive_data_acceptance": {
                 "expected-statuses": [*accepted_anyway, "416"]}}},
            # A WebSocket upgrade is not an HTTP fuzzer's job: test_channel.py and
            # test_channel_answers_are_documented cover it.
            {"include-operation-id": "openChannel", "enabled": False},
            # Ending the conference would end the run's cookie with it: tests/test_lifecycle.py
            # covers it.
            {"include-operation-id": "endConference", "enabled": False},
        ],
    }


def status_counts(har_path: Path, public_conf: str) -> Counter[tuple[str, str, int]]:
    har = json.loads(har_path.read_text())
    counts: Counter[tuple[str, str, int]] = Counter()
    for entry in har["log"]["entries"]:
        url = entry["request"]["url"]
        path = re.sub(r"^https://[^/]+", "", url).split("?")[0]
        conf_match = re.match(r"^/v1/conferences/([^/]*)", path)
        conf = conf_match.group(1) if conf_match else ""
        shape = re.sub(r"^/v1/conferences/[^/]*", "/v1/conferences/{conf}", path)
        shape = re.sub(r"/items/[^/]+", "/items/{item}", shape)
        shape = re.sub(r"/participants/[^/]+", "/participants/{pid}", shape)
        counts[(entry["request"]["method"], shape + (" @CONF" if conf == public_conf else ""),
                entry["response"]["status"])] += 1
    return counts


@pytest.mark.slow
@pytest.mark.timeout(SCHEMATHESIS_BUDGET + 240)
async def test_schemathesis_finds_no_server_error_or_schema_violation(
        wcs: Wcs, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="webconf")
    alice = await wcs.admit(CONF, ORGANIZER)
    # Items from the start, so even the first listings check the item schema.
    for i in range(2):
        status, body = await wcs.upload(alice, os.urandom(40_000 + i), name=f"seed{i}.bin")
        assert status == 201, body
    attendees = [await wcs.admit(CONF, f"user{i}@contoso.example", organizer=ORGANIZER)
                 for i in range(8)]
    report_dir = tmp_path / "report"
    config = tmp_path / "schemathesis.toml"
    config.write_text(tomli_w.dumps(
        schemathesis_config(wcs, alice.cookie, alice.conference, report_dir,
                            [a.pid for a in attendees])))
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(config),
        "run", f"{wcs.url}/openapi.json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"})
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), SCHEMATHESIS_BUDGET + 180)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    elapsed = time.monotonic() - started
    output = out.decode(errors="replace")
    assert (report_dir / "report.json").exists(), output[-20000:]
    report = json.loads((report_dir / "report.json").read_text())
    counts = status_counts(report_dir / "requests.har", alice.conference)
    summary = "\n".join(f"{n:5d}  {m} {p} -> {s}" for (m, p, s), n in sorted(counts.items()))
    print(f"schemathesis {schemathesis.__version__}: {sum(counts.values())} requests in "
          f"{elapsed:.1f}s (seed {SCHEMATHESIS_SEED})\n{summary}")
    assert proc.returncode == 0, output[-20000:]
    assert report["failures"] == [] and report["errors"] == [], output[-20000:]
    # The only warning expected: most generated uploads declare an X-Content-SHA256 that
    # cannot match their random body, which the server rightly refuses with 400.
    warnings = {kind: ops for kind, ops in report["warnings"].items() if ops}
    assert warnings in ({}, {"validation_mismatch": ["POST /v1/conferences/{conf}/items"]}), (
        warnings)
    assert not any(s >= 500 for (_, _, s) in counts)
    # The cookie worked: every authenticated operation succeeded at least once on CONF.
    base = "/v1/conferences/{conf}"
    for method, path, statuses in (
            ("POST", f"{base}/items @CONF", {201}),
            ("GET", f"{base}/items @CONF", {200}),
            ("GET", f"{base}/items/{{item}}/key @CONF", {200}),
            ("GET", f"{base}/items/{{item}}/content @CONF", {200, 206, 304}),
            ("GET", f"{base}/items/{{item}}/document @CONF", {200, 206, 304}),
            ("PATCH", f"{base} @CONF", {200}),
            ("GET", f"{base}/participants @CONF", {200}),
            ("PATCH", f"{base}/participants/{{pid}} @CONF", {200}),
            ("DELETE", f"{base}/participants/{{pid}} @CONF", {204}),
            ("DELETE", f"{base}/items/{{item}} @CONF", {204})):
        assert any(counts[(method, path, s)] for s in statuses), (method, path, summary)
    # ... and other conferences were tried too (and refused).
    assert any(c for (m, p, s), c in counts.items() if "@CONF" not in p and p.startswith(
        "/v1/") and s in (403, 404)), summary
    # The server is still healthy and the share holds no leftovers.
    async with wcs.http.get(f"{wcs.url}/healthz") as resp:
        assert resp.status == 200
    assert list((wcs.cfg.share_dir / ".tmp").iterdir()) == []
    errors = [r.getMessage() for r in caplog.records
              if r.name.startswith("webconf") and r.levelno >= logging.ERROR]
    assert errors == [], errors[:5]
