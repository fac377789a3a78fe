"""Decks and the LibreOffice command line that turns them into PDFs (docs/protocol.md §9.4).

Pure: which shared items are decks, what their PDF is called, the argv of one sandboxed
conversion and the short reasons a failed one reports. The process glue (queue, limits,
temp dirs, kill) is `conferencing.convert`.

Only two formats are decks, and each is loaded by its own import filter alone
(`--infilter`): a file named `.pptx` that is really something else (an old binary
format, a text file) is refused by LibreOffice instead of reaching another filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PPTX_TYPE = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ODP_TYPE = "application/vnd.oasis.opendocument.presentation"
PDF_TYPE = "application/pdf"

DeckKind = Literal["pptx", "odp"]

_BY_TYPE: dict[str, DeckKind] = {PPTX_TYPE: "pptx", ODP_TYPE: "odp"}
_BY_SUFFIX: dict[str, DeckKind] = {".pptx": "pptx", ".odp": "odp"}
IMPORT_FILTERS: dict[DeckKind, str] = {
    "pptx": "Impress MS PowerPoint 2007 XML",
    "odp": "impress8",
}
"""LibreOffice's import filter of each kind: the only one it may use on the file."""
EXPORT_FILTER = "pdf:impress_pdf_Export"

SandboxMode = Literal["root", "user", "none"]
"""How the converter is cut off from the network: `unshare` as root (`-n`), in a user
namespace (`-rn`, as an unprivileged user), or not at all (`wcs.convert_allow_network`)."""

# The reasons an `item.conversion` event gives (docs/protocol.md §9.4): short, fixed
# texts; never a file name, a path or LibreOffice's own output.
UNREADABLE = "LibreOffice could not read the deck"
CRASHED = "LibreOffice failed"
QUEUE_FULL = "the conversion queue is full"
UNAVAILABLE = "deck conversion is not available on this server"
INTERRUPTED = "the server stopped before the conversion finished"
TOO_LARGE = "the PDF is larger than an item may be"
QUOTA = "the conference's content quota is full"
KEY_UNAVAILABLE = "this tenant's content key is unavailable"
INTERNAL = "the conversion failed on the server"


def timed_out(seconds: float) -> str:
    return f"the conversion timed out after {seconds:g} s"


def deck_kind(name: str, content_type: str) -> DeckKind | None:
    """The deck kind of an item by its content type (parameters ignored), else by its
    name's suffix; None for anything else."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _BY_TYPE:
        return _BY_TYPE[media]
    dot = name.rfind(".")
    return _BY_SUFFIX.get(name[dot:].lower()) if dot > 0 else None


def pdf_name(name: str, max_bytes: int) -> str:
    """The derived PDF's name: the deck's name without its `.pptx`/`.odp`, plus `.pdf`,
    shortened (by whole characters) to fit `max_bytes` of UTF-8."""
    dot = name.rfind(".")
    stem = name[:dot] if dot > 0 and name[dot:].lower() in _BY_SUFFIX else name
    room = max_bytes - len(".pdf")
    while stem and len(stem.encode("utf-8", "surrogatepass")) > room:
        stem = stem[:-1]
    return f"{stem or 'deck'}.pdf"


@dataclass(frozen=True)
class Job:
    """One conversion's files, all inside its private directory."""

    directory: Path
    kind: DeckKind

    @property
    def source(self) -> Path:
        """The deck's plaintext, under a fixed name (never the user's file name)."""
        return self.directory / f"deck.{self.kind}"

    @property
    def outdir(self) -> Path:
        return self.directory / "out"

    @property
    def pdf(self) -> Path:
        return self.outdir / "deck.pdf"

    @property
    def profile(self) -> Path:
        """LibreOffice's user profile: fresh for each job, so nothing one deck leaves
        there (recent documents, thumbnails, settings) reaches the next."""
        return self.directory / "profile"


def sandbox_prefix(mode: SandboxMode, unshare: str = "unshare") -> list[str]:
    """The argv prefix that runs a command without network. A new PID namespace too:
    when `unshare` dies (`--kill-child`), its child, the namespace's init, dies, and the
    kernel kills every process left in the namespace, so no LibreOffice outlives a kill."""
    if mode == "none":
        return []
    return [unshare, *(["--map-root-user"] if mode == "user" else []), "--net", "--pid",
            "--fork", "--kill-child", "--"]


def command(soffice: str, job: Job, mode: SandboxMode, unshare: str = "unshare") -> list[str]:
    """The whole argv of one conversion."""
    return [*sandbox_prefix(mode, unshare), soffice,
            f"-env:UserInstallation={job.profile.as_uri()}",
            "--headless", "--invisible", "--norestore", "--nologo", "--nodefault",
            "--nolockcheck", f"--infilter={IMPORT_FILTERS[job.kind]}",
            "--convert-to", EXPORT_FILTER, "--outdir", str(job.outdir), str(job.source)]


def environment(job: Job) -> dict[str, str]:
    """The converter's whole environment: nothing of the WCS's (no secrets, no proxies);
    its home and temp files inside the job's directory, removed with it."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(job.directory),
            "TMPDIR": str(job.directory), "LANG": "C.UTF-8", "SAL_USE_VCLPLUGIN": "svp"}


def exit_reason(returncode: int) -> str:
    """The reason for a run that produced no PDF: LibreOffice exits 0 (and says so only on
    stderr) for a deck it cannot load; anything else, a signal or its memory cap
    (`wcs.convert_memory_bytes`: an abort), is a failure of LibreOffice."""
    return UNREADABLE if returncode == 0 else CRASHED
