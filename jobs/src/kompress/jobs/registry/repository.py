"""Serving registry: a Triton/KServe model repository, local or in S3.

Layout: <registry>/<model>/config.pbtxt and <registry>/<model>/<version>/{model.onnx, kompress.json} (an
OpenVINO model: model.xml and model.bin, the layout Triton's OpenVINO backend and OpenVINO Model Server read;
exports such as model.ort beside the model).
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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io.data import InputSpec
from kompress.jobs.io.storage import Store, is_s3, open_store
from kompress.jobs.report.model import OptimizationReport, PromotionResult, TensorSpec
from kompress.jobs.runtimes import genai_registry as generative
from kompress.jobs.runtimes import registry as runtimes
from kompress.jobs.spec.sections import PromotionSpec

MANIFEST = "kompress.json"
CLAIMS = ".claims"
MAX_VERSIONS = 100_000

# ONNX tensor types -> Triton DataType (model_config.proto).
_TRITON_TYPES = {
    "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(bfloat16)": "TYPE_BF16",
    "tensor(double)": "TYPE_FP64", "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32",
    "tensor(int16)": "TYPE_INT16", "tensor(int8)": "TYPE_INT8", "tensor(uint64)": "TYPE_UINT64",
    "tensor(uint32)": "TYPE_UINT32", "tensor(uint16)": "TYPE_UINT16", "tensor(uint8)": "TYPE_UINT8",
    "tensor(bool)": "TYPE_BOOL", "tensor(string)": "TYPE_STRING",
}  # fmt: skip
TRITON_MAX_BATCH_SIZE = 64


@dataclass(frozen=True)
class Promotion:
    uri: str
    version: int
    created: bool  # False when an identical earlier promotion was found


def promotion_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_PBTXT_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("'"): "\\'", ord("\n"): "\\n", ord("\r"): "\\r",
                  ord("\t"): "\\t"}


class _Enum(str):
    """An enum value in protobuf text format: written bare, not quoted."""


def _pbtxt_scalar(value: Any) -> str:
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):  # C-style escapes of the UTF-8 bytes, as protobuf's own text printer writes them
        return '"' + "".join(_PBTXT_ESCAPES.get(b) or (chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}")
                             for b in value.encode()) + '"'
    raise TypeError(f"cannot write {value!r} in protobuf text format")


def render_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format for a message given as a dict (in field order): a dict value is a nested message
    ``name { ... }``, a list of dicts a repeated message ``name [ {...}, {...} ]``, any other list a repeated
    scalar ``name: [ a, b ]``, an ``_Enum`` a bare enum value, a str a quoted and escaped string."""
    pad = "  " * indent

    def block(msg: dict[str, Any], level: int) -> str:
        return "{\n" + render_pbtxt(msg, level + 1) + "  " * level + "}" if msg else "{ }"

    out = []
    for key, value in message.items():
        if isinstance(value, dict):
            out.append(f"{pad}{key} {block(value, indent)}\n")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items = ",\n".join(f"{pad}  {block(v, indent + 1)}" for v in value)
            out.append(f"{pad}{key} [\n{items}\n{pad}]\n")
        elif isinstance(value, list):
            out.append(f"{pad}{key}: [ {', '.join(_pbtxt_scalar(v) for v in value)}{' ' if value else ''}]\n")
        else:
            out.append(f"{pad}{key}: {_pbtxt_scalar(value)}\n")
    return "".join(out)


def _fixed(dim: Any) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim > 0


def triton_config(model_name: str, inputs: list[TensorSpec] | list[InputSpec],
                  outputs: list[TensorSpec] | list[InputSpec], runtime: str | None = None,
                  precision: str | None = None) -> str:
    """config.pbtxt for the serving runtime's Triton backend (default: the reference runtime's), with the
    inference precision the model was measured with where the runtime takes one, so it is served as measured.

    Triton batches only when every input and output has a free first (batch) axis: then max_batch_size is
    TRITON_MAX_BATCH_SIZE, dims leave the batch axis out and requests are batched dynamically. A fixed first
    axis (e.g. an export with batch 1) or a scalar tensor means no batching: max_batch_size 0 and full dims."""
    backend = runtimes.resolve(runtime).triton_backend(precision)
    tensors = [*inputs, *outputs]
    batching = all(len(t.shape) > 0 and not _fixed(t.shape[0]) for t in tensors)

    def tensor(spec: TensorSpec | InputSpec) -> dict[str, Any]:
        shape = list(spec.shape[1:] if batching else spec.shape)
        entry: dict[str, Any] = {"name": spec.name, "data_type": _Enum(_TRITON_TYPES.get(spec.dtype, "TYPE_FP32"))}
        if shape:
            entry["dims"] = [d if _fixed(d) else -1 for d in shape]
        else:  # Triton needs at least one dim: a scalar is [1] reshaped to []
            entry["dims"] = [1]
            entry["reshape"] = {"shape": []}
        return entry

    config: dict[str, Any] = {
        "name": model_name,
        **{k: v for k, v in backend.items() if k != "parameters"},
        "max_batch_size": TRITON_MAX_BATCH_SIZE if batching else 0,
        "input": [tensor(i) for i in inputs],
        "output": [tensor(o) for o in outputs],
        "version_policy": {"latest": {"num_versions": 1}},
    }
    if batching:
        config["dynamic_batching"] = {}
    if "parameters" in backend:
        config["parameters"] = backend["parameters"]
    return render_pbtxt(config)


def _versions(store: Store, model: str) -> list[int]:
    return sorted(int(n) for n in store.list(model) if n.isdigit())


def find_existing(store: Store, model: str, key: str) -> int | None:
    for version in _versions(store, model):
        raw = store.read(f"{model}/{version}/{MANIFEST}")
        if raw and json.loads(raw).get("promotionKey") == key:
            return version
    return None


