"""docs/protocol.md stays true: its routes, messages and constants are the code's.

Each test reads a value from the code (the router, the channel's messages, the constants of
`webconf.protocol`, Cobblestone, the cookie authority, the key wrap) and asserts the doc
states exactly that value, and, where the doc lists things, that it lists nothing the code
does not have.
"""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

from aiohttp import web

from conferencing import cookies
from conferencing.api import errors, internal, public, webclient
from conferencing.crypto import keywrap
from webconf import cli, protocol
from webconf.crypto import cobblestone
from webconf.deploy.config import Config
from webconf.sip import digest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "protocol.md").read_text()
SOURCE_DIRS = ("webconf", "focus", "conferencing", "clients")


def section(number: int) -> str:
    """The text of `## <number>.` up to the next top-level section."""
    m = re.search(rf"^## {number}\. .*?(?=^## \d+\. |\Z)", DOC, re.M | re.S)
    assert m is not None, f"docs/protocol.md has no section {number}"
    return m.group(0)


def table_first_column(text: str) -> list[str]:
    """Backticked values in the first cell of each markdown table body row of `text`."""
    out = []
    lines = text.splitlines()
    for line, following in zip(lines, [*lines[1:], ""], strict=True):
        if line.startswith("| `") and not following.startswith("|---"):  # not a header row
            out += re.findall(r"`([^`]+)`", line.split("|")[1])
    return out


def test_sections_are_numbered_as_the_code_cites_them() -> None:
    titles = re.findall(r"^## (\d+)\. (.+)$", DOC, re.M)
    assert [int(n) for n, _ in titles] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    words = ["parts", "sip", "cookie", "http", "encryption", "share", "commands", "keys",
             "presenting", "browser"]
    for (_, title), word in zip(titles, words, strict=True):
        assert word in title.lower(), (title, word)
    cited: set[int] = set()
    for top in (*SOURCE_DIRS, "tests", "bench"):
        for path in (ROOT / top).rglob("*.py"):
            cited |= {int(n) for n in re.findall(r"docs/protocol\.md §(\d+)", path.read_text())}
    assert cited <= set(range(1, 11)), f"citations of missing sections: {cited}"


def _routes() -> set[tuple[str, str]]:
    app = web.Application()
    public.add_routes(app)
    internal.add_routes(app)
    webclient.add_routes(app, Config(base_dir=ROOT))
    return {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None}


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    routes = _routes()
    assert ("POST", "/v1/conferences/{conf}/items") in routes  # the router was really read
    for method, path in routes:
        assert f"`{method} {path}`" in DOC, f"{method} {path} missing from docs/protocol.md"
    documented = set(re.findall(r"`(GET|POST|PUT|PATCH|DELETE|HEAD) (/[^`\s]*)`", DOC))
    assert documented - routes == set(), "documented routes the WCS does not have"
    assert "`webconf_auth`" in section(3) and public.AUTH_COOKIE == "webconf_auth"


def _server_message_types() -> set[str]:
    """Every `"type"` value the WCS puts in a dict it sends, read from its source."""
    found: set[str] = set()
    for path in (ROOT / "conferencing").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (isinstance(key, ast.Constant) and key.value == "type"
                            and isinstance(value, ast.Constant) and isinstance(value.value, str)):
                        found.add(value.value)
    events_py = ROOT / "webconf" / "events.py"
    if events_py.exists():  # the typed events: each class's TYPE
        for node in ast.walk(ast.parse(events_py.read_text())):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and (
                    node.target.id == "TYPE") and isinstance(node.value, ast.Constant):
                found.add(node.value.value)
    return found


