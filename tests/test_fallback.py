"""Accuracy-aware fallback: a static INT8 candidate that misses the quality gate is repaired by keeping the
nodes around its worst-quantizing activations in float, and the report says which nodes and why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kompress.jobs.errors import ExitCode
from kompress.jobs.search import sensitivity

from conftest import run_cli, write_spec


def outlier_mlp(path: Path) -> Path:
    """fc1 -> relu -> fc2 -> fc3, where fc2 writes one channel ~2000x larger than the others and fc3 ignores
    that channel: per-tensor INT8 of fc2's output leaves the other channels a level or two, so the model's
    output is destroyed by quantization alone - a real failure mode of static INT8 (outlier channels)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 128)) / 8).astype(np.float32)
    w2 = (rng.standard_normal((128, 128)) / 11).astype(np.float32)
    w2[:, 0] *= 2000.0
    w3 = (rng.standard_normal((128, 16)) / 11).astype(np.float32)
    w3[0, :] = 0.0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="fc2"),
             helper.make_node("MatMul", ["h2", "w3"], ["y"], name="fc3")]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                               ["batch", 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 16])],
                              [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_outlier_activation_ranks_first(tmp_path: Path) -> None:
    model = outlier_mlp(tmp_path / "m.onnx")
    rows = {"x": np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)}
    ranked = sensitivity.rank(model, rows)
    assert ranked[0].tensor == "h2" and set(ranked[0].nodes) == {"fc2", "fc3"}
    assert ranked[0].sqnr_db < 25 < ranked[-1].sqnr_db  # the outlier tensor quantizes far worse


def test_fallback_rescues_a_static_int8_model_that_misses_the_gate(tmp_path: Path) -> None:
    model = outlier_mlp(tmp_path / "m.onnx")
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(2).standard_normal((256, 64)).astype(np.float32))
    doc = {"metadata": {"name": "outlier"}, "spec": {
        "model": {"uri": str(model)}, "data": {"uri": str(tmp_path / "data.npz"), "calibrationSamples": 64,
                                               "evaluationSamples": 128},
        "search": {"objective": "size", "trialIterations": 20,
                   "candidates": [{"name": "static", "techniques": [{"quantize": {"method": "static"}}]}]},
        "gates": {"minCosineSimilarity": 0.99}, "target": {"threads": 1, "iterations": 20}}}
    proc = run_cli("run", str(write_spec(tmp_path / "spec.yaml", doc)), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    plain, repaired = report["search"]["trials"][:2]
    assert plain["status"] == "rejected" and plain["metrics"]["cosineSimilarity"] < 0.9  # destroyed
    assert repaired["fallbackOf"] == "static" and repaired["status"] == "passed" and repaired["chosen"]
    assert set(repaired["keptInFloat"]) == {"fc2", "fc3"}
    assert all("h2: INT8 SQNR" in why for why in repaired["keptInFloat"].values())
    assert report["comparison"]["sizeReduction"] > 1.1 and report["optimized"]["quality"]["fidelity"][
        "cosineSimilarityMean"] >= 0.99
    assert report["steps"][-1]["config"]["excludeNodes"] == ["fc2", "fc3"]
