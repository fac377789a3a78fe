"""Download one item and decrypt it while it streams: only verified plaintext reaches disk.

The ciphertext (`GET item["url"]`) flows through `cobblestone.Decryptor`, which releases a
16 KiB chunk only after its tag verified. That plaintext goes to a hidden temp file next
to the destination; the file is fsynced and renamed into place only once the whole blob
authenticated (final chunk included), the size matches `item["size"]` and the SHA-256
matches the one the presenter declared. Any failure removes the temp file, so a forged,
truncated or extended blob never leaves partial plaintext behind. `download_document`
takes the WCS's decrypting download instead (`.../document`) and keeps the same checks.

Item names come from presenters and are not trusted: in a folder, `safe_filename` picks a
name that cannot leave the folder, and an existing file is never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiofiles.os
import aiohttp
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from webconf.crypto.cobblestone import CobblestoneError, Decryptor

from .wcs import READ_SIZE, WcsError, WcsSession

MAX_NAME_BYTES = 200
TEMP_SUFFIX = ".webconf-part"
_SEPARATORS = re.compile(r"[/\\]+")
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
_WINDOWS_DEVICES = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\.|$)", re.I)
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Controls, format characters (bidi overrides that disguise an extension), lone surrogates
and line separators."""


class DownloadError(Exception):
    """The item could not be fetched (HTTP or network failure); nothing was written."""

    def __init__(self, item_id: str, name: str, message: str) -> None:
        super().__init__(f"item {name}: {message}")
        self.item_id = item_id
        self.name = name


class ItemIntegrityError(DownloadError):
    """The ciphertext failed authentication, or size or SHA-256 did not match."""


@dataclass(frozen=True)
class DownloadResult:
    item_id: str
    name: str
    size: int
    """Plaintext bytes, verified against the item's recorded size."""
    sha256: str
    """Hex SHA-256 of the plaintext (checked against the declared one, when there was one)."""
    path: Path | None
    """Where the plaintext was saved; None when only hashed."""
    seconds: float


def safe_filename(name: str, fallback: str = "item") -> str:
    """A file name for `name` that stays inside its folder on POSIX and Windows alike.

    Path separators become `_` (with `.`/`..` components dropped), control and format
    characters go, leading dots (hidden files, `..`) and trailing dots/spaces are stripped,
    Windows device names get a `_` prefix, and the result fits in 200 UTF-8 bytes with its
    extension kept. An empty result falls back to `fallback` (the item id).
    """
    text = unicodedata.normalize("NFC", name)
    parts = [p for p in _SEPARATORS.split(text) if p.strip() not in ("", ".", "..")]
    text = "_".join(parts)
    text = "".join("_" if c in _WINDOWS_FORBIDDEN else c for c in text
                   if unicodedata.category(c) not in _DROPPED_CATEGORIES)
    text = text.lstrip(". \t").rstrip(". \t")
    if _WINDOWS_DEVICES.match(text):
        text = "_" + text
    text = _fit(text, MAX_NAME_BYTES).rstrip(". \t")
    if not text:
        return safe_filename(fallback, "item") if fallback != "item" else "item"
    return text