def test_channel_message_types_match_the_server() -> None:
    sent = _server_message_types()
    assert {"welcome", "item.shared", "revoked", "pong"} <= sent  # the source was really read
    channel_text = section(4).split("### 4.3", 1)[1]
    documented = set(table_first_column(channel_text))
    client_sent = {"ping", "presentation.set"}
    assert documented == sent - client_sent
    assert '`{"type": "ping"}`' in channel_text
    assert '"presentation.set", "item": <id>, "page": <n>}`' in channel_text
    assert "more than 20 messages in one second" in channel_text
    from conferencing.api import channel

    assert channel.FLOOD_MAX_MESSAGES == 20 and channel.FLOOD_WINDOW_SECONDS == 1.0
    cfg = Config(base_dir=ROOT)
    assert f"over {cfg.wcs.max_channel_message_bytes} bytes" in channel_text
    assert f"more than {cfg.wcs.max_channels_per_participant} channels" in channel_text
    assert f"more than {cfg.wcs.channel_queue_length} events" in channel_text


def test_error_codes_and_statuses_match() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3})", section(4), re.M)
    assert dict((code, int(status)) for code, status in rows) == errors.STATUS_BY_CODE
    assert 'Bearer realm="webconf", error="invalid_token"' in section(4)
    response = errors.json_error(401, "x")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="webconf", error="invalid_token"'


def test_join_dialog_constants() -> None:
    text = section(2)
    assert protocol.JOIN_CONTENT_TYPE == "application/vnd.webconf.join+json"
    assert f"`Content-Type: {protocol.JOIN_CONTENT_TYPE}`" in text
    assert f"`{protocol.CONFERENCE_OPAQUE}`" in text
    example = protocol.conference_uri("alice@contoso.example", "K7Q2")
    assert f"`{example}`" in text
    assert protocol.conference_id_of(example) == "K7Q2"
    assert f"`{protocol.ID_PATTERN}`" in DOC
    join_fields = re.search(r"```json\n(\{\"conference\".*?\})\n```", text, re.S)
    assert join_fields is not None
    assert re.findall(r'"(\w+)":', join_fields.group(1)) == list(protocol.Admission(
        "c", "p", "attendee", "k", "e", "u").to_json())
    from focus import core

    assert f"`{core.ALLOW}`" in text
    assert list(digest.DEFAULT_ALGORITHMS) == ["SHA-256", "MD5"]
    assert "default `SHA-256` then `MD5`" in text
    nonce = digest.NonceService(b"n" * 32).make("contoso.example", now=0)
    assert len(nonce) == 43 and "43 characters" in text
    cfg = Config(base_dir=ROOT)
    assert f"lives {cfg.focus.nonce_lifetime_seconds} s" in text
    assert cfg.focus.max_message_bytes == 65536 and "larger than 65536 bytes" in text
    assert f"`focus.leave_grace_seconds`\n  ({cfg.focus.leave_grace_seconds:g} s)" in text


def test_documented_settings_exist() -> None:
    cfg = Config(base_dir=ROOT)
    # Settings have an underscore in their key; `focus.pem` and the like are file names.
    named = set(re.findall(
        r"`(server|wcs|focus|store|share|keys|tenants)\.([a-z0-9]+_[a-z0-9_]+)`", DOC))
    assert ("wcs", "cookie_ttl_seconds") in named
    for section_name, key in named:
        assert key in {f.name for f in fields(getattr(cfg, section_name))}, (section_name, key)


def test_cookie_claims_and_verification_constants() -> None:
    text = section(3)
    claims = [c for cell in table_first_column(text) for c in re.split(r"`, `", cell)]
    assert set(claims) == set(cookies.REQUIRED_CLAIMS)
    assert len(claims) == len(cookies.REQUIRED_CLAIMS)
    assert f"| `iss` | `\"{cookies.ISSUER}\"` |" in text
    assert f"| `aud` | `\"{cookies.AUDIENCE}\"` |" in text
    assert cookies.ALGORITHM == "EdDSA" and '"alg": "EdDSA"' in text
    first, second, third = cookies.ROLES
    assert f"| `role` | `{first}`, `{second}` or `{third}` |" in text
    cfg = Config(base_dir=ROOT)
    assert cfg.wcs.cookie_ttl_seconds == 12 * 3600 and "(12 h)" in text
    assert f"with {cfg.wcs.cookie_leeway_seconds} s leeway" in text


