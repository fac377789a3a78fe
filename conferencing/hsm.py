"""A Customer Key's HSM, reached through PKCS#11 (python-pkcs11; docs/protocol.md §8.4).

The WCS and `webconf tenant customer-key` ask the HSM to encrypt or decrypt a tenant key
(TIK) under a customer's AES-256 key with CKM_AES_GCM; the customer's key never leaves the
HSM. Every failure is sorted into one of two kinds, because the keyring must treat them
oppositely:

* `HsmUnreachable`: the HSM cannot be asked (the module does not load, no such token, the
  PIN file unreadable, login refused, a session or device error, no answer in time). The
  keyring may then use the availability key.
* `HsmKeyRevoked`: the HSM answered, and the key is gone (no object of that label),
  disabled (CKA_DECRYPT false, CKR_KEY_FUNCTION_NOT_PERMITTED) or not the key that wrapped
  (the GCM tag fails). That is the customer revoking: never fall back. Anything we cannot
  place is sorted here too: failing closed is the safe side.

PKCS#11 is per process: a module is loaded and C_Initialize'd once (python-pkcs11 finalizes
it when its `lib` object is collected, which would end every session of the process, so the
objects live here for the process's life) and a token's login is shared by all the
process's sessions (closing a logged-in session logs them all out). So this module keeps one
`lib` per module path and one logged-in session per token, and runs every call of a module
on one daemon thread of its own (C_Initialize(NULL) promises the library no concurrent
calls): the event loop never blocks, a hung HSM costs its callers a timeout (and no other
module anything), and a process can still exit. After an unreachable-kind error the module
is re-initialized (which also finds tokens added since) and the call retried once; after a
"no such key" the session is reopened with a fresh login and the lookup retried once, so a
lost login is never mistaken for a revocation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from webconf.deploy.keys import KeyFileError, read_pin_file

from .crypto.customer_wrap import GCM_IV_SIZE

__all__ = ["Hsm", "HsmError", "HsmKeyRevoked", "HsmTarget", "HsmUnreachable", "KeyInfo"]

log = logging.getLogger("webconf.hsm")

T = TypeVar("T")

KEY_BYTES = 32
_UNREACHABLE: tuple[type[Exception], ...] = (
    p11.NoSuchToken, p11.MultipleTokensReturned, p11.TokenNotPresent, p11.TokenNotRecognised,
    p11.SlotIDInvalid, p11.DeviceError, p11.DeviceMemory, p11.DeviceRemoved, p11.HostMemory,
    p11.SessionClosed, p11.SessionHandleInvalid, p11.SessionCount, p11.PinIncorrect,
    p11.PinExpired, p11.PinInvalid, p11.PinLenRange, p11.PinLocked, p11.UserNotLoggedIn,
    p11.UserPinNotInitialized, p11.FunctionCancelled, p11.OperationActive,
)
"""PKCS#11 errors that say "the HSM cannot be asked now", not "the key said no"."""


@dataclass(frozen=True)
class HsmTarget:
    """Where a tenant's customer keys live: the same on every node (docs/protocol.md §8.4)."""

    module: str
    token: str
    pin_file: str


class HsmError(Exception):
    """A PKCS#11 call failed; `reason` is ours (error class names), never the PIN."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HsmUnreachable(HsmError):
    """The HSM could not be asked (module, token, login, session, device, timeout)."""


class HsmKeyRevoked(HsmError):
    """The HSM answered: this key is gone, disabled, or not the one that wrapped."""


@dataclass(frozen=True)
class KeyInfo:
    """What `webconf tenant customer-key` checks of a key before trusting it."""

    aes_256: bool
    sensitive: bool
    extractable: bool
    encrypt: bool
    decrypt: bool
    gcm: bool
    """The token offers CKM_AES_GCM."""


class _Worker:
    """One daemon thread running a module's calls in order (ThreadPoolExecutor threads are
    joined at exit, so a hung HSM call would keep the process from exiting)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any],
                                            Callable[[], Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, fn))
        return future

    def _run(self) -> None:
        while True:
            future, fn = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue  # its caller timed out before it started
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)


