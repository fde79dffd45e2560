"""Runtimes: OpenVINO beside ONNX Runtime (measured, gated and served as an IR), a search across runtimes whose
choice follows its own measurements, and the ORT format for edge builds - all through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kompress.jobs.errors import ExitCode, SpecError
from kompress.jobs.io import data as datamod
from kompress.jobs.registry import repository as registry
from kompress.jobs.report.model import TensorSpec
from kompress.jobs.runner import SEED
from kompress.jobs.spec.document import parse_document

from conftest import EXAMPLES, example, run_cli, versions, write_spec

DIGITS_DATA = EXAMPLES.parent / "datasets" / "digits-eval.npz"


def _problems(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_document(doc)
    return dict(info.value.problems)


def _digits(**spec: Any) -> dict[str, Any]:
    doc = example("digits-int8.yaml")
    doc["spec"].update(spec)
    return doc


@pytest.mark.parametrize(("change", "path", "words"), [
    ({"target": {"runtime": "openvino"}, "techniques": [{"graphOptimize": {}}, {"quantize": {}}]},
     "spec", "techniques[0] graphOptimize writes a graph only onnxruntime runs"),
    ({"target": {"runtime": "openvino"}, "techniques": [{"quantize": {"method": "weightOnly", "weights": "int4"}}]},
     "spec", "techniques[0] quantize writes a graph only onnxruntime runs"),
    ({"target": {"runtime": "auto"}}, "spec", "a fixed pipeline names its runtime"),
    ({"target": {"precision": "bf16"}}, "spec",
     "target.precision is a runtime's inference precision; onnxruntime runs the graph's own"),
    ({"target": {"runtime": "openvino"}, "export": {"format": "ort"}}, "spec",
     "export format ort is written by onnxruntime; target.runtime is openvino"),
    ({"target": {"runtime": "openvino", "device": "gpu"}}, "spec",
     "target.runtime openvino does not run on a gpu target (a gpu target runs onnxruntime)"),
    ({"techniques": [{"quantize": {"backend": "nncf", "method": "dynamic"}}]}, "spec.techniques[0].quantize",
     "backend nncf quantizes statically"),
])
def test_a_spec_its_runtime_cannot_serve_is_refused_naming_the_field(change: dict[str, Any], path: str,
                                                                     words: str) -> None:
    problems = _problems(_digits(**change))
    assert path in problems and words in problems[path], problems


def test_a_candidate_on_another_runtime_needs_the_runtime_unpinned() -> None:
    """A named target.runtime pins the search; unset or auto, candidates may name any runtime that serves the
    target."""
    doc = _digits(techniques=None, search={"candidates": [{"runtime": "openvino", "precision": "bf16"}]},
                  target={"runtime": "onnxruntime"})
    del doc["spec"]["techniques"]
    problems = _problems(doc)
    assert "search.candidates[0].runtime openvino differs from target.runtime onnxruntime" in problems["spec"]
    for target in ({"runtime": "auto"}, {}):
        doc["spec"]["target"] = target
        spec = parse_document(doc).spec
        assert spec.searches_runtimes and spec.search_runtimes() == ["onnxruntime", "openvino"]
        assert spec.search.candidates[0].label() == "openvino+bf16"  # type: ignore[union-attr]
    doc["spec"]["target"] = {"runtime": "auto"}
    doc["spec"]["search"]["candidates"][0].pop("runtime")  # a precision on ONNX Runtime would be ignored: refused
    assert ("candidates[0].precision is a runtime's inference precision, but the candidate runs on onnxruntime"
            in _problems(doc)["spec"])


def test_an_openvino_version_is_laid_out_for_triton_and_model_server() -> None:
    """Triton's OpenVINO backend and OpenVINO Model Server both read <model>/<version>/model.xml + model.bin;
    config.pbtxt names the backend and the precision the model was measured at; exports keep their names."""
    files = registry.version_files(["/w/serve/quantized.xml", "/w/serve/quantized.bin", "/w/out/model.ort"],
                                   "openvino")
    assert list(files) == ["model.xml", "model.bin", "model.ort"]
    assert list(registry.version_files(["s3://b/run/model.onnx", "s3://b/run/model.onnx.data"])) == [
        "model.onnx", "model.onnx.data"]
    with pytest.raises(Exception, match="repeated or unsafe"):
        registry.version_files(["/a/model.onnx", "/b/model.onnx.data", "/c/kompress.json"])
    tensor = [TensorSpec(name="x", dtype="tensor(float)", shape=["batch", 4])]
    config = registry.triton_config("m", tensor, tensor, "openvino", "bf16")
    assert 'backend: "openvino"' in config and "platform" not in config
    assert 'key: "INFERENCE_PRECISION_HINT"' in config and 'string_value: "bf16"' in config


def _evaluation_rows(samples: int, calibration: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The evaluation rows a run measures (the runner's own split, same seed)."""
    _, evaluation, _ = datamod.split(datamod.load_npz(DIGITS_DATA), calibration, samples, SEED)
    assert evaluation.labels is not None
    return evaluation.feeds(0, evaluation.size), evaluation.labels


