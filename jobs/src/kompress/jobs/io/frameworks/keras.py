"""Keras models (`.keras`, and the legacy `.h5`/`.hdf5`), loaded by Keras 3 in safe mode (no Lambda layer's
pickled code is run) on the TensorFlow backend, converted with Keras' own ONNX export (tf2onnx underneath),
which keeps the model's input names and output order."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io.frameworks import base
from kompress.jobs.io.frameworks.base import OPSET, Converted, Framework, Loaded
from kompress.jobs.spec.sections import ModelSpec

SUFFIXES = (".keras", ".h5", ".hdf5")


class KerasModel(Loaded):
    def __init__(self, model: Any, workdir: Path) -> None:
        self.model = model
        self._workdir = workdir
        self._saved: Path | None = None

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import keras

        feed = list(inputs) if len(inputs) > 1 else inputs[0]
        out = self.model(feed, training=False)
        return [base.as_float32(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(out)]

    @property
    def saved_model(self) -> Path:  # type: ignore[override]
        """Written on first use: the TFLite converter reads a SavedModel (Keras 3's own tf_saved_model export)."""
        if self._saved is None:
            self._saved = self._workdir / "keras-saved-model"
            self.model.export(str(self._saved), format="tf_saved_model", verbose=False)
        return self._saved


def _call_once(model: Any) -> None:
    """One call on zeros of the inputs' shapes (batch 1; an unknown dimension taken as 1)."""
    zeros = [np.zeros([1, *(d or 1 for d in t.shape[1:])], dtype=t.dtype or "float32") for t in model.inputs]
    model(zeros if len(zeros) > 1 else zeros[0], training=False)


class Keras(Framework):
    name = "keras"
    summary = "a Keras model (.keras, or a legacy .h5), converted to ONNX with Keras' own exporter (tf2onnx)"
    modules = ("tensorflow", "keras", "tf2onnx")
    extra = "tensorflow"

    def recognizes(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in SUFFIXES

    def convert(self, local: Path, workdir: Path, model: ModelSpec) -> Converted:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        base.quiet_tensorflow()
        import keras

        if keras.backend.backend() != "tensorflow":
            raise InvalidInputError(f"Keras runs on the {keras.backend.backend()} backend here; converting a Keras "
                                    "model needs KERAS_BACKEND=tensorflow", field="model.format")
        try:
            # safe_mode: a Lambda layer's serialized Python code is refused, never run (trustPickle allows it)
            loaded = keras.saving.load_model(str(local), compile=False, safe_mode=not model.trust_pickle)
        except Exception as err:
            raise InvalidInputError(f"{local.name} cannot be loaded by Keras {keras.__version__} "
                                    f"({base.first_line(err)})", field="model.uri") from None
        out = workdir / "converted" / "model.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            _call_once(loaded)  # a loaded model that was never called has no traced graph to export
            loaded.export(str(out), format="onnx", verbose=False, opset_version=OPSET)
        except Exception as err:
            raise InvalidInputError(f"Keras' ONNX export (tf2onnx) cannot convert {local.name}: "
                                    f"{base.first_line(err)}", field="model.uri") from None
        route = (f"Keras {keras.__version__} model.export(format='onnx'), tf2onnx underneath, opset {OPSET}"
                 f" ({time.perf_counter() - started:.1f} s)")
        return Converted(out, route, KerasModel(loaded, workdir / "converted"),
                         base.versions("keras", "tensorflow", "tensorflow-cpu", "tf2onnx"))


FRAMEWORK = Keras()
