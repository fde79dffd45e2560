"""TensorFlow SavedModel folders (saved_model.pb + variables/), loaded through the SavedModel's signature in a
TF1-style graph session: that reads every SavedModel, TF1 or TF2, including those whose object graph no longer
loads in TF 2.x (optimizer slots of an older Keras). Converted by tf2onnx from the frozen signature, with the
signature's input and output names kept."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io.frameworks import base
from kompress.jobs.io.frameworks.base import OPSET, Converted, Framework, Loaded
from kompress.jobs.spec.sections import ModelSpec

SIGNATURE = "serving_default"


class SavedModel(Loaded):
    def __init__(self, path: Path, session: Any, signature: Any, inputs: list[str], outputs: list[str]) -> None:
        self.path = path
        self.session = session
        self.signature = signature
        self.inputs, self.outputs = inputs, outputs
        """Signature keys in the ONNX graph's input and output order."""

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = {self.signature.inputs[k].name: a for k, a in zip(self.inputs, inputs, strict=True)}
        fetched = self.session.run([self.signature.outputs[k].name for k in self.outputs], feed)
        return [base.as_float32(a) for a in fetched]

    @property
    def saved_model(self) -> Path:  # type: ignore[override]
        return self.path

    @property
    def tensor_names(self) -> tuple[list[str], list[str]]:  # type: ignore[override]
        return ([self.signature.inputs[k].name for k in self.inputs],
                [self.signature.outputs[k].name for k in self.outputs])


def _freeze(local: Path, key: str, signature: Any, session: Any, tf_loader: Any) \
        -> tuple[Any, list[str], list[str], dict[str, str], str]:
    """The signature's graph with its variables folded in: through the TF2 object graph (variables read inside
    functions), else from the TF1 session (a SavedModel whose object graph no longer loads)."""
    try:
        frozen, in_names, out_names, renames = tf_loader.from_saved_model(
            str(local), None, None, tag="serve", signatures=[key], return_tensors_to_rename=True)
        return frozen, in_names, out_names, renames, "frozen from the TF2 object graph"
    except Exception as v2_error:
        in_names = [signature.inputs[k].name for k in signature.inputs]
        out_names = [signature.outputs[k].name for k in signature.outputs]
        renames = {signature.inputs[k].name: k for k in signature.inputs}
        renames |= {signature.outputs[k].name: k for k in signature.outputs}
        try:
            frozen = tf_loader.freeze_session(session, input_names=in_names, output_names=out_names)
        except Exception as err:
            raise InvalidInputError(f"tf2onnx cannot freeze {local.name}'s {key} signature (TF2: "
                                    f"{base.first_line(v2_error)}; TF1: {base.first_line(err)})",
                                    field="model.uri") from None
        return frozen, in_names, out_names, renames, "frozen from the TF1 graph; its TF2 object graph does not load"


class TensorFlow(Framework):
    name = "tensorflow"
    summary = "a TensorFlow SavedModel folder, converted to ONNX with tf2onnx from its serving_default signature"
    modules = ("tensorflow", "tf2onnx")
    extra = "tensorflow"

    def recognizes(self, path: Path) -> bool:
        return path.is_dir() and (path / "saved_model.pb").exists()

    def convert(self, local: Path, workdir: Path, model: ModelSpec) -> Converted:
        base.quiet_tensorflow()
        import tensorflow as tf
        from tf2onnx import convert, tf_loader

        if not self.recognizes(local):
            raise InvalidInputError(f"{local.name} is not a SavedModel folder (no saved_model.pb)", field="model.uri")
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            try:
                meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(local))
            except Exception as err:
                raise InvalidInputError(f"{local.name} does not load as a SavedModel with the 'serve' tag "
                                        f"({base.first_line(err)})", field="model.uri") from None
            names = [k for k in meta.signature_def if not k.startswith("_")]
            if not names:
                raise InvalidInputError(f"{local.name} has no serving signature", field="model.uri")
            key = SIGNATURE if SIGNATURE in names else names[0]
            signature = meta.signature_def[key]
        started = time.perf_counter()
        frozen, in_names, out_names, renames, how = _freeze(local, key, signature, session, tf_loader)
        out = workdir / "converted" / "model.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tf.Graph().as_default():
                convert.from_graph_def(frozen, input_names=in_names, output_names=out_names, opset=OPSET,
                                       tensors_to_rename=renames, output_path=str(out))
        except Exception as err:
            raise InvalidInputError(f"tf2onnx cannot convert {local.name}: {base.first_line(err)}",
                                    field="model.uri") from None
        route = (f"tf2onnx {base.versions('tf2onnx').get('tf2onnx', '?')} from the SavedModel's {key!r} signature "
                 f"({how}), opset {OPSET} ({time.perf_counter() - started:.1f} s)")
        import onnx

        graph_io = onnx.load(str(out), load_external_data=False).graph  # the signature's keys, in the graph's order
        loaded = SavedModel(local, session, signature, [i.name for i in graph_io.input],
                            [o.name for o in graph_io.output])
        return Converted(out, route, loaded, base.versions("tensorflow", "tensorflow-cpu", "tf2onnx"))


FRAMEWORK = TensorFlow()
