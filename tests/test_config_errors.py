"""A configuration error (a bad value in `webconf.toml` or in a `WEBCONF_*` variable) is
one line on stderr and exit 2 from every server entry point, never a traceback: the same
as a schema or database it cannot start with, so `webconf serve` can relay that line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from webconf.deploy.config import CONFIG_NAME, Config
from webconf.deploy.init import init_deployment
from webconf.deploy.local import free_port

from .conftest import TENANTS

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = [(["-m", "conferencing"], "wcs"), (["-m", "focus"], "focus"),
                (["-m", "webconf", "serve"], "webconf serve")]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


@pytest.fixture
def deployment_dir(tmp_path: Path) -> Config:
    return init_deployment(tmp_path / "dep", https_port=free_port(), internal_port=free_port(),
                           sip_port=free_port(), tenants=TENANTS)


@pytest.mark.parametrize("command,prog", ENTRY_POINTS, ids=["wcs", "focus", "serve"])
def test_a_bad_variable_is_one_line_and_exit_2(deployment_dir: Config, command: list[str],
                                               prog: str) -> None:
    cfg = deployment_dir
    proc = run([*command, str(cfg.base_dir)], {"WEBCONF_WCS_HTTPS_PORT": "notanumber"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"{prog}: WEBCONF_WCS_HTTPS_PORT: expected an integer, got 'notanumber'"]
    assert proc.stdout == ""


@pytest.mark.parametrize("command,prog", ENTRY_POINTS[:2], ids=["wcs", "focus"])
def test_a_bad_value_in_the_file_is_one_line_and_exit_2(deployment_dir: Config,
                                                        command: list[str], prog: str) -> None:
    cfg = deployment_dir
    path = cfg.base_dir / CONFIG_NAME
    text = path.read_text()
    port_line = f"https_port = {cfg.wcs.https_port}\n"
    assert port_line in text
    path.write_text(text.replace(port_line, 'https_port = "eighty"\n'))
    proc = run([*command, str(cfg.base_dir)], {})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"{prog}: wcs.https_port: expected an integer, got 'eighty'"]
