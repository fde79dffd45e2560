"""A runtime and a task are plugins: this module registers a third runtime (ONNX's own reference evaluator,
`onnx.reference`, which reads standard ONNX only) and a fourth task (class probabilities compared after a
softmax), and runs a real pipeline through them (static INT8 of the digits CNN, measured, gated and promoted
into a local registry) without any other file knowing either name."""

from __future__ import annotations

import resource
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from kompress.jobs import runner
from kompress.jobs.io.data import Dataset
from kompress.jobs.runtimes import registry as runtimes
from kompress.jobs.runtimes.base import STANDARD_ONNX, Runtime, ServingLayout, Session, SessionTarget
from kompress.jobs.spec.document import parse_document
from kompress.jobs.tasks import registry as tasks
from kompress.jobs.tasks.base import Task

from conftest import example


@dataclass(frozen=True)
class _Arg:
    name: str
    shape: list[int | str | None]


class ReferenceSession:
    """onnx.reference.ReferenceEvaluator behind the session interface measurement uses."""

    def __init__(self, path: Path) -> None:
        import onnx
        import onnx.version_converter
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(str(path))
        if model.opset_import[0].version < 21:  # the evaluator implements DequantizeLinear from opset 19
            model = onnx.version_converter.convert_version(model, 21)
        self._evaluator = ReferenceEvaluator(model)
        init = {i.name for i in model.graph.initializer}
        self._inputs = [self._arg(v) for v in model.graph.input if v.name not in init]
        self._outputs = [self._arg(v) for v in model.graph.output]

    @staticmethod
    def _arg(value: Any) -> _Arg:
        dims = value.type.tensor_type.shape.dim
        return _Arg(value.name, [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims])

    def run(self, output_names: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._evaluator.run(output_names, dict(feeds)))

    def get_inputs(self) -> list[_Arg]:
        return self._inputs

    def get_outputs(self) -> list[_Arg]:
        return self._outputs


class OnnxReference(Runtime):
    name = "onnx-reference"
    summary = "ONNX's reference evaluator (a test's plugin)"
    modules = ("onnx",)
    extra = "onnx"
    libraries = ("onnx",)
    reads = frozenset({STANDARD_ONNX})
    layout = ServingLayout("model.onnx", "model.onnx.data", ".data", "onnx")

    def open(self, path: Path, target: SessionTarget, *, profile_prefix: str | None = None) -> Session:
        return ReferenceSession(path)

    def peak_memory(self, path: Path, feeds: Mapping[str, np.ndarray], target: SessionTarget) -> tuple[int, str]:
        # measured in this process: the memory probe's child would not have this test's registration
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.probe_memory(path, feeds, target)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, "host"

    def triton_backend(self, precision: str | None) -> dict[str, Any]:
        return {"backend": "python"}


class Probabilities(Task):
    name = "probabilities"
    summary = "class probabilities (softmax of the logits), compared by their largest absolute change"
    logits = True

    def sample_vectors(self, outputs: np.ndarray, data: Dataset) -> np.ndarray:
        z = outputs.reshape(len(outputs), -1)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    def quality_drop(self, baseline: Any, optimized: Any) -> tuple[str, float]:
        fidelity = optimized.quality.fidelity
        return "probabilityCosine", 1.0 - (fidelity.cosine_similarity_mean if fidelity else 1.0)


@pytest.fixture
def plugins() -> Iterator[tuple[OnnxReference, Probabilities]]:
    runtime, task = runtimes.register(OnnxReference()), tasks.register(Probabilities())
    yield runtime, task
    runtimes.unregister(runtime.name)
    tasks.unregister(task.name)


def test_a_registered_runtime_and_task_run_a_pipeline(plugins: tuple[OnnxReference, Probabilities],
                                                      tmp_path: Path) -> None:
    runtime, task = plugins
    doc = example("digits-int8.yaml")
    doc["spec"]["model"]["task"] = task.name
    doc["spec"]["data"]["evaluationSamples"] = 120
    doc["spec"]["target"] = {"runtime": runtime.name, "iterations": 10, "warmupIterations": 1,
                             "throughputBatchSize": 16}
    doc["spec"]["gates"] = {"noRegression": False, "maxAccuracyDrop": 0.05, "minSizeReduction": 2.0}
    doc["spec"]["promotion"]["registry"] = str(tmp_path / "registry")
    loaded = parse_document(doc)
    result = runner.run(loaded, tmp_path / "out", quiet=True)
    report = result.report
    assert result.exit_code == 0, report.message
    assert report.baseline is not None and report.optimized is not None and report.comparison is not None
    assert report.baseline.runtime == report.optimized.runtime == runtime.name
    assert report.signature is not None and report.signature.runtime == runtime.name
    assert report.comparison.quality_metric == "probabilityCosine"  # the task's own metric
    assert report.optimized.quality.fidelity is not None
    assert 0.9 < report.optimized.quality.fidelity.cosine_similarity_mean <= 1.0  # of probabilities
    assert report.comparison.size_reduction > 2.0
    assert report.steps[0].details["method"] == "static"  # ONNX Runtime's quantizer wrote standard QDQ
    assert report.optimized.peak_memory_bytes is not None
    assert report.environment.libraries.get("onnx")
    config = (tmp_path / "registry" / "digits" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config  # the runtime's own serving layout
    assert (tmp_path / "registry" / "digits" / "1" / "model.onnx").exists()


def test_the_spec_accepts_registered_names_only(plugins: tuple[OnnxReference, Probabilities]) -> None:
    """Validated against the registries when read (the CRD's enums are generated from them)."""
    from kompress.jobs.errors import SpecError

    runtime, task = plugins
    doc = example("digits-int8.yaml")
    doc["spec"]["target"] = {"runtime": runtime.name}
    doc["spec"]["model"]["task"] = task.name
    assert parse_document(doc).spec.target.runtime == runtime.name
    doc["spec"]["target"] = {"runtime": "tensorflow-lite"}
    with pytest.raises(SpecError) as err:
        parse_document(doc)
    assert any(path == "spec.target.runtime" and "unknown runtime 'tensorflow-lite'" in msg and runtime.name in msg
               for path, msg in err.value.problems)
    # a graph only ONNX Runtime reads (its fused contrib ops) cannot be served by the plugin
    doc["spec"]["target"] = {"runtime": runtime.name}
    doc["spec"]["techniques"] = [{"graphOptimize": {}}, {"quantize": {}}]
    with pytest.raises(SpecError) as err:
        parse_document(doc)
    assert any("graphOptimize writes a graph only onnxruntime runs, but this pipeline is served by onnx-reference"
               in msg for _, msg in err.value.problems)


class _Unused(Runtime):
    name = "unused"
    summary = "never registered"
    reference: ClassVar[bool] = True


def test_one_reference_runtime() -> None:
    with pytest.raises(ValueError, match="reference"):
        runtimes.register(_Unused())
