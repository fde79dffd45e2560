"""data.inputs: model inputs that are not batch-first, and constant inputs (a recurrent state, a sample rate),
on a small ONNX model with silero-vad's input layout: input [batch, 64], state [2, batch, 8], sr [] int64;
outputs [batch, 1] and stateN [2, batch, 8]."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kompress.jobs.errors import ExitCode, InvalidInputError, SpecError
from kompress.jobs.io import data
from kompress.jobs.io import models as model_io
from kompress.jobs.measure import evaluate
from kompress.jobs.measure.evaluate import batch_axis_fixed
from kompress.jobs.spec.document import parse_document
from kompress.jobs.spec.sections import DataSpec

from conftest import run_cli, write_spec

ROWS, WIDTH, HIDDEN = 96, 64, 8
STATE = {"constant": {"zeros": [2, 1, HIDDEN], "dtype": "float32"}, "batchAxis": 1}
SR = {"constant": {"value": 16000, "dtype": "int64"}}


def vad_model(path: Path, batch: str | int = "batch") -> Path:
    """out = sigmoid(relu(x W1 + mean_over_layers(state) + sr/16000) W2 + b); stateN = state + x W1. The state
    is read along its batch axis (axis 1): a state batched on the wrong axis does not broadcast."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((WIDTH, HIDDEN)).astype(np.float32) / 8, "w1"),
             numpy_helper.from_array(rng.standard_normal((HIDDEN, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([0.1], np.float32), "b"),
             numpy_helper.from_array(np.array(1 / 16000, np.float32), "per_hz"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"]),
        helper.make_node("Transpose", ["state"], ["state_bf"], perm=[1, 0, 2]),
        helper.make_node("ReduceMean", ["state_bf"], ["state_mean"], axes=[1], keepdims=0),
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sr_f", "per_hz"], ["sr_one"]),
        helper.make_node("Add", ["h", "state_mean"], ["hs"]),
        helper.make_node("Add", ["hs", "sr_one"], ["hsr"]),
        helper.make_node("Relu", ["hsr"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["logit0"]),
        helper.make_node("Add", ["logit0", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["output"]),
        helper.make_node("Unsqueeze", ["h", "axis0"], ["h1"]),
        helper.make_node("Add", ["state", "h1"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, WIDTH]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, HIDDEN]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, batch, HIDDEN])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def expected_output(x: np.ndarray, state: np.ndarray, sr: int, model: Path) -> np.ndarray:
    """The model's output one sample at a time (state [2, 1, 8] per sample): what batching must reproduce."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["output"], {"input": x[i : i + 1], "state": state[:, i : i + 1],
                                                 "sr": np.array(sr, np.int64)})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def vad(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("vad")
    rows = np.random.default_rng(1).standard_normal((ROWS, WIDTH)).astype(np.float32)
    np.savez(folder / "vad.npz", input=rows)
    return vad_model(folder / "vad.onnx"), folder / "vad.npz"


def declared(inputs: dict[str, Any]) -> dict[str, Any]:
    return DataSpec.model_validate({"uri": "x.npz", "inputs": inputs}).inputs


# ---- the spec ----

def spec_problems(inputs: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as err:
        parse_document({"model": {"uri": "m.onnx"}, "data": {"uri": "d.npz", "inputs": inputs},
                        "techniques": [{"quantize": {"method": "dynamic"}}]})
    return err.value.problems


def test_spec_accepts_the_silero_layout_and_names_each_problem_by_path() -> None:
    spec = DataSpec.model_validate({"uri": "d.npz", "inputs": {"state": STATE, "sr": SR}})
    assert spec.inputs["state"].batch_axis == 1 and spec.inputs["state"].constant.dims() == (2, 1, HIDDEN)
    assert spec.inputs["sr"].batch_axis is None and spec.inputs["sr"].constant.value == 16000
    [(path, msg)] = spec_problems({"sr": {"constant": {"value": 1, "dtype": "int128"}}})
    assert path == "data.inputs.sr.constant.dtype" and "int64" in msg
    [(path, msg)] = spec_problems({"state": {"constant": {"zeros": [2, 1, 8], "value": 0}}})
    assert path == "data.inputs.state.constant" and "exactly one of zeros" in msg
    [(path, msg)] = spec_problems({"state": {"batchAxis": -1}})
    assert path == "data.inputs.state.batchAxis" and "greater than or equal to 0" in msg
    [(path, msg)] = spec_problems({"state": {}})
    assert path == "data.inputs.state" and "batchAxis, constant or both" in msg
    [(path, msg)] = spec_problems({"sr": {"constant": {"value": 16000}, "batchAxis": 0}})
    assert path == "data.inputs.sr" and "a scalar has no batch axis" in msg
    [(path, msg)] = spec_problems({"state": {"constant": {"zeros": [2, 4, 8]}, "batchAxis": 1}})
    assert path == "data.inputs.state" and "given for batch 1" in msg


# ---- one place builds the feeds ----

def test_plan_moves_batch_axes_and_repeats_constants(vad: tuple[Path, Path]) -> None:
    model, npz = vad
    specs = model_io.input_specs(model)
    ds = data.conform(data.load_npz(npz), specs, declared=declared({"state": STATE, "sr": SR}))
    assert set(ds.inputs) == {"input"} and ds.size == ROWS and not ds.feed_plan.is_batch_first
    feeds = ds.feeds(0, 5)
    assert feeds["input"].shape == (5, WIDTH) and feeds["state"].shape == (2, 5, HIDDEN)
    assert feeds["sr"].shape == () and feeds["sr"].dtype == np.int64 and int(feeds["sr"]) == 16000
    assert list(feeds) == ["input", "state", "sr"]  # the model's order
    cal, ev, _ = data.split(ds, 16, 64, 0)
    assert cal.plan is ds.plan and ev.feeds(0, 3)["state"].shape == (2, 3, HIDDEN)

    # a stored (not constant) input whose batch axis is 1: stored samples-first [N, 2, 8], fed as [2, k, 8]
    state = np.random.default_rng(2).standard_normal((ROWS, 2, HIDDEN)).astype(np.float32)
    np.savez(npz.parent / "stored.npz", input=data.load_npz(npz).inputs["input"], state=state)
    stored = data.conform(data.load_npz(npz.parent / "stored.npz"), specs,
                          declared=declared({"state": {"batchAxis": 1}, "sr": SR}))
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert not batch_axis_fixed(sess, stored.feed_plan.batch_axes())
    out = evaluate.run_all(sess, stored, None)  # batches of QUALITY_BATCH along the state's axis 1
    want = expected_output(stored.inputs["input"], np.moveaxis(state, 0, 1), 16000, model)
    assert out.shape == (ROWS, 1) and np.allclose(out, want, atol=1e-6)
    forgot = data.conform(data.load_npz(npz), specs,
                          declared=declared({"state": {"constant": {"zeros": [2, 1, HIDDEN]}}, "sr": SR}))
    with pytest.raises(InvalidInputError, match=r"state is fed as given .* give its batchAxis"):
        evaluate.run_all(sess, forgot, None)  # a batch of 32 against a state for batch 1
    np.savez(npz.parent / "bad.npz", input=data.load_npz(npz).inputs["input"],
             state=np.zeros((ROWS, 9, HIDDEN), np.float32))
    with pytest.raises(InvalidInputError, match=r"'state': axis 1 is 9, expected 2 \(stored samples-first as"):
        data.conform(data.load_npz(npz.parent / "bad.npz"), specs,
                     declared=declared({"state": {"batchAxis": 1}, "sr": SR}))


def test_batch_axis_fixed_reads_each_inputs_batch_axis(tmp_path: Path) -> None:
    fixed = ort.InferenceSession(str(vad_model(tmp_path / "one.onnx", batch=1)), providers=["CPUExecutionProvider"])
    # dim 0 of `state` is 2 and `sr` has no axes: only the declared batch axis of `state` tells
    axes = {"input": 0, "state": 1, "sr": None}
    assert batch_axis_fixed(fixed, axes)
    assert batch_axis_fixed(fixed)  # `input` is batch-first and fixed at 1
    fed = data.Dataset({"input": np.ones((3, WIDTH), np.float32)}, None, "", Path("d.npz"),
                       data.InputPlan((data.Feed("input"),
                                       data.Feed("state", 1, np.zeros((2, 1, HIDDEN), np.float32)),
                                       data.Feed("sr", None, np.array(16000, np.int64)))))
    assert evaluate.run_all(fixed, fed, None).shape == (3, 1)  # one row per call


def test_run_time_problems_name_the_field(vad: tuple[Path, Path]) -> None:
    model, npz = vad
    specs = model_io.input_specs(model)
    rows = data.load_npz(npz)
    cases = [
        ({"state": STATE, "sr": SR, "nosuch": {"batchAxis": 1}}, "data.inputs.nosuch", "has no input 'nosuch'"),
        ({"state": {"constant": {"zeros": [2, 1, 4]}, "batchAxis": 1}, "sr": SR}, "data.inputs.state.constant",
         "axis 2 is 4, the model's is 8"),
        ({"state": {"constant": {"zeros": [1, HIDDEN]}}, "sr": SR}, "data.inputs.state.constant", "rank 2"),
        ({"state": STATE, "sr": SR, "input": {"batchAxis": 2}}, "data.inputs.input", "beyond the input's rank 2"),
        ({"state": STATE, "sr": {"constant": {"value": 1.5, "dtype": "float32"}}}, "data.inputs.sr.constant.dtype",
         "the model expects int64"),
        ({"state": STATE}, "data.uri", "missing array 'sr'"),
    ]
    for inputs, field, needle in cases:
        with pytest.raises(InvalidInputError) as err:
            data.conform(rows, specs, declared=declared(inputs))
        assert err.value.field == field and needle in err.value.message, (inputs, str(err.value))
    assert "data.inputs" in str(err.value)  # the missing-array message names the fix


# ---- through the CLI ----

def spec_doc(model: Path, npz: Path, technique: dict[str, Any], inputs: dict[str, Any] | None) -> dict[str, Any]:
    return {"model": {"uri": str(model)},
            "data": {"uri": str(npz), "calibrationSamples": 16, "evaluationSamples": 64,
                     **({"inputs": inputs} if inputs is not None else {})},
            "techniques": [technique],
            "target": {"iterations": 5, "warmupIterations": 1, "throughputBatchSize": 8, "threads": 1},
            "gates": {"noRegression": False}}


def run_spec(tmp_path: Path, doc: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    spec = write_spec(tmp_path / "spec.yaml", doc)
    proc = run_cli("run", str(spec), "-o", str(tmp_path / "out"), cwd=tmp_path, timeout=300)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    return proc, report


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_quantize_runs_with_constants_and_a_moved_batch_axis(vad: tuple[Path, Path], tmp_path: Path,
                                                             method: str) -> None:
    model, npz = vad
    proc, report = run_spec(tmp_path, spec_doc(model, npz, {"quantize": {"method": method}},
                                               {"state": STATE, "sr": SR}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    fidelity = report["optimized"]["quality"]["fidelity"]
    assert 0.9 < fidelity["cosineSimilarityMean"] <= 1.0 + 1e-6 and fidelity["maxAbsError"] < 0.2
    assert report["data"]["evaluationSamples"] == 64 and report["optimized"]["peakMemoryBytes"] > 0
    assert report["baseline"]["throughputBatchSize"] == 8
    details = report["steps"][0]["details"]
    if method == "static":
        assert details["calibrationSamples"] == 16
    ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "QLinearMatMul"}, ops


def test_bad_inputs_exit_2_with_the_field(vad: tuple[Path, Path], tmp_path: Path) -> None:
    model, npz = vad
    cases = [
        ({"state": STATE, "sr": SR, "nosuch": {"batchAxis": 0}}, "data.inputs.nosuch"),
        ({"state": {"constant": {"zeros": [3, 1, HIDDEN]}, "batchAxis": 1}, "sr": SR}, "data.inputs.state.constant"),
        (None, "data.inputs"),  # missing state and sr: the message says where constants go
        ({"state": STATE, "sr": SR, "input": {"batchAxis": 5}}, "data.inputs.input"),
        ({"state": STATE, "sr": {"constant": {"value": 1, "dtype": "int3"}}}, "data.inputs.sr.constant.dtype"),
    ]
    for i, (inputs, needle) in enumerate(cases):
        work = tmp_path / str(i)
        work.mkdir()
        spec = write_spec(work / "spec.yaml", spec_doc(model, npz, {"quantize": {"method": "dynamic"}}, inputs))
        proc = run_cli("run", str(spec), "-o", str(work / "out"), cwd=work, timeout=300)
        assert proc.returncode == ExitCode.INVALID_INPUT, (inputs, proc.returncode, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and needle in proc.stderr, (inputs, proc.stderr[-2000:])


def test_training_techniques_refuse_data_inputs(vad: tuple[Path, Path], tmp_path: Path) -> None:
    model, npz = vad
    proc, report = run_spec(tmp_path, spec_doc(model, npz, {"qat": {"epochs": 1}}, {"state": STATE, "sr": SR}))
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stderr[-2000:]
    assert "data.inputs" in report["message"] and "PyTorch" in report["message"]
