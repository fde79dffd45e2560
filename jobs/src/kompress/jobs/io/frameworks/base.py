"""What a framework module gives: how to recognize its files, how to load them safely, how to convert the
loaded model to ONNX (and which route that took), and how to run the original on the evaluation rows."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.errors import first_line as first_line
from kompress.jobs.spec.sections import ModelSpec

OPSET = 17


class Loaded:
    """A model loaded in its own framework. `run` takes the inputs in the converted ONNX graph's input order
    and returns its outputs in the graph's output order (the converters keep both orders)."""

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    saved_model: Path | None = None
    """A TensorFlow SavedModel of the original (what the TFLite converter reads), when the framework has one."""
    tensor_names: tuple[list[str], list[str]] | None = None
    """The SavedModel signature's tensor names, inputs and outputs in the ONNX graph's order (what a TFLite model
    without a signature is matched by)."""


@dataclass
class Converted:
    """A framework model converted to ONNX: the graph, the route taken and the loaded original."""

    onnx_path: Path
    route: str
    """Which converter, and how (e.g. "tf2onnx 1.17.0 from the SavedModel's serving_default signature")."""
    original: Loaded
    versions: dict[str, str] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    """The ONNX graph's input and output names, in order (filled by `io.models.prepare`)."""
    reference: np.ndarray | None = None
    """The original's outputs on the main evaluation rows (the measured output), once checked."""

    def run_original(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The original framework's outputs on `rows` (keyed by the ONNX graph's input names), keyed by the
        graph's output names."""
        outs = self.original.run([rows[name] for name in self.inputs])
        return dict(zip(self.outputs, outs, strict=False))


class Framework:
    """One framework's models: `name` is its model.format."""

    name: ClassVar[str]
    summary: ClassVar[str]
    modules: ClassVar[tuple[str, ...]]
    """Python modules the load and the conversion need (checked with find_spec before anything is fetched)."""
    extra: ClassVar[str]
    """The kompress-jobs extra that installs them."""

    def recognizes(self, path: Path) -> bool:
        """Whether `path` (a file or folder) is this framework's model, by its name or layout."""
        raise NotImplementedError

    def require(self) -> None:
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            raise InvalidInputError(
                f"a {self.name} model needs the extra `{self.extra}` (pip install 'kompress-jobs[{self.extra}]', "
                f"or the image built with --build-arg ENGINE_EXTRAS=...,{self.extra}); this install has no "
                f"{', '.join(missing)}", field="model.format")

    def convert(self, local: Path, workdir: Path, model: ModelSpec) -> Converted:
        """Load `local` (as model.trustPickle and model.trustedTypes allow) and write its ONNX graph under
        `workdir`."""
        raise NotImplementedError


def versions(*dists: str) -> dict[str, str]:
    import importlib.metadata

    out = {}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def quiet_tensorflow() -> None:
    """TensorFlow's C++ INFO lines (oneDNN, CPU features) off, before its first import; the user's setting wins."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def as_float32(array: Any) -> np.ndarray:
    out = np.asarray(array)
    return out.astype(np.float32) if out.dtype == np.float64 else out
