"""Never promote a regression: the original is the reference every result must beat by more than the
measurement's own noise (issue: models nobody here wrote). Unit tests of the guard on crafted figures, and a
real search on a model where every INT8 candidate is slower, which must end with nothing promoted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kompress.jobs import gates
from kompress.jobs.errors import ExitCode
from kompress.jobs.report.model import ResultBlock
from kompress.jobs.spec.sections import GatesSpec

from conftest import run_cli, versions, write_spec


def block(**figures: float) -> ResultBlock:
    return ResultBlock(**{"size_reduction": 1.0, "speedup": 1.0, "energy_reduction": 1.0, **figures})


def test_a_search_result_must_beat_the_original_beyond_noise() -> None:
    guard = GatesSpec()
    assert guard.no_regression  # on unless the spec turns it off
    slower = gates.evaluate(guard, block(speedup=0.21, size_reduction=3.9), "latency")
    assert not slower.passed and slower.failures[0].startswith("noRegression: does not beat")
    within_noise = gates.evaluate(guard, block(speedup=1.03, speedup_spread=0.05), "latency")
    assert not within_noise.passed
    faster = gates.evaluate(guard, block(speedup=1.3, speedup_spread=0.05), "latency")
    assert faster.passed and faster.results[0].gate == "noRegression"
    assert gates.evaluate(guard, block(speedup=0.5, size_reduction=3.9), "size").passed  # its own objective
    assert gates.evaluate(GatesSpec(noRegression=False), block(speedup=0.21), "latency").passed


def test_a_fixed_pipeline_must_improve_something_and_is_warned_where_it_got_worse() -> None:
    smaller_but_slower = block(speedup=0.5, speedup_spread=0.02, size_reduction=3.9, energy_reduction=0.45)
    assert gates.evaluate(GatesSpec(), smaller_but_slower).passed
    assert gates.regressions(smaller_but_slower) == ["slower than the original: x0.50 latency (noise ±0.02)",
                                                     "hungrier (more energy per inference) than the "
                                                     "original: x0.45 energy (noise ±0.02)"]
    worse = block(speedup=0.5, size_reduction=0.89, energy_reduction=0.4)
    assert not gates.evaluate(GatesSpec(), worse).passed
    assert gates.regressions(worse)[0] == "worse than the original on every axis (latency, size, energy)"


def tiny_matmuls(path: Path, layers: int = 8) -> Path:
    """A chain of small MatMuls: INT8 adds quantize/dequantize work around multiplies that cost almost
    nothing, so every INT8 recipe is slower than the original."""
    rng = np.random.default_rng(0)
    nodes, weights = [], []
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}" if i + 1 < layers else "y"]))
        weights.append(numpy_helper.from_array((rng.standard_normal((16, 16)) / 4).astype(np.float32), f"w{i}"))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("h0", onnx.TensorProto.FLOAT,
                                                                            ["batch", 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 16])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_search_where_every_candidate_is_slower_promotes_nothing(tmp_path: Path) -> None:
    model = tiny_matmuls(tmp_path / "tiny.onnx")
    np.savez(tmp_path / "data.npz", h0=np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32))
    doc = {"metadata": {"name": "tiny"}, "spec": {
        "model": {"uri": str(model)}, "data": {"uri": str(tmp_path / "data.npz"), "calibrationSamples": 32,
                                                                                  "evaluationSamples": 32},
        "search": {"objective": "latency", "trialIterations": 80, "candidates": [
            {"name": "dynamic", "techniques": [{"quantize": {"method": "dynamic"}}]},
            {"name": "static", "techniques": [{"quantize": {"method": "static"}}]}]},
        "gates": {"minCosineSimilarity": 0.9}, "target": {"threads": 1, "iterations": 200},
        "promotion": {"registry": str(tmp_path / "registry"), "modelName": "tiny"}}}
    proc = run_cli("run", str(write_spec(tmp_path / "spec.yaml", doc)), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == ExitCode.GATES_REJECTED, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["outcome"] == "rejected"
    assert report["message"].startswith("no candidate improved latency; nothing promoted"), report["message"]
    trials = report["search"]["trials"]
    assert len(trials) == 2 and all(t["status"] == "rejected" for t in trials)
    assert all(any(f.startswith("noRegression") for f in t["failures"]) for t in trials)
    assert versions(tmp_path / "registry", "tiny") == []
    assert "search: 2 trial(s)" in proc.stdout and "verdict: REJECTED" in proc.stdout
