"""A model on disk as files: the ONNX file plus its external-data file (models over 2 GB), or an OpenVINO IR
(model.xml plus its weights, model.bin), copied, sized and hashed without reading them into memory and
without importing onnx (the registry and the operator use these)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def companion(path: Path) -> Path:
    """The file that goes with a model file: an IR's weights (`.bin`), an ONNX model's external data."""
    return path.with_suffix(".bin") if path.suffix == ".xml" else path.with_name(path.name + ".data")


def files_of(path: Path) -> list[Path]:
    """The model file plus its companion, if any."""
    files = [path]
    if companion(path).exists():
        files.append(companion(path))
    return files


def copy_model(src: Path, dst: Path) -> Path:
    """Copy a model file and its companion (as ``companion(dst)``) without reading them into memory."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for f in (dst, companion(dst)):
        f.unlink(missing_ok=True)
    for f in files_of(src):
        shutil.copyfile(f, dst if f == src else companion(dst))
    return dst


def size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in files_of(path))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
