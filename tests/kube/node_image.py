"""Build the node tier's base image as an OCI image archive, without a registry or a container tool.

The image holds ``/pause`` (``pause.c``, the pod sandbox process containerd's ``sandbox_image`` names) and a
static busybox under ``/bin`` (``sh``, ``id``, ``nc``, ``wget``, ``dd`` ... for the smoke tests). The archive
is deterministic (fixed mtimes and owners), so its digest only changes when the binaries do and
``node.py`` can skip importing it into containerd when the digest is already there.

Run by ``.ci/install-node.sh``::

    python3 tests/kube/node_image.py --pause PAUSE_BIN --busybox /bin/busybox --out ARCHIVE
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

BASE_IMAGE = "kompress.local/node-base:1"
# uid/gid the smoke tests' pods run as (distroless "nonroot"); the image itself needs no passwd entry.
NONROOT = 65532


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _add_entry(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, target: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.linkname = target
    tar.addfile(info)


def _layer(pause: Path, busybox: Path) -> bytes:
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "etc", "tmp"):
            _add_entry(tar, directory, tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755)
        _add_file(tar, "pause", pause.read_bytes(), 0o755)
        _add_file(tar, "bin/busybox", busybox.read_bytes(), 0o755)
        for applet in sorted(set(applets) - {"busybox"}):
            _add_entry(tar, f"bin/{applet}", tarfile.SYMTYPE, 0o777, "busybox")
        passwd = f"root:x:0:0::/:/bin/sh\nnonroot:x:{NONROOT}:{NONROOT}::/:/bin/sh\n"
        _add_file(tar, "etc/passwd", passwd.encode(), 0o644)
        _add_file(tar, "etc/group", f"root:x:0:\nnonroot:x:{NONROOT}:\n".encode(), 0o644)
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _add_file(tar, "blobs/sha256/" + digest.removeprefix("sha256:"), data, 0o644)
    return digest


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def build_base_image(pause: Path, busybox: Path, out: Path, name: str = BASE_IMAGE) -> str:
    """Write the OCI archive to ``out`` (atomically); returns the manifest digest."""
    layer = _layer(pause, busybox)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = _dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    )
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_file(tar, "oci-layout", _dumps({"imageLayoutVersion": "1.0.0"}), 0o644)
        config_digest = _blob(tar, config)
        _blob(tar, layer)
        manifest = _dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": len(layer)}
                ],
            }
        )
        manifest_digest = _blob(tar, manifest)
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    # containerd's importer names the image from this annotation.
                    "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
                }
            ],
        }
        _add_file(tar, "index.json", _dumps(index), 0o644)
    tmp.replace(out)
    return manifest_digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause", type=Path, required=True)
    parser.add_argument("--busybox", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", default=BASE_IMAGE)
    args = parser.parse_args()
    print(build_base_image(args.pause, args.busybox, args.out, args.name))


if __name__ == "__main__":
    main()
