"""What every runtime is to kompress: the protocol a runtime module implements, the session it opens, and
`Serving` (a runtime and the precision it computes in). Light on purpose: no runtime library is imported
here; each runtime module imports its own library inside its functions, so a missing optional install is
one clear line naming the extra."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from kompress.jobs.errors import InvalidInputError, RuntimeFailure

if TYPE_CHECKING:
    from kompress.jobs.techniques.traits import ModelTraits

STANDARD_ONNX = "onnx"
"""The graph dialect every ONNX reader takes: standard ONNX operators (QDQ and QOperator INT8 included)."""
ORT_CONTRIB = "onnx+com.microsoft"
"""ONNX with ONNX Runtime's contrib ops (fused Attention, QAttention, MatMulNBits): a technique that writes
them says so, and only a runtime that reads this dialect can serve its result."""


class TensorArg(Protocol):
    """An input or output as a session describes it: name and shape (a dynamic dimension is a string)."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> Sequence[int | str | None]: ...


class Session(Protocol):
    """A model ready to run, with ONNX Runtime's InferenceSession interface (the small part measurement uses),
    so every timing treats every runtime the same way."""

    def run(self, output_names: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...
    def get_inputs(self) -> Sequence[TensorArg]: ...
    def get_outputs(self) -> Sequence[TensorArg]: ...


@dataclass(frozen=True)
class SessionTarget:
    """Where a session runs: the device, the intra-op threads and the inference precision (None: the
    graph's own types)."""

    device: str
    threads: int
    precision: str | None = None


@dataclass(frozen=True)
class ServingLayout:
    """How a registry version holds a model this runtime serves."""

    graph: str
    """The graph's file name in a version (model.onnx, model.xml)."""
    companion: str
    """The file that goes with the graph (external data, IR weights)."""
    companion_suffix: str
    """How a source file is recognised as the companion (.data, .bin)."""
    format: str
    """The served format's name in the report and the manifest (onnx, openvino-ir)."""


class Runtime:
    """One inference runtime. Subclasses set the class attributes and implement `open`; the rest has
    defaults that suit a runtime reading standard ONNX on the CPU. Register an instance with
    `kompress.jobs.runtimes.register`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    """One line for the spec's description of target.runtime."""
    modules: ClassVar[tuple[str, ...]] = ()
    """Python modules it needs, its own library first (checked with find_spec, never imported to check; the
    memory probe loads the first before its baseline reading)."""
    extra: ClassVar[str] = ""
    """The kompress-jobs extra that installs them."""
    libraries: ClassVar[tuple[str, ...]] = ()
    """Distributions whose versions the report's environment records."""
    devices: ClassVar[frozenset[str]] = frozenset({"cpu"})
    precisions: ClassVar[tuple[str, ...]] = ()
    """Inference precisions it can be asked for (the first is the default); () = the graph's own types."""
    reads: ClassVar[frozenset[str]] = frozenset({STANDARD_ONNX})
    """Graph dialects it loads (a technique that writes another dialect cannot be served by it)."""
    exports: ClassVar[frozenset[str]] = frozenset()
    """spec.export formats it can write beside the served model."""
    static_quantizer: ClassVar[str] = "onnxruntime"
    """quantize backend `auto` picks for static INT8 of a model this runtime serves."""
    layout: ClassVar[ServingLayout] = ServingLayout("model.onnx", "model.onnx.data", ".data", "onnx")
    reference: ClassVar[bool] = False
    """The runtime a baseline is measured with when none is named (exactly one registered runtime)."""
    catalog_recipes: ClassVar[bool] = False
    """Whether the technique catalog's built-in recipes are searched on it (they may hold steps only the
    reference runtime reads; a runtime adds its own through `search_recipes`)."""

    # ------------------------------------------------------------------ install

    def missing_modules(self) -> list[str]:
        return [m for m in self.modules if importlib.util.find_spec(m) is None]

    def installed(self) -> bool:
        return not self.missing_modules()

    def require(self, what: str, *, field: str | None = None) -> None:
        """A one-line InvalidInputError (exit 2) when `what` needs this runtime and this install lacks it."""
        missing = self.missing_modules()
        if missing:
            raise InvalidInputError(
                f"{what} needs the {self.name} runtime (extra `{self.extra}`: kompress-jobs[{self.extra}], in "
                f"[engine] and the full image); this install has no {', '.join(missing)}", field=field)

    # ------------------------------------------------------------------ precision

    def precision(self, asked: str | None) -> str | None:
        """The precision a session computes in: the asked one, else the runtime's default (None when the
        runtime runs the graph's own types)."""
        if not self.precisions:
            return None
        return asked or self.precisions[0]

    # ------------------------------------------------------------------ sessions

    def open(self, path: Path, target: SessionTarget, *, profile_prefix: str | None = None) -> Session:
        raise NotImplementedError

    def served_model(self, onnx_path: Path, workdir: Path, precision: str | None) -> Path:
        """The file this runtime serves for an ONNX model (an ONNX runtime serves it as is)."""
        return onnx_path

    def parameters(self, path: Path) -> int | None:
        """Weight elements in a served model file (None: not counted for this format)."""
        return None

    def peak_memory(self, path: Path, feeds: Mapping[str, np.ndarray], target: SessionTarget) -> tuple[int, str]:
        """Peak memory to load the model and run `feeds`, in a fresh process (`memprobe`, which calls
        `probe_memory` there), and whose memory it is: the GPU's on a GPU target (where NVML reads it), else
        the host's resident set."""
        with tempfile.TemporaryDirectory() as tmp:
            npz = Path(tmp) / "feeds.npz"
            np.savez(npz, **dict(feeds))  # type: ignore[arg-type]
            cmd = [sys.executable, "-m", "kompress.jobs.runtimes.memprobe", str(path), str(npz), str(target.threads),
                   target.device, self.name, *((target.precision,) if target.precision else ())]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            raise RuntimeFailure(f"memory probe failed for {path.name}: {proc.stderr.strip().splitlines()[-1:]}")
        probe = json.loads(proc.stdout)
        if "gpuBytes" in probe:
            return int(probe["gpuBytes"]), "gpu"
        return int(probe["peakBytes"]), "host"

    def probe_memory(self, path: Path, feeds: Mapping[str, np.ndarray], target: SessionTarget) -> None:
        """Load and run the model in this (fresh) process; the memory probe reads the resident set around it."""
        session = self.open(path, target)
        for _ in range(3):
            session.run(None, dict(feeds))

    def profile_ops(self, path: Path, feeds: Mapping[str, np.ndarray], target: SessionTarget,
                    runs: int) -> dict[str, float] | None:
        """Mean kernel time per call (microseconds) per op type, largest first; None when the runtime has no
        per-op profiler."""
        return None

    def placement(self, path: Path, feeds: Mapping[str, np.ndarray], target: SessionTarget) -> Any:
        """Which device ran each node (a report Placement), where the runtime can say; None otherwise."""
        return None

    # ------------------------------------------------------------------ serving

    def triton_backend(self, precision: str | None) -> dict[str, Any]:
        """The config.pbtxt fields that pick this runtime's Triton backend (and its parameters)."""
        raise NotImplementedError

    def export(self, fmt: str, model: Path, out_dir: Path, feeds: Mapping[str, np.ndarray]) -> Any:
        """Write spec.export `fmt` beside the served model; returns a report ExportReport."""
        raise InvalidInputError(f"export format {fmt} is not written by runtime {self.name}", field="export.format")

    def export_files(self) -> tuple[str, ...]:
        """Names of every file `export` may write (cleared from an output folder before a run)."""
        return ()

    # ------------------------------------------------------------------ search

    def search_recipes(self, traits: ModelTraits, *, pinned: bool) -> list[dict[str, Any]]:
        """Candidates (as the spec writes them) this runtime adds to a built-in search beyond the catalog's;
        `pinned`: several runtimes are searched, so each candidate names its runtime."""
        return []

    def expected_gain(self, precision: str | None, quantizes: bool, objective: str, traits: ModelTraits) -> float:
        """Prior gain of serving with this runtime at `precision` relative to the reference runtime (orders
        trials only; measurements decide)."""
        return 1.0