def promote(registry_uri: str, model: str, model_sources: Sequence[str], manifest: dict[str, Any], key: str,
            inputs: list[TensorSpec] | list[InputSpec], outputs: list[TensorSpec] | list[InputSpec],
            runtime: str | None = None, precision: str | None = None) -> Promotion:
    """Publish `model_sources` (the graph, then its external data or IR weights, then exports such as
    model.ort: local paths or s3:// URIs) as the next version, manifest last. Files already in S3 are copied by
    the S3 server (CopyObject, multipart copy for big ones) when the registry is in S3 too: the caller never
    holds model bytes."""
    if not model_sources:
        raise InvalidInputError("no model files to promote", field="modelUri")
    store = open_store(registry_uri, field="promotion.registry")
    base = store.uri.rstrip("/")
    existing = find_existing(store, model, key)
    if existing is not None:
        return Promotion(f"{base}/{model}/{existing}", existing, created=False)
    version = _claim(store, model, key)
    manifest = {**manifest, "promotionKey": key, "version": version, "modelName": model}
    files = version_files(model_sources, runtime)
    if store.read(f"{model}/{version}/{MANIFEST}") is None:
        store.delete_tree(f"{model}/{version}")  # leftovers of an interrupted attempt at this claim
        store.publish(files, json.dumps(manifest, indent=2, sort_keys=True).encode(), MANIFEST,
                      f"{model}/{version}")
    if runtime not in generative.names():  # a generative folder is served by its runtime's server, not Triton's
        config = triton_config(model, inputs, outputs, runtime, precision).encode()
        if store.read(f"{model}/config.pbtxt") != config:
            store.write(f"{model}/config.pbtxt", config)
    return Promotion(f"{base}/{model}/{version}", version, created=True)


def version_files(sources: Sequence[str], runtime: str | None = None) -> dict[str, str | Path]:
    """Each source's name in the version, as the serving runtime lays it out: the graph is model.onnx
    (model.xml for OpenVINO); its companion (an ONNX model's external data, `*.data`; an IR's weights,
    `*.bin`) right after it is model.onnx.data (model.bin); any other file keeps its own name (exports:
    model.ort, required_operators.config)."""
    folder = runtime in generative.names()  # a generative runtime's folder: every file keeps its name
    layout = None if folder else runtimes.resolve(runtime).layout
    files: dict[str, str | Path] = {}
    for i, src in enumerate(sources):
        base = src.rstrip("/").rsplit("/", 1)[-1]
        name = (base if layout is None else layout.graph if i == 0
                else layout.companion if i == 1 and base.endswith(layout.companion_suffix) else base)
        if name in files or name == MANIFEST or not _SAFE_NAME.match(name):
            raise InvalidInputError(f"cannot promote {src!r} as {name!r} (a repeated or unsafe file name)",
                                    field="modelUri")
        files[name] = src if is_s3(src) else Path(src)
    return files


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


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


def promote_report(report: OptimizationReport, model_sources: Sequence[str], promotion: PromotionSpec,
                   resource_uid: str | None) -> PromotionResult:
    """Promote a run's optimized model with the manifest built from its report (engine and operator alike);
    the serving config comes from the tensors the run recorded (report.signature), so promoting never opens
    the model.

    The key covers what determines the model: the same source, data, steps, target and resource give the
    same key, so promoting again finds the existing version."""
    import datetime as dt

    if report.model is None or report.data is None or report.optimized is None or report.signature is None:
        raise InvalidInputError("the report has no measured result to promote (model, data, optimized and "
                                "signature are required)", field="reportUri")
    spec = report.spec
    key = promotion_key({
        "source": report.model.sha256, "data": report.data.sha256,
        "steps": [s.config | {"technique": s.technique} for s in report.steps],
        "target": spec.get("target"), "model": spec.get("model"), "resource": resource_uid,
        # a search across runtimes can choose the same steps on another runtime (onnxruntime keys stay as before)
        **({"serving": [report.signature.runtime, report.signature.precision]}
           if report.signature.runtime in generative.names()
           or not runtimes.get(report.signature.runtime).reference else {}),
    })
    manifest = {
        "name": report.name, "resourceUid": resource_uid,
        "promotedAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": {"uri": report.model.uri, "sha256": report.model.sha256},
        "sha256": report.optimized.sha256,
        "metrics": {"baseline": report.baseline.to_json() if report.baseline else None,
                    "optimized": report.optimized.to_json(),
                    "comparison": report.comparison.to_json() if report.comparison else None},
        "gates": report.gates.to_json() if report.gates else None, "spec": spec,
        "steps": [s.to_json() for s in report.steps], "reportSchemaVersion": report.schema_version,
        "serving": {"runtime": report.signature.runtime, "precision": report.signature.precision,
                    "format": report.signature.format},
    }
    if report.signature.runtime in generative.names():  # what a language model's weights went through
        manifest["lineage"] = {
            "sourcePrecision": report.model.metadata.get("sourcePrecision"),
            "floatReference": report.model.metadata.get("floatReference", "the source's own weights"),
            "calibrationText": {"uri": report.data.uri, "sha256": report.data.sha256,
                                "documents": report.data.text.calibration_documents if report.data.text else []},
            "weights": [s.config | {"technique": s.technique, **s.details} for s in report.steps]
            or [{"technique": "none", "precision": report.signature.precision}],
        }
    result = promote(promotion.registry, promotion.model_name, model_sources, manifest, key,
                     report.signature.inputs, report.signature.outputs, report.signature.runtime,
                     report.signature.precision)
    return PromotionResult(promoted=True, policy=promotion.policy, uri=result.uri, version=result.version,
                           created=result.created,
                           reason=None if result.created else "identical version already promoted")