def _fit(text: str, limit: int) -> str:
    """Cut to `limit` UTF-8 bytes on a character boundary, keeping a short extension."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    stem, dot, ext = text.rpartition(".")
    ext_raw = (dot + ext).encode("utf-8")
    if not stem or len(ext_raw) > 16:
        return raw[:limit].decode("utf-8", "ignore")
    return stem.encode("utf-8")[: limit - len(ext_raw)].decode("utf-8", "ignore") + dot + ext


def _candidates(folder: Path, filename: str) -> Iterator[Path]:
    """`name.ext`, then `name (2).ext`, `name (3).ext`, ... in `folder`."""
    yield folder / filename
    stem, dot, ext = filename.rpartition(".")
    if not stem:
        stem, dot, ext = filename, "", ""
    for n in range(2, 10_000):
        yield folder / f"{stem} ({n}){dot}{ext}"
    raise FileExistsError(f"no free name for {filename!r} in {folder}")


class _TempFile:
    """A hidden 0600 temp file in the destination folder, renamed into place on commit.

    Writes and the fsync run in aiofiles' worker threads. `commit` and `discard` close the
    file synchronously, and never under a write or fsync in flight (whose descriptor the OS
    could meanwhile hand to another file): the buffered file's own lock holds `close` back
    until a write returns, and `_lock` does the same for the fsync.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / f".{secrets.token_hex(8)}{TEMP_SUFFIX}"
        # "xb": O_CREAT | O_EXCL, and O_CLOEXEC as Python opens every file.
        self._file = open(self.path, "xb", opener=_owner_only)  # closed by commit or discard
        self._async = AsyncBufferedIOBase(self._file, loop=None, executor=None)
        self._lock = threading.Lock()

    async def write(self, data: bytes) -> None:
        if self._file.closed:
            raise OSError("temp file already discarded")
        await self._async.write(data)

    async def sync(self) -> None:
        await self._async.flush()
        await aiofiles.os.wrap(self._fsync)()  # aiofiles has no fsync: its pool runs ours

    def _fsync(self) -> None:
        with self._lock:
            if self._file.closed:
                raise OSError("temp file already discarded")
            os.fsync(self._file.fileno())

    def commit(self, target: Path, *, overwrite: bool) -> Path:
        """Move the (already fsynced) file into place; in a folder, claim a free name.

        Synchronous, so a cancellation cannot fall between the rename and the bookkeeping.
        """
        with self._lock:
            self._file.close()
        if overwrite:
            os.replace(self.path, target)
            final = target
        else:
            final = self._claim(target)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def _claim(self, target: Path) -> Path:
        # link() fails on an existing name, so a concurrent download cannot be clobbered.
        for candidate in _candidates(target.parent, target.name):
            try:
                os.link(self.path, candidate)
            except FileExistsError:
                continue
            except OSError:  # a share without hard links: check, then rename
                if candidate.exists():
                    continue
                os.replace(self.path, candidate)
                return candidate
            os.unlink(self.path)
            return candidate
        raise AssertionError("unreachable")

    def discard(self) -> None:
        """Synchronous on purpose: it must run to the end even in a cancelled task."""
        with self._lock:
            with contextlib.suppress(OSError):  # flushing what is thrown away may fail
                self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _owner_only(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


async def download_item(session: WcsSession, item: dict[str, Any], key: bytes, context: bytes,
                        dest: Path | None, *, expected_sha256: str | None = None,
                        progress: Callable[[int, int | None], None] | None = None,
                        ) -> DownloadResult:
    """Fetch, decrypt and verify `item`; save it to `dest` (a folder or a file path).

    In a folder the name comes from `safe_filename(item["name"])` and never replaces an
    existing file; a file path is replaced atomically. `dest=None` only decrypts, counts
    and hashes (load tests). `expected_sha256` defaults to the digest the item declares.
    """
    async def fetch(temp: _TempFile | None) -> str:
        return await _fetch(session, item, key, context, temp, progress)

    return await _save(item, dest, expected_sha256, fetch)


async def download_document(session: WcsSession, item: dict[str, Any], dest: Path | None, *,
                            expected_sha256: str | None = None,
                            progress: Callable[[int, int | None], None] | None = None,
                            ) -> DownloadResult:
    """`download_item` through the WCS's decrypting download (`.../document`,
    docs/protocol.md §8.3): the server decrypts, so no key is fetched; the plaintext is
    checked against the item's size and its SHA-256 (when declared) before it is kept. A
    response cut short (the server found the blob tampered with) leaves nothing behind."""
    async def fetch(temp: _TempFile | None) -> str:
        return await _fetch_plain(session, item, temp, progress)

    return await _save(item, dest, expected_sha256, fetch)


async def _save(item: dict[str, Any], dest: Path | None, expected_sha256: str | None,
                fetch: Callable[[_TempFile | None], Awaitable[str]]) -> DownloadResult:
    """Run `fetch` into a temp file and keep it only if size and digest check out."""
    started = time.perf_counter()
    item_id = str(item["id"])
    name = str(item.get("name") or item_id)
    size = int(item["size"])
    expected = (expected_sha256 or item.get("sha256") or "").lower() or None
    target: Path | None = None
    overwrite = False
    if dest is not None:
        if dest.is_dir():
            target = dest / safe_filename(name, item_id)
        else:
            target, overwrite = dest, True
    temp = _TempFile(target.parent) if target is not None else None
    try:
        sha256 = await fetch(temp)
        if expected is not None and sha256 != expected:
            raise ItemIntegrityError(item_id, name,
                                     f"sha256 mismatch (got {sha256}, expected {expected})")
        path = None
        if temp is not None and target is not None:
            await temp.sync()  # the slow part, off the loop
            path = temp.commit(target, overwrite=overwrite)
    except BaseException:
        if temp is not None:
            temp.discard()
        raise
    return DownloadResult(item_id=item_id, name=name, size=size, sha256=sha256,
                          path=path, seconds=time.perf_counter() - started)


async def _fetch_plain(session: WcsSession, item: dict[str, Any], temp: _TempFile | None,
                       progress: Callable[[int, int | None], None] | None) -> str:
    """Stream the plaintext the WCS decrypted; return its hex SHA-256."""
    item_id = str(item["id"])
    name = str(item.get("name") or item_id)
    size = int(item["size"])
    url = session.check_url(f"{session.base_url}/items/{quote(item_id, safe='')}/document")

    def integrity(message: str) -> ItemIntegrityError:
        return ItemIntegrityError(item_id, name, message)

    digest = hashlib.sha256()
    done = 0
    try:
        async with session.request("GET", url) as resp:
            if progress is not None:
                progress(0, size)
            async for chunk in resp.content.iter_chunked(READ_SIZE):
                done = await _emit(chunk, done, size, digest, temp, integrity)
                if progress is not None:
                    progress(done, size)
    except WcsError as exc:
        if isinstance(exc.__cause__, aiohttp.ClientPayloadError):
            # The WCS cuts the body short when its copy fails verification (§8.3).
            raise integrity(f"the server cut the download short after {done} of {size} "
                            f"bytes (its copy failed verification)") from None
        raise DownloadError(item_id, name, str(exc)) from exc
    if done != size:
        raise integrity(f"truncated (received {done} of {size} bytes)")
    return digest.hexdigest()


async def _fetch(session: WcsSession, item: dict[str, Any], key: bytes, context: bytes,
                 temp: _TempFile | None, progress: Callable[[int, int | None], None] | None,
                 ) -> str:
    """Stream and decrypt the blob; return the plaintext's hex SHA-256."""
    item_id = str(item["id"])
    name = str(item.get("name") or item_id)
    size = int(item["size"])
    ciphertext_size = item.get("ciphertext_size")

    def integrity(message: str) -> ItemIntegrityError:
        return ItemIntegrityError(item_id, name, message)

    digest = hashlib.sha256()
    done = 0
    received = 0
    try:
        decryptor = Decryptor(key, context)
        async with session.request("GET", session.check_url(str(item["url"]))) as resp:
            length = resp.content_length
            if ciphertext_size is not None and length is not None and length != ciphertext_size:
                raise integrity(_length_problem(length, int(ciphertext_size)))
            if progress is not None:
                progress(0, size)
            async for chunk in resp.content.iter_chunked(READ_SIZE):
                received += len(chunk)
                if ciphertext_size is not None and received > int(ciphertext_size):
                    raise integrity(_length_problem(received, int(ciphertext_size)))
                plain = decryptor.update(chunk)
                done = await _emit(plain, done, size, digest, temp, integrity)
                if progress is not None and plain:
                    progress(done, size)
        plain = decryptor.finalize()
        done = await _emit(plain, done, size, digest, temp, integrity)
        if progress is not None and plain:
            progress(done, size)
    except CobblestoneError as exc:
        raise integrity(_describe(exc)) from None
    except WcsError as exc:
        raise DownloadError(item_id, name, str(exc)) from exc
    if done != size:
        raise integrity(f"truncated (decrypted {done} of {size} bytes)")
    return digest.hexdigest()


async def _emit(plain: bytes, done: int, size: int, digest: Any, temp: _TempFile | None,
                integrity: Callable[[str], ItemIntegrityError]) -> int:
    """Account for verified plaintext and write it; more than the item's size is an error."""
    if not plain:
        return done
    done += len(plain)
    if done > size:
        raise integrity(f"size mismatch (more than the recorded {size} bytes)")
    digest.update(plain)
    if temp is not None:
        await temp.write(plain)
    return done


def _length_problem(got: int, expected: int) -> str:
    if got < expected:
        return f"truncated (ciphertext is {got} bytes, expected {expected})"
    return f"ciphertext failed authentication (trailing data: {got} bytes, expected {expected})"


def _describe(error: CobblestoneError) -> str:
    """The user's line for a decryption failure, from the error's fields (never its text)."""
    if error.kind == "tag" and error.chunk is not None:
        return f"ciphertext failed authentication (chunk {error.chunk})"
    if error.kind == "commitment":
        return "ciphertext failed authentication (key commitment: wrong key or context)"
    if error.kind == "truncated":
        return "truncated"
    return f"ciphertext failed authentication ({error})"
