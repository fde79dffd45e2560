"""graphOptimize's SkipLayerNormalization choice: the split form computes the same values, the runtime does
not fuse it back when a session loads, and `auto` follows what timing on this machine says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kompress.jobs.spec.document import parse_document
from kompress.jobs.techniques import graph_optimize, layer_norm
from kompress.jobs.techniques.context import StepContext

HIDDEN = 16
RNG = np.random.default_rng(7)


def residual_model(opset: int = 17, read_mean: bool = False, computed_gamma: bool = False) -> onnx.ModelProto:
    """Two residual blocks as the transformer optimizer leaves them: one SkipLayerNormalization with a bias
    whose residual sum (output 3) feeds the next block, one without bias or beta."""
    def const(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)

    first_outputs = ["h1", "mean1" if read_mean else "", "", "sum1"]
    gamma = "g1c" if computed_gamma else "g1"
    nodes = [
        *([helper.make_node("Identity", ["g1"], ["g1c"])] if computed_gamma else []),
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("SkipLayerNormalization", ["m1", "x", gamma, "b1", "bias1"], first_outputs,
                         domain="com.microsoft", epsilon=1e-5, name="sln1"),
        helper.make_node("MatMul", ["h1", "w2"], ["m2"]),
        helper.make_node("SkipLayerNormalization", ["m2", "sum1", "g2"], ["h2"], domain="com.microsoft",
                         epsilon=1e-5, name="sln2"),
    ]
    outputs = [helper.make_tensor_value_info("h2", TensorProto.FLOAT, ["batch", "seq", HIDDEN])]
    if read_mean:
        outputs.append(helper.make_tensor_value_info("mean1", TensorProto.FLOAT, ["batch", "seq", 1]))
    graph = helper.make_graph(
        nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        outputs, [const("w1", HIDDEN, HIDDEN), const("w2", HIDDEN, HIDDEN), const("g1", HIDDEN),
                  const("b1", HIDDEN), const("bias1", HIDDEN), const("g2", HIDDEN)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("com.microsoft", 1)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["h2"], {"x": x})[0]


def runtime_ops(model: onnx.ModelProto, tmp_path: Path) -> set[str]:
    """Op types of the graph a default session actually runs (all of the runtime's own fusions applied)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "as-run.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(tmp_path / "as-run.onnx")).graph.node}


def test_split_keeps_the_values_and_the_runtime_does_not_fuse_it_back(tmp_path: Path) -> None:
    model = residual_model()
    x = RNG.standard_normal((2, 5, HIDDEN)).astype(np.float32)
    before = run(model, x)
    assert "SkipLayerNormalization" in runtime_ops(model, tmp_path)
    assert layer_norm.split(model) == 2
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["MatMul", "Sum", "LayerNormalization", "MatMul", "Sum", "LayerNormalization"]
    assert len(model.graph.node[1].input) == 3 and len(model.graph.node[4].input) == 2  # bias joins the sum
    assert model.graph.node[1].output[0] == "sum1"  # the residual sum keeps the name its reader uses
    np.testing.assert_allclose(run(model, x), before, rtol=1e-5, atol=1e-5)
    assert "SkipLayerNormalization" not in runtime_ops(model, tmp_path)


def test_nodes_whose_statistics_are_read_or_old_opsets_are_left_fused() -> None:
    assert layer_norm.splittable(residual_model(read_mean=True)) == [3]  # only sln2; sln1's mean is an output
    old = residual_model(opset=16)
    assert layer_norm.splittable(old) == [] and layer_norm.split(old) == 0


def test_timing_both_forms_on_this_machine() -> None:
    micros = layer_norm.time_forms(HIDDEN * 24, threads=1, calls=10)
    assert set(micros) == {"fused", "split"} and all(v > 0 for v in micros.values())


def _ctx(tmp_path: Path, device: str = "cpu") -> StepContext:
    return StepContext(workdir=tmp_path, calibration={}, labels=None, device=device)


def _config(**fields: str) -> graph_optimize.GraphOptimizeConfig:
    doc = {"model": {"uri": "m"}, "data": {"uri": "d"}, "techniques": [{"graphOptimize": fields}]}
    return parse_document(doc).spec.steps()[0][1]  # type: ignore[return-value]


@pytest.mark.parametrize(("fused_us", "split_us", "form"), [(250.0, 50.0, "split"), (50.0, 52.0, "fused"),
                                                            (50.0, 47.0, "fused")])
def test_auto_keeps_the_form_that_timed_faster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               fused_us: float, split_us: float, form: str) -> None:
    monkeypatch.setattr(layer_norm, "time_forms", lambda hidden, threads: {"fused": fused_us, "split": split_us})
    model = residual_model()
    decision = graph_optimize._choose_skip_layer_norm(model, _config(), _ctx(tmp_path))
    assert decision["form"] == form and decision["hiddenSize"] == HIDDEN
    assert decision["microsecondsPerCall"] == {"fused": fused_us, "split": split_us}
    assert ("SkipLayerNormalization" in {n.op_type for n in model.graph.node}) == (form == "fused")


def test_explicit_forms_and_gpu_skip_the_timing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_timing(hidden: int, threads: int) -> dict[str, float]:
        raise AssertionError("timed although the form was decided")

    monkeypatch.setattr(layer_norm, "time_forms", no_timing)
    assert graph_optimize._choose_skip_layer_norm(residual_model(), _config(), _ctx(tmp_path, "gpu"))["form"] == "fused"
    assert graph_optimize._choose_skip_layer_norm(residual_model(), _config(skipLayerNorm="fused"),
                                                  _ctx(tmp_path))["form"] == "fused"
    decision = graph_optimize._choose_skip_layer_norm(residual_model(), _config(skipLayerNorm="split"), _ctx(tmp_path))
    assert decision == {"form": "split", "split": 2, "reason": "skipLayerNorm split"}


def test_unknown_form_is_a_field_error() -> None:
    with pytest.raises(Exception, match="skipLayerNorm"):
        _config(skipLayerNorm="sometimes")


def test_auto_without_a_constant_width_keeps_the_fusion(tmp_path: Path) -> None:
    model = residual_model(computed_gamma=True)
    decision = graph_optimize._choose_skip_layer_norm(model, _config(), _ctx(tmp_path))
    assert decision["form"] == "fused" and "not a constant" in decision["reason"]
