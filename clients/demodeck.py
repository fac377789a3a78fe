"""The demo's slide deck: a real PDF whose pages show something (a title bar, a heading,
bullets and a bar chart), so that a browser following the demo sees the slides turn."""

from __future__ import annotations

from io import BytesIO

TITLES = ("Q4 roadmap", "Where we are", "What we ship", "Security first", "Timeline",
          "Questions?")
BULLETS = ("Items are encrypted at rest, per item key", "Join over SIP, from a CLI or a browser",
           "Slides follow the presenter, page by page", "Everything verified, byte for byte")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _page_stream(n: int, pages: int) -> bytes:
    title = TITLES[(n - 1) % len(TITLES)]
    lines = [
        "0.14 0.34 0.84 rg 0 450 960 90 re f",
        f"BT /F2 34 Tf 1 1 1 rg 48 482 Td ({_escape(title)}) Tj ET",
        f"BT /F1 14 Tf 0.42 0.45 0.5 rg 820 20 Td (Slide {n} of {pages}) Tj ET",
    ]
    for i, bullet in enumerate(BULLETS):
        y = 380 - 44 * i
        lines.append(f"0.14 0.34 0.84 rg 52 {y + 4} 8 8 re f")
        lines.append(f"BT /F1 22 Tf 0.11 0.14 0.19 rg 74 {y} Td ({_escape(bullet)}) Tj ET")
    for i in range(5):  # a bar chart that grows with the page number
        height = 30 + ((i * 37 + n * 23) % 150)
        lines.append(f"0.{2 + i} 0.{4 + i % 4} 0.85 rg {560 + 70 * i} 60 48 {height} re f")
    lines.append("0.8 0.82 0.86 RG 1 w 540 58 m 920 58 l S")
    return ("\n".join(lines) + "\n").encode()


def slides_pdf(pages: int, attachment: bytes = b"") -> bytes:
    """A 16:9 PDF deck of `pages` drawn slides, carrying `attachment` as an embedded file
    (the demo's deck is a few MiB, like a real one with media)."""
    from pypdf import PdfReader, PdfWriter

    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    fonts = len(objects) + 2 * pages + 1
    kids = []
    for n in range(1, pages + 1):
        stream = _page_stream(n, pages)
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content = len(objects)
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 960 540] /Resources "
                       b"<< /Font << /F1 %d 0 R /F2 %d 0 R >> >> /Contents %d 0 R >>"
                       % (fonts, fonts + 1, content))
        kids.append(len(objects))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold >>")
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids), pages)
    raw = bytearray(b"%PDF-1.7\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(raw))
        raw += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(raw)
    raw += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    raw += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    raw += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    writer = PdfWriter(clone_from=PdfReader(BytesIO(bytes(raw))))
    if attachment:
        writer.add_attachment("recording-excerpt.bin", attachment)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()