def test_digits_on_openvino_promotes_an_ir_openvino_serves_as_reported(tmp_path: Path) -> None:
    doc = _digits(techniques=[{"quantize": {"method": "static"}}])
    doc["spec"]["target"].update(runtime="openvino", iterations=40)
    doc["spec"]["promotion"]["registry"] = str(tmp_path / "registry")
    doc["spec"]["gates"] = {"maxAccuracyDrop": 0.02}
    proc = run_cli("run", str(write_spec(tmp_path / "digits-ov.yaml", doc)), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == ExitCode.SUCCESS, proc.stdout[-3000:] + proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["steps"][0]["details"]["backend"] == "nncf"  # quantize's backend auto follows the runtime
    assert report["baseline"]["runtime"] == report["optimized"]["runtime"] == "openvino"
    assert report["optimized"]["precision"] == "f32"
    assert report["signature"] | {"inputs": None, "outputs": None} == {
        "inputs": None, "outputs": None, "runtime": "openvino", "precision": "f32", "format": "openvino-ir"}
    assert "runtime" in proc.stdout and "openvino f32" in proc.stdout  # the console table names it
    assert versions(tmp_path / "registry", "digits") == ["1"]
    version = tmp_path / "registry" / "digits" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["kompress.json", "model.bin", "model.xml"]
    assert 'backend: "openvino"' in (tmp_path / "registry" / "digits" / "config.pbtxt").read_text()
    manifest = json.loads((version / "kompress.json").read_text())
    assert manifest["serving"] == {"runtime": "openvino", "precision": "f32", "format": "openvino-ir"}
    assert manifest["sha256"] == report["optimized"]["sha256"]

    import openvino as ov

    feeds, labels = _evaluation_rows(360, 100)
    compiled = ov.Core().compile_model(str(version / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    logits = compiled(feeds)[compiled.output(0)]
    accuracy = float((np.asarray(logits).argmax(1) == labels).mean())
    # the promoted IR, run by OpenVINO itself, scores what the report says (one sample of slack for threads)
    assert abs(accuracy - report["optimized"]["quality"]["accuracy"]) <= 1 / len(labels) + 1e-9


def test_ort_format_export_gives_the_onnx_models_outputs(tmp_path: Path) -> None:
    import onnxruntime as ort

    doc = _digits(export={"format": "ort"})
    doc["spec"]["target"]["iterations"] = 30
    doc["spec"]["promotion"]["registry"] = str(tmp_path / "registry")
    proc = run_cli("run", str(write_spec(tmp_path / "digits-ort.yaml", doc)), "-o", str(tmp_path / "out"),
                   cwd=tmp_path)
    assert proc.returncode == ExitCode.SUCCESS, proc.stdout[-3000:] + proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    export = report["export"]
    assert export["matchesOnnx"] is True and export["maxAbsDifference"] <= 1e-3
    assert any("should perform well" in line for line in export["mobileUsability"]), export
    assert [Path(f).name for f in report["artifacts"]["exports"]] == ["model.ort", "model.required_operators.config"]
    version = tmp_path / "registry" / "digits" / "1"
    assert {"model.onnx", "model.ort", "model.required_operators.config"} <= {p.name for p in version.iterdir()}
    assert "ai.onnx;" in (version / "model.required_operators.config").read_text()  # what a minimal build keeps

    feeds, _ = _evaluation_rows(360, 100)
    onnx_out = ort.InferenceSession(str(version / "model.onnx")).run(None, feeds)[0]
    ort_out = ort.InferenceSession(str(version / "model.ort")).run(None, feeds)[0]
    assert np.abs(onnx_out - ort_out).max() <= 1e-3 * max(1.0, float(np.abs(onnx_out).max()))
    assert (onnx_out.argmax(1) == ort_out.argmax(1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("min_cosine", [0.995, 0.99])
def test_a_search_across_runtimes_chooses_what_it_measured(tmp_path: Path, min_cosine: float) -> None:
    """examples/minilm-runtimes.yaml at two cosine gates: every (runtime, recipe) pair is measured, each trial
    passes exactly when its measured cosine meets the gate, and the chosen trial is the fastest that passes
    - whichever runtime that is on this machine - served in that runtime's format."""
    doc = example("minilm-runtimes.yaml")
    spec = doc["spec"]
    spec["data"].update(calibrationSamples=48, evaluationSamples=96)
    spec["search"]["trialIterations"] = 20
    spec["target"]["iterations"] = 30
    spec["gates"]["minCosineSimilarity"] = min_cosine
    spec["promotion"]["registry"] = str(tmp_path / "registry")
    proc = run_cli("run", str(write_spec(tmp_path / "minilm-runtimes.yaml", doc)), "-o", str(tmp_path / "out"),
                   cwd=tmp_path, timeout=1500)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    trials = report["search"]["trials"]
    print("\n".join(f"{t['name']:<22} {t['runtime']:<12} {t.get('precision') or '':<5} {t.get('gain', 0):.2f}x "
                    f"cosine {t['metrics']['cosineSimilarity']:.4f} {t['status']}" for t in trials))
    assert sorted((t["name"], t["runtime"]) for t in trials) == [  # earlyStop false: every pair measured
        ("openvino-bf16", "openvino"), ("openvino-nncf-int8", "openvino"), ("ort-fused-int8", "onnxruntime")]
    for t in trials:
        misses = any(f.startswith("minCosineSimilarity") for f in t["failures"])
        assert misses == (t["metrics"]["cosineSimilarity"] < min_cosine), t
    passing = [t for t in trials if t["status"] == "passed"]
    if not passing:
        assert proc.returncode == ExitCode.GATES_REJECTED, proc.stderr
        return
    fastest = max(passing, key=lambda t: t["gain"])
    assert [t["name"] for t in trials if t["chosen"]] == [fastest["name"]]
    assert report["signature"]["runtime"] == fastest["runtime"]
    served = {"openvino": "model.xml", "onnxruntime": "model.onnx"}[fastest["runtime"]]
    if proc.returncode == ExitCode.SUCCESS:
        assert (tmp_path / "registry" / "minilm-runtimes" / "1" / served).exists()
    else:  # the full measurement of the chosen trial can still miss a gate the short trial met: said, not hidden
        assert proc.returncode == ExitCode.GATES_REJECTED and report["gates"]["passed"] is False, proc.stderr


def test_openvino_without_openvino_fails_in_one_line(tmp_path: Path) -> None:
    """Where OpenVINO is not installed (the slim image), runtime openvino says which extra/image it needs, exit 2,
    no traceback (sys.modules[name] = None hides an installed module)."""
    import subprocess
    import sys

    doc = _digits()
    doc["spec"]["target"]["runtime"] = "openvino"
    spec = write_spec(tmp_path / "digits-ov.yaml", doc)
    code = ("import sys; from kompress.jobs.runtimes.openvino import RUNTIME\n"
            "for m in RUNTIME.modules: sys.modules[m] = None\n"
            "from kompress.jobs.cli import main\n"
            f"sys.exit(main(['run', '-q', {str(spec)!r}, '-o', {str(tmp_path / 'out')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == ExitCode.INVALID_INPUT, out.stderr
    assert "target.runtime: this spec needs the openvino runtime (extra `openvino`" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_pinned_search_that_promotes_nothing_names_the_runtimes_it_did_not_search(tmp_path: Path) -> None:
    """A named target.runtime stays pinned (every trial on it); when nothing is promoted, the message says which
    installed runtime was not searched and how to search it, without measuring it."""
    doc = _digits(techniques=None, search={"candidates": [{"techniques": [{"quantize": {"method": "static"}}]}],
                                           "trialIterations": 10})
    del doc["spec"]["techniques"]
    doc["spec"]["target"].update(runtime="onnxruntime", iterations=20)
    doc["spec"]["gates"] = {"minSpeedup": 100.0}  # no INT8 recipe is 100x: nothing is promoted
    doc["spec"]["promotion"]["registry"] = str(tmp_path / "registry")
    proc = run_cli("run", str(write_spec(tmp_path / "pinned.yaml", doc)), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == ExitCode.GATES_REJECTED, proc.stdout[-3000:] + proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {t["runtime"] for t in report["search"]["trials"]} == {"onnxruntime"}
    assert report["message"].endswith("; runtime pinned to onnxruntime; openvino is installed and was not searched: "
                                      "leave target.runtime unset or set auto to search it"), report["message"]
    assert not (tmp_path / "registry").exists() or not any((tmp_path / "registry").rglob("model.*"))


def test_a_search_with_no_runtime_named_searches_every_installed_runtime() -> None:
    """target.runtime unset: a search chooses among every installed runtime that serves the target (as auto);
    a fixed pipeline runs on the reference runtime; a GPU target has one runtime; an export narrows the search
    to the runtimes that write it."""
    from kompress.jobs.search.candidates import default_candidates, searched_runtimes

    doc = _digits(techniques=None, search={})
    del doc["spec"]["techniques"]
    spec = parse_document(doc).spec
    assert spec.target.runtime is None and spec.searches_runtimes and spec.pinned_runtime is None
    searched = searched_runtimes(spec)
    assert [r.name for r in searched] == ["onnxruntime", "openvino"]
    built = default_candidates("onnx", {}, spec.target, {"Conv": 0.5, "Gemm": 0.3}, searched)
    assert {c.runtime for c in built} == {"onnxruntime", "openvino"}  # each names its runtime
    assert not parse_document(_digits()).spec.searches_runtimes  # a fixed pipeline
    doc["spec"]["export"] = {"format": "ort"}
    assert parse_document(doc).spec.search_runtimes() == ["onnxruntime"]
    doc["spec"].pop("export")
    doc["spec"]["target"] = {"device": "gpu"}
    assert parse_document(doc).spec.search_runtimes() == ["onnxruntime"]
    doc["spec"]["target"] = {"runtime": "openvino"}
    assert parse_document(doc).spec.pinned_runtime == "openvino"
