"""Each registered technique applied to a real model (the digits CNN), checked for what it must achieve."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from kompress.jobs.errors import RuntimeFailure
from kompress.jobs.io import data, model_files
from kompress.jobs.spec.document import parse_document
from kompress.jobs.techniques import catalog as techniques
from kompress.jobs.techniques.base import training_rows
from kompress.jobs.techniques.configs import QuantizeConfig
from kompress.jobs.techniques.context import StepContext

from conftest import DATASETS

MODEL = DATASETS / "digits-cnn.onnx"
EVAL = data.load_npz(DATASETS / "digits-eval.npz")


def apply(name: str, config: dict, tmp_path: Path, model: Path = MODEL):  # type: ignore[no-untyped-def]
    doc = {"model": {"uri": "m"}, "data": {"uri": "d"}, "techniques": [{name: config}]}
    _, cfg = parse_document(doc).spec.steps()[0]
    ctx = StepContext(workdir=tmp_path / name, calibration={"pixels": EVAL.inputs["pixels"][:64]},
                      labels=EVAL.labels[:64])
    return techniques.get(name).apply(model, cfg, ctx)


def accuracy(path: Path) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"pixels": EVAL.inputs["pixels"]})[0]
    return float((logits.argmax(1) == EVAL.labels).mean())


def ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


BASE_ACCURACY = accuracy(MODEL)


def test_registry_lists_every_technique() -> None:
    assert set(techniques.names()) == {"quantize", "fp16", "graphOptimize", "prune", "distill", "qat", "weightOnly"}


def test_the_spec_loads_the_catalog_only() -> None:
    """Reading a spec (and generating the CRD, and listing search candidates) imports the light catalog: no
    implementation module, no ONNX, ONNX Runtime or PyTorch."""
    code = ("import sys, kompress.jobs.spec.document, kompress.jobs.search.candidates\n"
            "print(sorted(m for m in sys.modules "
            "if m.startswith('kompress.jobs.techniques.') or m.split('.')[0] in ('onnx', 'onnxruntime', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert ast.literal_eval(out.strip()) == ["kompress.jobs.techniques.catalog", "kompress.jobs.techniques.configs",
                                             "kompress.jobs.techniques.traits"]


def test_every_catalog_entry_loads_its_implementation() -> None:
    for tech in techniques.all_techniques():
        fn = tech.load()
        assert callable(fn) and fn.__module__ == tech.module, tech.name


def test_apply_refuses_the_config_of_another_technique(tmp_path: Path) -> None:
    ctx = StepContext(workdir=tmp_path, calibration={}, labels=None)
    with pytest.raises(TypeError, match="takes a Fp16Config, got QuantizeConfig"):
        techniques.get("fp16").apply(MODEL, QuantizeConfig(), ctx)


def test_a_training_step_without_training_rows_is_a_runtime_failure(tmp_path: Path) -> None:
    """The pipeline refuses torch steps when there are no training rows, so a step that gets none is a bug."""
    ctx = StepContext(workdir=tmp_path, calibration={"pixels": EVAL.inputs["pixels"][:4]}, labels=None)
    with pytest.raises(RuntimeFailure, match="prune trains but was given no training rows"):
        training_rows(ctx, "prune")
    rows = {"pixels": EVAL.inputs["pixels"][:4]}
    assert training_rows(StepContext(workdir=tmp_path, calibration={}, labels=None, train=rows), "prune") is rows


def test_dynamic_int8(tmp_path: Path) -> None:
    result = apply("quantize", {"method": "dynamic", "perChannel": False}, tmp_path)
    assert {"MatMulInteger", "DynamicQuantizeLinear"} & ops(result.model_path)
    assert model_files.size_bytes(result.model_path) < model_files.size_bytes(MODEL) / 2
    assert accuracy(result.model_path) >= BASE_ACCURACY - 0.02


@pytest.mark.parametrize("calibration", ["minmax", "entropy", "percentile"])
def test_static_int8_qdq(tmp_path: Path, calibration: str) -> None:
    result = apply("quantize", {"method": "static", "calibration": calibration}, tmp_path)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(result.model_path)
    assert result.details["calibrationSamples"] == 64 and result.details["calibration"] == calibration
    assert model_files.size_bytes(result.model_path) < model_files.size_bytes(MODEL) / 3.5
    assert accuracy(result.model_path) >= BASE_ACCURACY - 0.01


def test_fp16_halves_weights(tmp_path: Path) -> None:
    result = apply("fp16", {}, tmp_path)
    model = onnx.load(str(result.model_path))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keepIoTypes
    assert model_files.size_bytes(result.model_path) < 0.55 * model_files.size_bytes(MODEL)
    assert accuracy(result.model_path) >= BASE_ACCURACY - 0.005


@pytest.mark.parametrize(("scope", "sparsity"), [("layer", 0.5), ("global", 0.7)])
def test_magnitude_pruning_reaches_target(tmp_path: Path, scope: str, sparsity: float) -> None:
    result = apply("prune", {"sparsity": sparsity, "scope": scope, "minElements": 256}, tmp_path)
    assert abs(result.details["achievedSparsity"] - sparsity) < 0.01
    model = onnx.load(str(result.model_path))
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("weight")]
    big = [w for w in weights if w.size >= 256]
    zeros = sum(int((w == 0).sum()) for w in big) / sum(w.size for w in big)
    assert abs(zeros - sparsity) < 0.01
    assert "dense runtimes gain little" in result.details["note"]
    assert accuracy(result.model_path) >= BASE_ACCURACY - 0.05


def test_weight_only_int4_on_matmul(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 32])],
        [numpy_helper.from_array(w, "w")])
    src = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    result = apply("quantize", {"method": "weightOnly", "weights": "int4", "blockSize": 32}, tmp_path, src)
    assert "MatMulNBits" in ops(result.model_path)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    y = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    cos = (y * (x @ w)).sum() / np.linalg.norm(y) / np.linalg.norm(x @ w)
    assert cos > 0.98


def test_generic_graph_optimization_keeps_outputs(tmp_path: Path) -> None:
    result = apply("graphOptimize", {"modelType": "generic"}, tmp_path)
    assert result.details["mode"] == "generic-extended"
    assert accuracy(result.model_path) == BASE_ACCURACY


def test_node_placement_counts_the_provider_of_every_node() -> None:
    """What a GPU run reports to say which ops fell back to the CPU; here every node is on the CPU."""
    from kompress.jobs.measure import evaluate
    from kompress.jobs.runtimes.registry import Serving
    from kompress.jobs.spec.sections import TargetSpec

    placement = evaluate.node_placement(MODEL, EVAL, TargetSpec(), Serving.reference())
    assert set(placement.nodes_by_provider) == {"CPUExecutionProvider"}
    assert sum(placement.cpu_ops.values()) == placement.nodes_by_provider["CPUExecutionProvider"] > 0
    assert {"Gemm", "FusedConv", "Conv"} & set(placement.cpu_ops)


def test_console_names_compute_ops_that_fell_back_to_the_cpu_not_shape_ops() -> None:
    from kompress.jobs.report import render as report
    from kompress.jobs.report.model import OptimizationReport

    def side(cpu_ops: dict[str, int]) -> dict:
        return {"latencySeconds": {"p50": 0.001, "p95": 0.002, "p99": 0.002, "mean": 0.001, "samples": 10,
                                   "batchSize": 1},
                "throughputInferencesPerSecond": 10.0, "throughputBatchSize": 32, "sizeBytes": 1_000_000,
                "peakMemoryBytes": 1_000_000, "peakMemoryOf": "gpu",
                "energy": {"joulesPerInference": 0.1, "method": "nvml", "inferences": 10, "measuredOver": "blocks"},
                "quality": {"fidelity": {"cosineSimilarityMean": 0.99, "cosineSimilarityMin": 0.9,
                                         "maxAbsError": 0.1}},
                "placement": {"nodesByProvider": {"CUDAExecutionProvider": 100, "CPUExecutionProvider": 30},
                              "cpuOps": cpu_ops}}

    rep = OptimizationReport.model_validate({
        "apiVersion": "kompress.dev/v1alpha1", "name": "gpu", "startedAt": "2026-01-01T00:00:00+00:00", "spec": {},
        "environment": {"platform": "p", "machine": "m", "seed": 0, "libraries": {}},
        "baseline": side({"Gather": 15, "Concat": 14}), "optimized": side({"MatMulInteger": 18, "Gather": 2}),
        "comparison": {"speedup": 0.3, "sizeReduction": 4.0, "qualityMetric": "cosineSimilarityMean",
                       "accuracyDrop": 0.01},
        "gates": {"passed": True, "results": []}, "outcome": "succeeded", "promotion": {"promoted": False}})
    text = report.console_table(rep)
    assert "peak memory (gpu)" in text
    assert "optimized: 18 compute nodes of 130 ran on the CPU provider (MatMulInteger x18)" in text
    assert "baseline:" not in text  # shape computations on the CPU are by design
