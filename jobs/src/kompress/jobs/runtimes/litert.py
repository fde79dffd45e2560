"""TensorFlow Lite out: the `tflite` export, for phones and microcontrollers.

Written by the TFLite converter from the original model's SavedModel (a Keras model is first exported to one by
Keras itself): fp32, fp16 (float16 weights) or int8 (full-integer: weights and activations, calibrated on the
calibration rows; float32 inputs and outputs). A SavedModel whose object graph no longer loads in TF 2.x is read
by the TF1 converter through its signature. The result runs in the LiteRT interpreter (ai-edge-litert), which is
what measures it. Nothing here is imported before a spec asks for tflite."""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError, RuntimeFailure, first_line

FORMAT = "tflite"
FILE = "model.tflite"
FRAMEWORKS = frozenset({"keras", "tensorflow"})
"""model.format values the TFLite converter starts from. An ONNX or PyTorch source has no converter that installs
beside this stack: onnx2tf 1.29 (the last for Python 3.11) pins numpy 1.26, onnx 1.19 and protobuf 4.25 (2.x
needs Python 3.12), and litert-torch 0.10 pulls xdsl 0.28, whose typing-extensions<4.13 breaks pydantic 2.13."""
MODULES = ("tensorflow", "ai_edge_litert")
EXTRA = "tensorflow"
SIGNATURE = "serving_default"
CALIBRATION_ROWS = 200


@dataclass
class Written:
    path: Path
    route: str
    seconds: float


def _representative(rows: dict[str, np.ndarray], keyed: bool) -> Any:
    n = min(CALIBRATION_ROWS, len(next(iter(rows.values()))))

    def batches() -> Iterator[Any]:
        for i in range(n):
            one = {k: v[i : i + 1].astype(np.float32) if v.dtype == np.float64 else v[i : i + 1]
                   for k, v in rows.items()}
            yield one if keyed else list(one.values())
    return batches


def _configure(converter: Any, precision: str, calibration: dict[str, np.ndarray], keyed: bool) -> None:
    import tensorflow as tf

    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if not calibration or not len(next(iter(calibration.values()))):
            raise InvalidInputError("a full-integer tflite export calibrates on the calibration rows, and data.uri "
                                    "left none (raise data.calibrationSamples or give more rows)",
                                    field="export.precision")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(calibration, keyed)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def write(saved_model: Path, precision: str, calibration: dict[str, np.ndarray], out: Path) -> Written:
    """The SavedModel converted to `out` (the TF2 converter; the TF1 one when the object graph does not load)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    started = time.perf_counter()
    errors = []
    for route in ("TF2", "TF1"):
        try:
            if route == "TF2":
                converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
            else:
                converter = tf.compat.v1.lite.TFLiteConverter.from_saved_model(str(saved_model),
                                                                               signature_key=SIGNATURE)
            _configure(converter, precision, calibration, keyed=route == "TF2")
            flat = converter.convert()
            break
        except InvalidInputError:
            raise
        except Exception as err:
            errors.append(f"{route}: {first_line(err)}")
    else:
        raise RuntimeFailure(f"the TFLite converter cannot convert this model ({'; '.join(errors)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(flat)
    seconds = time.perf_counter() - started
    how = {"fp32": "float32", "fp16": "float16 weights", "int8": "full-integer int8, float32 I/O"}[precision]
    return Written(out, f"TensorFlow {tf.__version__} {route} TFLite converter from the SavedModel ({how})", seconds)


class Interpreter:
    """A .tflite model in the LiteRT interpreter, fed and read by the names of the ONNX graph (the signature's
    names, which the converters keep)."""

    def __init__(self, path: Path, threads: int, names: tuple[list[str], list[str]],
                 tensor_names: tuple[list[str], list[str]] | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter as LiteRT

        self.interpreter = LiteRT(model_path=str(path), num_threads=threads)
        self.inputs, self.outputs = names
        signatures = self.interpreter.get_signature_list()
        self.runner = self.interpreter.get_signature_runner(SIGNATURE) if SIGNATURE in signatures else None
        self._tensor_names = tensor_names
        if self.runner is not None:
            # the signature's names are the ONNX graph's when the converter kept them (tf2onnx from a SavedModel);
            # else (Keras' ONNX export names its outputs Identity:0...) they match by position
            signature = signatures[SIGNATURE]
            self._feeds = _by_name_or_position(self.inputs, list(signature["inputs"]))
            self._fetches = _by_name_or_position(self.outputs, list(signature["outputs"]))

    @staticmethod
    def version() -> str:
        try:
            return f"LiteRT {importlib.metadata.version('ai-edge-litert')}"
        except importlib.metadata.PackageNotFoundError:
            return "LiteRT"

    def run(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.runner is not None:
            out = self.runner(**{tfl: rows[name] for name, tfl in self._feeds.items()})
            return {name: out[tfl] for name, tfl in self._fetches.items()}
        return self._run_by_order(rows)

    def _run_by_order(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A TF1-converted model has no signature: its tensors are matched to the SavedModel's by name."""
        it = self.interpreter
        ins, outs = it.get_input_details(), it.get_output_details()
        in_tensors, out_tensors = self._tensor_names or (self.inputs, self.outputs)
        by_name = {d["name"]: d for d in ins}
        for name, tensor in zip(self.inputs, in_tensors, strict=True):
            detail = by_name.get(tensor.split(':')[0]) or ins[self.inputs.index(name)]
            if list(detail["shape"]) != list(rows[name].shape):
                it.resize_tensor_input(detail["index"], list(rows[name].shape))
        it.allocate_tensors()
        for name, tensor in zip(self.inputs, in_tensors, strict=True):
            detail = by_name.get(tensor.split(':')[0]) or ins[self.inputs.index(name)]
            it.set_tensor(detail["index"], rows[name])
        it.invoke()
        out_by_name = {d["name"]: d for d in outs}
        result = {}
        for i, (name, tensor) in enumerate(zip(self.outputs, out_tensors, strict=True)):
            detail = out_by_name.get(tensor.removesuffix(":0")) or out_by_name.get(tensor) or outs[i]
            result[name] = it.get_tensor(detail["index"])
        return result


def _by_name_or_position(names: list[str], signature: list[str]) -> dict[str, str]:
    if set(names) <= set(signature):
        return {n: n for n in names}
    if len(names) != len(signature):
        raise RuntimeFailure(f"the tflite model's signature ({', '.join(signature)}) does not match the model's "
                             f"tensors ({', '.join(names)})")
    return dict(zip(names, sorted(signature), strict=True))


def require(fmt: str | None) -> None:
    """A tflite export needs a Keras or TensorFlow source and the extra that converts and runs it."""
    import importlib.util

    if fmt not in FRAMEWORKS:
        raise InvalidInputError(f"the tflite export is written by the TFLite converter from a Keras or TensorFlow "
                                f"model (model.format keras or tensorflow); this model is {fmt or 'unknown'} "
                                "(no converter from it is installed)", field="export.format")
    missing = [m for m in MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidInputError(f"the tflite export needs the extra `{EXTRA}` (pip install 'kompress-jobs[{EXTRA}]'"
                                f"); this install has no {', '.join(missing)}", field="export.format")
