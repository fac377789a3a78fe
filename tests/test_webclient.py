"""The WCS serves the web client's built files at / (docs/protocol.md §10.2): security
headers on every answer, a strict file-name rule under /assets, the page's config, and a
clear 503 JSON error when the client is not built."""

from __future__ import annotations

from pathlib import Path

import pytest

from webconf.deploy.config import Config

from .conftest import Wcs, running_wcs


def built(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>webconf</title>")
    (root / "assets" / "app.js").write_text("export {};")
    (root / "assets" / "app.css").write_text("body{}")
    (root / "secret.key").write_text("not served")
    return root


def check_security_headers(headers: object, cfg: Config) -> None:
    csp = headers["Content-Security-Policy"]  # type: ignore[index]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and "unsafe" not in csp
    assert directives["default-src"] == "'none'"
    https = cfg.public_url.removeprefix("https://")
    assert directives["connect-src"].split() == [
        "'self'", f"wss://{https}", f"wss://127.0.0.1:{cfg.focus.wss_port}"]
    assert headers["X-Content-Type-Options"] == "nosniff"  # type: ignore[index]
    assert headers["Referrer-Policy"] == "no-referrer"  # type: ignore[index]


async def test_page_assets_and_config(deployment: Config, tmp_path: Path) -> None:
    deployment.wcs.web_dir = str(built(tmp_path))
    async with running_wcs(deployment) as wcs:
        async with wcs.http.get(f"{wcs.url}/") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/html")
            assert "<title>webconf</title>" in await resp.text()
            check_security_headers(resp.headers, deployment)
        async with wcs.http.get(f"{wcs.url}/assets/app.js") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/javascript")
            check_security_headers(resp.headers, deployment)
        async with wcs.http.get(f"{wcs.url}/config.json") as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "webconf_url": deployment.public_url,
                "wss_url": f"wss://127.0.0.1:{deployment.focus.wss_port}"}
            check_security_headers(resp.headers, deployment)
        for name in ("..%2Fsecret.key", ".hidden.js", "app.exe", "missing.js"):
            async with wcs.http.get(f"{wcs.url}/assets/{name}") as resp:
                assert resp.status == 404, name
                assert (await resp.json())["error"]["code"] == "not_found"
        async with wcs.http.get(f"{wcs.url}/secret.key") as resp:
            assert resp.status == 404


async def test_unbuilt_client_is_a_clear_error(deployment: Config, tmp_path: Path) -> None:
    deployment.wcs.web_dir = str(tmp_path / "nothing-built")
    async with running_wcs(deployment) as wcs:
        for path in ("/", "/assets/app.js"):
            async with wcs.http.get(f"{wcs.url}{path}") as resp:
                assert resp.status == 503
                error = (await resp.json())["error"]
                assert error["code"] == "web_client_missing" and "make web" in error["message"]


async def test_the_repository_build_is_served(wcs: Wcs) -> None:
    """What `make web` built (web/dist), when it is there: the page holds the test hooks."""
    from conferencing.api.webclient import DEFAULT_WEB_DIR

    if not (DEFAULT_WEB_DIR / "index.html").is_file():
        pytest.skip("web/dist is not built (make web)")
    async with wcs.http.get(f"{wcs.url}/") as resp:
        page = await resp.text()
    for hook in ('id="user"', 'id="password"', 'id="conference"', 'id="join"', 'id="status"',
                 'id="slide"', 'id="leave"'):
        assert hook in page
    assert "<script>" not in page  # no inline script (the CSP forbids it anyway)


async def test_browser_cookie_for_the_channel(wcs: Wcs) -> None:
    """Bearer in, the `webconf_auth` HTTP cookie out (Secure, HttpOnly, SameSite=Strict, the
    conference's path), which the channel then takes from a page of our origin."""
    alice = await wcs.admit("WEBC", "alice@contoso.example")
    url = f"{wcs.url}/v1/conferences/{alice.conference}/browser-cookie"
    async with wcs.http.post(url, headers=alice.headers) as resp:
        assert resp.status == 204
        set_cookie = resp.headers["Set-Cookie"]
    assert set_cookie.startswith(f"webconf_auth={alice.cookie};")
    attributes = {a.strip().split("=")[0].lower() for a in set_cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite", "path", "max-age"} <= attributes
    assert "SameSite=Strict" in set_cookie
    assert f"Path=/v1/conferences/{alice.conference}/" in set_cookie
    async with wcs.http.post(url, headers={"Cookie": f"webconf_auth={alice.cookie}"}) as resp:
        assert resp.status == 401  # Bearer only
    ws_url = f"{wcs.url.replace('https', 'wss')}/v1/conferences/{alice.conference}/channel"
    async with wcs.http.ws_connect(ws_url, headers={
            "Cookie": f"webconf_auth={alice.cookie}", "Origin": wcs.cfg.public_url}) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
