"""Serving registry: a Triton/KServe model repository, local or in S3.

Layout: <registry>/<model>/config.pbtxt and <registry>/<model>/<version>/{model.onnx, kompress.json}.
Promotion is atomic and idempotent:
- a version number is claimed by an exclusive create of <model>/.claims/<n> (O_EXCL locally, a conditional
  If-None-Match PUT in S3), so two promotions never take the same number;
- the claim records the promotion key (hash of source, data, steps and target), so re-running the same
  promotion finds its version instead of adding one, and completes it if a crash interrupted it;
- the version's files appear whole: one rename locally; in S3 the model first and kompress.json last, and
  a version counts as promoted only once its kompress.json exists.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kompress.jobs import onnx_utils
from kompress.jobs.data import InputSpec
from kompress.jobs.spec import PromotionSpec
from kompress.jobs.storage import Store, open_store

MANIFEST = "kompress.json"
CLAIMS = ".claims"
MAX_VERSIONS = 100_000

_TRITON_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(double)": "TYPE_FP64",
                 "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32", "tensor(int8)": "TYPE_INT8",
                 "tensor(uint8)": "TYPE_UINT8", "tensor(bool)": "TYPE_BOOL"}


@dataclass(frozen=True)
class Promotion:
    uri: str
    version: int
    created: bool  # False when an identical earlier promotion was found


def promotion_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def triton_config(model_name: str, inputs: list[InputSpec], outputs: list[InputSpec]) -> str:
    def tensor(spec: InputSpec) -> str:
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in spec.shape[1:]]
        return (f'  {{\n    name: "{spec.name}"\n    data_type: {_TRITON_TYPES.get(spec.dtype, "TYPE_FP32")}\n'
                f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}")

    return (f'name: "{model_name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
            f"input [\n{(',' + chr(10)).join(tensor(i) for i in inputs)}\n]\n"
            f"output [\n{(',' + chr(10)).join(tensor(o) for o in outputs)}\n]\n"
            "version_policy: { latest { num_versions: 1 } }\n"
            "dynamic_batching { }\n")


def _versions(store: Store, model: str) -> list[int]:
    return sorted(int(n) for n in store.list(model) if n.isdigit())


def find_existing(store: Store, model: str, key: str) -> int | None:
    for version in _versions(store, model):
        raw = store.read(f"{model}/{version}/{MANIFEST}")
        if raw and json.loads(raw).get("promotionKey") == key:
            return version
    return None


def promote(registry_uri: str, model: str, model_file: Path, manifest: dict[str, Any], key: str,
            inputs: list[InputSpec], outputs: list[InputSpec]) -> Promotion:
    store = open_store(registry_uri, field="promotion.registry")
    base = store.uri.rstrip("/")
    existing = find_existing(store, model, key)
    if existing is not None:
        return Promotion(f"{base}/{model}/{existing}", existing, created=False)
    version = _claim(store, model, key)
    manifest = {**manifest, "promotionKey": key, "version": version, "modelName": model}
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        onnx_utils.copy_model(model_file, staged / "model.onnx")
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if store.read(f"{model}/{version}/{MANIFEST}") is None:
            store.delete_tree(f"{model}/{version}")  # leftovers of an interrupted attempt at this claim
            store.publish_dir(staged, f"{model}/{version}")
    config = triton_config(model, inputs, outputs).encode()
    if store.read(f"{model}/config.pbtxt") != config:
        store.write(f"{model}/config.pbtxt", config)
    return Promotion(f"{base}/{model}/{version}", version, created=True)


def _claim(store: Store, model: str, key: str) -> int:
    claims = store.list(f"{model}/{CLAIMS}")
    for name in claims:  # an interrupted run of this same promotion: finish its version
        if name.isdigit() and store.read(f"{model}/{CLAIMS}/{name}") == key.encode():
            return int(name)
    taken = {int(n) for n in claims if n.isdigit()} | set(_versions(store, model))
    candidate = max(taken, default=0) + 1
    while candidate < MAX_VERSIONS:
        if store.create_exclusive(f"{model}/{CLAIMS}/{candidate}", key.encode()):
            return candidate
        candidate += 1
    raise RuntimeError(f"no free version number for {model}")


def list_versions(registry_uri: str, model: str) -> list[dict[str, Any]]:
    """Complete versions (those with a manifest), oldest first."""
    store = open_store(registry_uri, field="promotion.registry")
    out = []
    for version in _versions(store, model):
        raw = store.read(f"{model}/{version}/{MANIFEST}")
        if raw:
            out.append(json.loads(raw))
    return out


def promote_report(report: dict[str, Any], model_file: Path, promotion: PromotionSpec, resource_uid: str | None,
                   inputs: list[InputSpec], outputs: list[InputSpec]) -> dict[str, Any]:
    """Promote a run's optimized model with the manifest built from its report (engine and operator alike).

    The key covers what determines the model: the same source, data, steps, target and resource give the
    same key, so promoting again finds the existing version."""
    spec = report["spec"]
    key = promotion_key({
        "source": report["model"]["sha256"], "data": report["data"]["sha256"],
        "steps": [s["config"] | {"technique": s["technique"]} for s in report["steps"]],
        "target": spec.get("target"), "model": spec.get("model"), "resource": resource_uid,
    })
    import datetime as dt

    manifest = {
        "name": report["name"], "resourceUid": resource_uid,
        "promotedAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": {"uri": report["model"]["uri"], "sha256": report["model"]["sha256"]},
        "sha256": report["optimized"]["sha256"],
        "metrics": {"baseline": report["baseline"], "optimized": report["optimized"],
                    "comparison": report["comparison"]},
        "gates": report["gates"], "spec": spec, "steps": report["steps"],
    }
    result = promote(promotion.registry, promotion.model_name, model_file, manifest, key, inputs, outputs)
    return {"promoted": True, "policy": promotion.policy, "uri": result.uri, "version": result.version,
            "created": result.created, "reason": None if result.created else "identical version already promoted"}
