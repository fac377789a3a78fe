"""SoftHSM2 tokens for the Customer Key tests: a real PKCS#11 HSM in a temp dir.

Use the `softhsm` fixture (import `softhsm_fixture` into the test module): a fresh token
with a random user PIN in a 0600 file, and `create_key` / `destroy_key` / `set_decrypt` to
act as the customer's HSM administrator. Those run in a subprocess (`python -m tests.hsm`),
as a real administrator would, because PKCS#11 state is per process: a test process that
logged into the token itself would share (and, on closing, end) the login of an in-process
WCS. Every test of a pytest run uses one SoftHSM2 configuration (`SOFTHSM2_CONF`, read when
a process loads the library) with its token directory under the run's temp dir; each test
initialises its own token in it. Tests skip, saying why, only where SoftHSM2 is absent.
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = os.environ.get("WEBCONF_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
_tokens = itertools.count(1)


@dataclass
class SoftHsm:
    module: str
    token: str
    pin_file: Path
    pin: str

    def create_key(self, label: str, *, extractable: bool = False) -> None:
        """An AES-256 key in the token: sensitive, non-extractable (unless asked),
        encrypt + decrypt, as a customer would make it."""
        self._admin("create", label, "extractable" if extractable else "sealed")

    def destroy_key(self, label: str) -> None:
        self._admin("destroy", label)

    def set_decrypt(self, label: str, allowed: bool) -> None:
        """Disable (CKA_DECRYPT false) or re-enable a key without destroying it."""
        self._admin("decrypt", label, "on" if allowed else "off")

    def _admin(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-m", "tests.hsm", self.module, self.token,
                               str(self.pin_file), *args], capture_output=True, text=True,
                              timeout=60, env=env, cwd=ROOT)
        assert done.returncode == 0, done.stderr


_conf: list[Path] = []


def softhsm_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's one SoftHSM2 configuration, its tokens in a temp dir; SOFTHSM2_CONF names
    it for this process (an in-process WCS) and every subprocess."""
    if not Path(MODULE).is_file():
        pytest.skip(f"no PKCS#11 module at {MODULE} (apt-get install softhsm2)")
    if shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2-util not found (apt-get install softhsm2)")
    if not _conf:
        base = tmp_path_factory.mktemp("softhsm")
        (base / "tokens").mkdir()
        conf = base / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {base / 'tokens'}\n"
                        "objectstore.backend = file\nlog.level = ERROR\n")
        _conf.append(conf)
    os.environ["SOFTHSM2_CONF"] = str(_conf[0])
    return _conf[0]


@pytest.fixture(name="softhsm")
def softhsm_fixture(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> SoftHsm:
    """A fresh, initialised token of its own, with its user PIN in a 0600 file."""
    softhsm_conf(tmp_path_factory)
    token = f"webconf-{os.getpid()}-{next(_tokens)}"
    pin = f"pin-{secrets.token_hex(8)}"
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", token, "--pin", pin,
                    "--so-pin", secrets.token_hex(8)], check=True, capture_output=True,
                   timeout=60)
    pin_file = tmp_path / "hsm-user.pin"
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pin + "\n")
    return SoftHsm(MODULE, token, pin_file, pin)


def _main() -> int:
    """`python -m tests.hsm MODULE TOKEN PIN_FILE create|destroy|decrypt LABEL [ARG]`."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    parser = argparse.ArgumentParser()
    for name in ("module", "token", "pin_file", "op", "label"):
        parser.add_argument(name)
    parser.add_argument("arg", nargs="?")
    args = parser.parse_args()
    pin = Path(args.pin_file).read_text().strip()
    lib = pkcs11.lib(args.module)
    with lib.get_token(token_label=args.token).open(user_pin=pin, rw=True) as session:
        if args.op == "create":
            session.generate_key(KeyType.AES, 256, label=args.label, store=True, template={
                Attribute.SENSITIVE: args.arg != "extractable",
                Attribute.EXTRACTABLE: args.arg == "extractable",
                Attribute.ENCRYPT: True, Attribute.DECRYPT: True})
            return 0
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=args.label)
        if args.op == "destroy":
            key.destroy()
        elif args.op == "decrypt":
            key[Attribute.DECRYPT] = args.arg == "on"
        else:
            parser.error(f"unknown op {args.op}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
