"""A model on disk as files: the ONNX file plus its external-data file (models over 2 GB), copied, sized and
hashed without reading them into memory and without importing onnx (the registry and the operator use these)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def files_of(path: Path) -> list[Path]:
    """The model file plus its external-data file, if any."""
    files = [path]
    data = path.with_name(path.name + ".data")
    if data.exists():
        files.append(data)
    return files


def copy_model(src: Path, dst: Path) -> Path:
    """Copy a model file and its external data (as ``<dst>.data``) without reading them into memory."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for f in (dst, dst.with_name(dst.name + ".data")):
        f.unlink(missing_ok=True)
    for f in files_of(src):
        shutil.copyfile(f, dst if f == src else dst.with_name(dst.name + ".data"))
    return dst


def size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in files_of(path))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
