"""Data files: loaded without pickle, checked against the model's inputs with one clear message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io import data
from kompress.jobs.io import models as model_io

from conftest import DATASETS

DIGITS_INPUTS = model_io.input_specs(DATASETS / "digits-cnn.onnx")


def test_shipped_sets_match_their_models() -> None:
    digits = data.conform(data.load_npz(DATASETS / "digits-eval.npz"), DIGITS_INPUTS)
    assert digits.size == 360 and digits.labels is not None and set(digits.inputs) == {"pixels"}
    minilm = data.load_npz(DATASETS / "minilm-eval.npz")
    assert minilm.size == 400 and set(minilm.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert minilm.inputs["input_ids"].shape[1] == 128


def test_mismatches_are_named(tmp_path: Path) -> None:
    f = tmp_path / "bad.npz"
    np.savez(f, image=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(InvalidInputError, match=r"missing array 'pixels'"):
        data.conform(data.load_npz(f), DIGITS_INPUTS)
    np.savez(f, pixels=np.zeros((4, 8, 8), np.float32))
    with pytest.raises(InvalidInputError, match=r"'pixels' has rank 3, the model expects 4"):
        data.conform(data.load_npz(f), DIGITS_INPUTS)
    np.savez(f, pixels=np.zeros((4, 1, 9, 8), np.float32))
    with pytest.raises(InvalidInputError, match=r"axis 2 is 9, expected 8"):
        data.conform(data.load_npz(f), DIGITS_INPUTS)
    np.savez(f, pixels=np.full((4, 1, 8, 8), "x"))
    with pytest.raises(InvalidInputError, match=r"'pixels' is <U1, the model expects float32"):
        data.conform(data.load_npz(f), DIGITS_INPUTS)
    np.savez(f, pixels=np.zeros((4, 1, 8, 8), np.float64))  # a safe cast is done, not refused
    assert data.conform(data.load_npz(f), DIGITS_INPUTS).inputs["pixels"].dtype == np.float32
    np.savez(f, pixels=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(3))
    with pytest.raises(InvalidInputError, match="labels must be 1-D with 4 entries"):
        data.load_npz(f)


def test_pickled_and_corrupt_files_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "pickled.npz"
    np.savez(f, pixels=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InvalidInputError, match="unpickling"):
        data.load_npz(f)
    g = tmp_path / "corrupt.npz"
    g.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InvalidInputError, match=r"not a readable \.npz"):
        data.load_npz(g)
    with pytest.raises(InvalidInputError, match=r"not a \.npz file"):
        data.load_npz(tmp_path)


def test_split_is_seeded_and_never_overlaps_unless_allowed() -> None:
    digits = data.load_npz(DATASETS / "digits-eval.npz")
    cal, ev, overlap = data.split(digits, 100, 200, seed=0)
    cal2, ev2, _ = data.split(digits, 100, 200, seed=0)
    assert not overlap and cal.size == 100 and ev.size == 200
    assert np.array_equal(ev.inputs["pixels"], ev2.inputs["pixels"])
    assert np.array_equal(cal.inputs["pixels"], cal2.inputs["pixels"])
    assert not set(cal.file_rows()) & set(ev.file_rows())  # the rows' positions in the file
    n = digits.size
    cal, ev, overlap = data.split(digits, 300, n - 50, seed=0)  # too small for both: calibration gets the rest
    assert not overlap and ev.size == n - 50 and cal.size == 50
    assert not set(cal.file_rows()) & set(ev.file_rows())
    cal, ev, overlap = data.split(digits, 300, n, seed=0)
    assert not overlap and cal.size == 0
    cal, ev, overlap = data.split(digits, 300, n - 50, seed=0, allow_overlap=True)  # the spec said so
    assert overlap and cal.size == 300 and set(cal.file_rows()) & set(ev.file_rows())


def test_a_technique_that_calibrates_refuses_evaluation_rows(tmp_path: Path) -> None:
    """data.uri with only evaluation rows: static INT8 says which knobs to turn instead of calibrating on the
    rows it will be scored on."""
    from kompress.jobs.techniques.context import StepContext

    ctx = StepContext(workdir=tmp_path, calibration={"pixels": np.zeros((0, 64), np.float32)}, labels=None)
    with pytest.raises(InvalidInputError, match="allowCalibrationOverlap") as err:
        ctx.require_calibration("static quantization", "techniques.quantize")
    assert "evaluationSamples" in str(err.value)
