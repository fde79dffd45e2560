"""spec.search on the digits CNN: trials ordered by expected gain, gates per trial, the best passing trial
chosen, early stop, every trial reported (table and Pareto plot), and resume after a killed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kompress.jobs.errors import SpecError
from kompress.jobs.search import candidates
from kompress.jobs.spec.document import Candidate, parse_document
from kompress.jobs.spec.sections import TargetSpec

from conftest import DATASETS, run_cli, write_spec

DYNAMIC = {"quantize": {"method": "dynamic", "perChannel": True}}
STATIC = {"quantize": {"method": "static", "perChannel": True}}
FP16 = {"fp16": {}}


def spec_doc(search_spec: dict[str, Any], gates: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "kompress.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": "digits-search"},
            "spec": {"model": {"uri": str(DATASETS / "digits-cnn.onnx"), "task": "classification"},
                     "data": {"uri": str(DATASETS / "digits-eval.npz"), "calibrationSamples": 100,
                              "evaluationSamples": 260},
                     "search": search_spec, "gates": gates or {"maxAccuracyDrop": 0.01},
                     "target": {"iterations": 20, "threads": 1}}}


def run_search(tmp_path: Path, search_spec: dict[str, Any], gates: dict[str, Any] | None = None,
               ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    spec = write_spec(tmp_path / "search.yaml", spec_doc(search_spec, gates))
    proc = run_cli("run", str(spec), "-o", str(tmp_path / "out"), cwd=tmp_path)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    return proc, report


def test_size_search_chooses_the_smallest_passing_model_and_reports_every_trial(tmp_path: Path) -> None:
    proc, report = run_search(tmp_path, {
        "objective": "size", "earlyStop": False, "trialIterations": 10,
        "candidates": [{"name": "half", "techniques": [FP16]}, {"techniques": [DYNAMIC]},
                       {"name": "static", "techniques": [STATIC]}]},
        gates={"maxAccuracyDrop": 0.02, "minSizeReduction": 3.0})
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = report["search"]["trials"]
    assert [t["name"] for t in trials] == ["quantize", "static", "half"]  # expected size gain 4, 4, 2
    half = next(t for t in trials if t["name"] == "half")
    assert half["status"] == "rejected" and half["metrics"]["sizeReduction"] < 2.1
    assert any(f.startswith("minSizeReduction") for f in half["failures"])
    passing = [t for t in trials if t["status"] == "passed"]
    assert len(passing) == 2
    chosen = [t for t in trials if t.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["gain"] == max(t["gain"] for t in passing)
    assert report["steps"][0]["technique"] == "quantize"
    assert report["comparison"]["sizeReduction"] >= 3.0 and report["gates"]["passed"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Search (size)" in html and "half" in html and "search.png" not in html  # embedded, not linked
    assert (tmp_path / "out" / "search.png").stat().st_size > 10_000
    assert "search: 3 trial(s)" in proc.stdout


def test_early_stop_skips_candidates_that_cannot_beat_a_passing_trial(tmp_path: Path) -> None:
    proc, report = run_search(tmp_path, {
        "objective": "size", "trialIterations": 10,
        "candidates": [{"name": "half", "techniques": [FP16]}, {"name": "int8", "techniques": [DYNAMIC]}]})
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = report["search"]["trials"]
    assert [t["name"] for t in trials] == ["int8"]  # 3.8x measured >= fp16's expected 2x: not tried
    assert report["search"]["stopped"].startswith("early stop")


def test_no_passing_trial_is_rejected_with_the_closest_attempt_reported(tmp_path: Path) -> None:
    proc, report = run_search(tmp_path, {
        "objective": "size", "earlyStop": False, "trialIterations": 10,
        "candidates": [{"name": "half", "techniques": [FP16]}, {"name": "int8", "techniques": [DYNAMIC]}]},
        gates={"minSizeReduction": 10.0})
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert report["outcome"] == "rejected"
    assert all(t["status"] == "rejected" for t in report["search"]["trials"])
    assert [t["name"] for t in report["search"]["trials"] if t.get("chosen")] == ["int8"]
    assert "minSizeReduction" in report["message"]


def test_a_killed_search_resumes_from_its_completed_trials(tmp_path: Path) -> None:
    search_spec = {"objective": "latency", "earlyStop": False, "trialIterations": 4000,
                   "candidates": [{"name": "first", "techniques": [DYNAMIC]},
                                  {"name": "second", "techniques": [STATIC]}]}
    spec = write_spec(tmp_path / "search.yaml", spec_doc(search_spec))
    cmd = [sys.executable, "-m", "kompress.jobs.cli", "run", str(spec), "-o", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=os.environ.copy())
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "trial 2:" in line:  # the first trial is recorded before the second one is announced
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    resumed = run_cli("run", str(spec), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "search: resuming, 1 trial(s) already completed" in resumed.stderr
    assert "trial 1:" not in resumed.stderr  # not run again
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(t["name"] for t in report["search"]["trials"]) == ["first", "second"]  # profile decides order


def test_search_spec_errors_name_the_field() -> None:
    base = spec_doc({"objective": "speed"})
    with pytest.raises(SpecError) as err:
        parse_document(base)
    assert any(path == "spec.search.objective" for path, _ in err.value.problems)
    both = spec_doc({"candidates": [{"techniques": [DYNAMIC]}]})
    both["spec"]["techniques"] = [DYNAMIC]
    with pytest.raises(SpecError) as err:
        parse_document(both)
    assert "exactly one of techniques" in str(err.value)
    empty = spec_doc({"candidates": [{"techniques": []}]})
    with pytest.raises(SpecError) as err:
        parse_document(empty)
    assert ("spec.search.candidates[0]", "a candidate applies techniques, or names the runtime (and precision) "
            "that serves the original model") in err.value.problems


def test_default_candidates_and_their_order() -> None:
    cnn = candidates.default_candidates("onnx", {}, TargetSpec(device="cpu"))
    assert [c.label() for c in cnn] == ["int8-dynamic", "int8-dynamic-per-tensor", "int8-static", "qat-int8"]
    bert = candidates.default_candidates("huggingface", {"hf.model_type": "bert", "hf.num_hidden_layers": "6"},
                                         TargetSpec(device="cpu"))
    assert [c.label() for c in bert] == ["int8-dynamic", "int8-dynamic-per-tensor", "int8-static",
                                         "distilled-3-layers+int8"]
    first = bert[0].steps()
    assert [n for n, _ in first] == ["graphOptimize", "quantize"]  # fused before INT8
    gains = {c.label(): candidates.expected_gain(c, "latency", {"hf.num_hidden_layers": "6"}, "cpu") for c in bert}
    assert gains["int8-dynamic"] == pytest.approx(2.2)
    assert gains["distilled-3-layers+int8"] == pytest.approx(4.4)  # 6/3 layers x fusion 1.1 x INT8 2
    quick = Candidate.model_validate({"techniques": [DYNAMIC]})
    assert candidates.expected_gain(quick, "size", {}, "cpu") == 4.0
    # ALBERT is fused like BERT (one BERT-like list for graphOptimize and the candidates), but its layers are
    # shared: no layer-distillation candidate
    albert = candidates.default_candidates("huggingface", {"hf.model_type": "albert", "hf.num_hidden_layers": "12"},
                                           TargetSpec(device="gpu"))
    assert [c.label() for c in albert] == ["int8-dynamic", "int8-dynamic-per-tensor", "int8-static", "fp16"]
    assert [n for n, _ in albert[-1].steps()] == ["graphOptimize", "fp16"]


def test_candidates_and_gains_follow_the_baseline_profile() -> None:
    """Where the baseline's time goes decides what is quantized and what a recipe may gain (Amdahl)."""
    conv_heavy = {"Conv": 0.47, "Add": 0.3, "Clip": 0.2, "Gemm": 0.03}  # a MobileNet-like classifier
    cnn = candidates.default_candidates("onnx", {}, TargetSpec(device="cpu"), conv_heavy)
    labels = [c.label() for c in cnn]
    assert "int8-dynamic" not in labels  # GEMMs hold 3% of the time: nothing for dynamic INT8 to win
    assert labels[:2] == ["int8-static-conv", "int8-static"]
    # the conv-only variant leaves the elementwise ops in float, where ONNX Runtime fuses them into the conv
    assert cnn[0].steps()[-1][1].op_types == ["Conv", "Gemm"]
    static_gain = candidates.expected_gain(cnn[1], "latency", {}, "cpu", conv_heavy)
    assert static_gain == pytest.approx(1 / (0.5 + 0.5 / 2))  # half the time in int8 kernels at 2x
    gemm_heavy = {"MatMul": 0.6, "Conv": 0.2, "Softmax": 0.2}
    mixed = candidates.default_candidates("onnx", {}, TargetSpec(device="cpu"), gemm_heavy)
    dynamic = next(c for c in mixed if c.label() == "int8-dynamic")
    assert dynamic.steps()[-1][1].op_types == ["MatMul", "Gemm", "Attention"]  # never ConvInteger on a CPU
    assert candidates.expected_gain(dynamic, "latency", {}, "cpu", gemm_heavy) == pytest.approx(1 / (0.4 + 0.3))
    unrestricted = Candidate.model_validate({"techniques": [DYNAMIC]})
    assert candidates.expected_gain(unrestricted, "latency", {}, "cpu", gemm_heavy) < \
        candidates.expected_gain(dynamic, "latency", {}, "cpu", gemm_heavy)  # ConvInteger is priced in