class _Module:
    """One PKCS#11 library of this process, its logged-in sessions, and its thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.worker = _Worker("webconf-hsm")
        self._lib: Any = None
        self._sessions: dict[str, Any] = {}

    # Everything below runs on the worker thread.
    def _library(self) -> Any:
        if self._lib is None:
            if not Path(self.path).is_file():
                raise HsmUnreachable("the PKCS#11 module is not a file on this node")
            try:
                self._lib = pkcs11.lib(self.path)
            except p11.PKCS11Error as exc:
                raise HsmUnreachable(f"the PKCS#11 module did not load "
                                     f"({type(exc).__name__})") from None
        return self._lib

    def _session(self, target: HsmTarget) -> Any:
        session = self._sessions.get(target.token)
        if session is not None:
            return session
        token = self._library().get_token(token_label=target.token)
        try:
            pin = read_pin_file(Path(target.pin_file))
        except KeyFileError as exc:
            raise HsmUnreachable(f"the PIN file cannot be used: {exc}") from None
        try:
            session = token.open(user_pin=pin)
        except p11.UserAlreadyLoggedIn:
            session = token.open()  # the process's login is shared by its sessions
        self._sessions[target.token] = session
        return session

    def _drop(self, token: str) -> None:
        session = self._sessions.pop(token, None)
        if session is not None:
            try:
                session.close()
            except p11.PKCS11Error:
                pass

    def _reinitialize(self) -> None:
        """Drop every session and re-run C_Initialize (finds tokens added since load)."""
        self._sessions.clear()  # their handles die with C_Finalize
        if self._lib is not None:
            try:
                self._lib.reinitialize()
            except p11.PKCS11Error:
                self._lib = None  # reload on next use

    def call(self, target: HsmTarget, op: Callable[[Any], T]) -> T:
        """`op(session)`, retried once after a reconnect; errors sorted (module docstring)."""
        for attempt in (1, 2):
            try:
                try:
                    session = self._session(target)
                except HsmUnreachable:
                    raise
                except p11.PKCS11Error as exc:  # anything while connecting: not the key
                    raise HsmUnreachable(f"cannot open the token ({type(exc).__name__})"
                                         ) from None
                return op(session)
            except HsmUnreachable as exc:
                self._reinitialize()
                if attempt == 2:
                    raise HsmUnreachable(exc.reason) from None
            except _UNREACHABLE as exc:
                self._reinitialize()
                if attempt == 2:
                    raise HsmUnreachable(f"the HSM failed ({type(exc).__name__})") from None
            except p11.NoSuchKey:
                self._drop(target.token)  # a fresh login, in case ours was lost
                if attempt == 2:
                    raise HsmKeyRevoked("no key of that label") from None
            except HsmKeyRevoked:
                raise
            except (p11.PKCS11Error, AttributeError) as exc:
                raise HsmKeyRevoked(f"the key refused ({type(exc).__name__})") from None
        raise AssertionError("unreachable")  # pragma: no cover


_MODULES: dict[str, _Module] = {}
_MODULES_LOCK = threading.Lock()


def _module(path: str) -> _Module:
    with _MODULES_LOCK:
        module = _MODULES.get(path)
        if module is None:
            module = _MODULES[path] = _Module(path)
        return module


def _key(session: Any, label: str) -> Any:
    key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
    if key.key_type != KeyType.AES:
        raise HsmKeyRevoked("not an AES key")
    return key


def _decrypt(label: str, iv: bytes, wrapped: bytes, aad: bytes) -> Callable[[Any], bytes]:
    def op(session: Any) -> bytes:
        key = _key(session, label)
        if not key[Attribute.DECRYPT]:
            raise HsmKeyRevoked("decryption disabled on the key")
        plain: bytes = key.decrypt(wrapped, mechanism=Mechanism.AES_GCM,
                                   mechanism_param=GCMParams(iv, aad))
        if len(plain) != KEY_BYTES:
            raise HsmKeyRevoked("the HSM returned a key of the wrong size")
        return plain
    return op


def _encrypt(label: str, plain: bytes, aad: bytes) -> Callable[[Any], tuple[bytes, bytes]]:
    def op(session: Any) -> tuple[bytes, bytes]:
        key = _key(session, label)
        if not key[Attribute.ENCRYPT]:
            raise HsmKeyRevoked("encryption disabled on the key")
        iv = os.urandom(GCM_IV_SIZE)
        wrapped: bytes = key.encrypt(plain, mechanism=Mechanism.AES_GCM,
                                     mechanism_param=GCMParams(iv, aad))
        return iv, wrapped
    return op


def _info(label: str) -> Callable[[Any], KeyInfo]:
    def op(session: Any) -> KeyInfo:
        key = _key(session, label)
        return KeyInfo(
            aes_256=key.key_length == KEY_BYTES * 8,
            sensitive=bool(key[Attribute.SENSITIVE]),
            extractable=bool(key[Attribute.EXTRACTABLE]),
            encrypt=bool(key[Attribute.ENCRYPT]), decrypt=bool(key[Attribute.DECRYPT]),
            gcm=Mechanism.AES_GCM in session.token.slot.get_mechanisms())
    return op


class Hsm:
    """Async access to HSMs, each call on its module's thread and bounded by `timeout`."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def _call(self, target: HsmTarget, op: Callable[[Any], T]) -> T:
        module = _module(target.module)
        future = module.worker.submit(lambda: module.call(target, op))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            future.cancel()
            raise HsmUnreachable(f"no answer within {self.timeout:g} s") from None

    async def decrypt(self, target: HsmTarget, label: str, iv: bytes, wrapped: bytes,
                      aad: bytes) -> bytes:
        """The TIK from its HSM wrap (AES-GCM inside the HSM, the tag checked there)."""
        return await self._call(target, _decrypt(label, iv, wrapped, aad))

    async def encrypt(self, target: HsmTarget, label: str, plain: bytes,
                      aad: bytes) -> tuple[bytes, bytes]:
        """(iv, ciphertext || tag) of `plain` under the HSM key `label`."""
        return await self._call(target, _encrypt(label, plain, aad))

    async def key_info(self, target: HsmTarget, label: str) -> KeyInfo:
        return await self._call(target, _info(label))