def test_blob_format_constants() -> None:
    text = section(5)
    assert cobblestone.CHUNK_SIZE == 16384 and "**16384 bytes**" in text
    assert f"salt({cobblestone.SALT_SIZE})" in text
    assert f"commitment({cobblestone.COMMITMENT_SIZE})" in text
    assert f"the header is {cobblestone.HEADER_SIZE} bytes" in text
    assert f"a full ciphertext chunk is {cobblestone.CIPHERTEXT_CHUNK_SIZE} bytes" in text
    info = cobblestone._INFO_PREFIX
    assert info.endswith(b"\x00")
    assert f'"{info[:-1].decode()}" || 0x00' in text
    for size in (0, 1, 16383, 16384, 16385, 123456, 5 * 16384):
        assert cobblestone.ciphertext_size(size) == 56 + size + 16 * (size // 16384 + 1)
    assert "`ciphertext size = 56 + plaintext size + 16 * (plaintext size // 16384 + 1)`" in text
    offset = f"`56 + (p // {cobblestone.CHUNK_SIZE}) * {cobblestone.CIPHERTEXT_CHUNK_SIZE}`"
    assert offset in section(4)
    item = re.search(r'"size": (\d+), "ciphertext_size": (\d+)', section(4))
    assert item is not None
    assert cobblestone.ciphertext_size(int(item.group(1))) == int(item.group(2))


def test_item_context_encoding() -> None:
    text = section(5)
    assert '"webconf-item/v1"' in text
    context = cobblestone.item_context("contoso.example", "K7Q2", "Xy3")
    assert context.startswith(b"webconf-item/v1")
    assert f"`{context.hex()}`" in text
    ids = (("tenant", "contoso.example"), ("conference", "K7Q2"), ("item", "Xy3"))
    for label, value in ids:
        assert f"{label} `{value}`" in text


def test_key_hierarchy_aads() -> None:
    text = section(5)
    assert f'"{keywrap._DEK_PREFIX.decode()}" \\|\\| lp(tenant)' in text
    assert f'"{keywrap._TENANT_KEY_PREFIX.decode()}" \\|\\| lp(tenant)' in text
    assert f'info = "{keywrap._ITEM_META_INFO.decode()}"' in text
    assert f"`nonce({keywrap.NONCE_SIZE}) || ciphertext || tag({keywrap.TAG_SIZE})`" in text
    # lp() is what the doc says: 2-byte big-endian length, then the UTF-8 bytes.
    assert keywrap._lp("é") == b"\x00\x02" + "é".encode()


def test_every_command_is_documented() -> None:
    block = re.search(r"```\n(webconf init .*?)```", section(7), re.S)
    assert block is not None
    documented: set[str] = set()
    for line in block.group(1).splitlines():
        documented |= set(line.split()[1].split("|"))
    assert documented == set(cli.COMMANDS) | set(cli.OPTIONAL_COMMANDS)


def test_presentation_section_states_the_code_s_bounds() -> None:
    from conferencing import pdfpages, presenting
    from conferencing.api import presentation

    text = section(9)
    assert "### 9.1 Presentation state" in text
    assert (f"a token bucket of {presenting.RATE_BURST} changes refilled\n"
            f"at {presenting.RATE_PER_SECOND:g} per second") in text
    assert f"within {pdfpages.DEADLINE_SECONDS:g} s and " in text
    assert f"{pdfpages.MAX_READ_BYTES // (1024 * 1024)} MiB of reads" in text
    assert f"over {presentation.MAX_BODY} bytes, `413`" in text
    assert "`page_out_of_range`" in text and "`forbidden`" in text
