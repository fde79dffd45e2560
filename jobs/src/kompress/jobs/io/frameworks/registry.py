"""The frameworks a model may come from besides ONNX, PyTorch and Hugging Face: model.format names one."""

from __future__ import annotations

from pathlib import Path

from kompress.jobs.io.frameworks import keras, sklearn, tensorflow
from kompress.jobs.io.frameworks.base import Framework
from kompress.jobs.plugins import Registry

_FRAMEWORKS: Registry[Framework] = Registry("model format", "model.format",
                                            (keras.FRAMEWORK, tensorflow.FRAMEWORK, sklearn.FRAMEWORK))
names, get, all_frameworks, register = _FRAMEWORKS.names, _FRAMEWORKS.get, _FRAMEWORKS.all, _FRAMEWORKS.register


def detect(path: Path) -> Framework | None:
    return next((f for f in all_frameworks() if f.recognizes(path)), None)


def find(name: str | None) -> Framework | None:
    return get(name) if name in names() else None
