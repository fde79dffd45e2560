"""Packaging: two src-layout distributions under the `kompress` namespace, one version, and an operator that
never imports an ML library (it depends on the engine's light core only)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ML_LIBRARIES = ("onnx", "onnxruntime", "torch", "transformers", "onnx2torch", "torch_pruning", "matplotlib", "sklearn")


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text())["project"]


def test_one_version() -> None:
    engine = _project(ROOT / "jobs" / "pyproject.toml")
    operator = _project(ROOT / "operator" / "pyproject.toml")
    root = _project(ROOT / "pyproject.toml")
    chart = yaml.safe_load((ROOT / "charts" / "kompress" / "Chart.yaml").read_text())
    version = engine["version"]
    assert operator["version"] == root["version"] == chart["appVersion"] == version
    assert f"kompress-jobs=={version}" in operator["dependencies"], "the operator pins the engine it reads"


def test_namespace_layout() -> None:
    """`kompress` is a namespace package spanning jobs/src and operator/src; no folder at the root shadows it
    or the standard library's `operator`."""
    assert not (ROOT / "kompress").exists()
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert not (ROOT / "jobs" / "src" / "kompress" / "__init__.py").exists()
    assert not (ROOT / "operator" / "src" / "kompress" / "__init__.py").exists()
    code = ("import operator, kompress.jobs, kompress.operator; "
            "assert operator.__file__.endswith('operator.py'), operator.__file__; "
            "print(sorted(kompress.__path__))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "jobs/src/kompress" in out and "operator/src/kompress" in out


def test_operator_imports_no_ml_library() -> None:
    """Everything the operator process loads (handlers, reconciler, the spec and report models, gates,
    registry) comes without onnx/onnxruntime/torch: the operator never runs or opens a model."""
    code = ("import sys, kompress.operator.handlers, kompress.operator.reconciler, kompress.operator.crd; "
            f"print(','.join(m for m in {ML_LIBRARIES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the operator imported {out.stdout.strip()}"


def test_engine_extra_is_onnx_plus_torch_plus_openvino() -> None:
    """`engine` (what `make install` and the full image take) is every half; `onnx` (the slim image) has no
    PyTorch library and no OpenVINO; `openvino` needs no PyTorch."""
    extras = _project(ROOT / "jobs" / "pyproject.toml")["optional-dependencies"]
    assert extras["engine"] == ["kompress-jobs[onnx,torch,openvino]"]

    def names(extra: str) -> set[str]:
        return {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in extras[extra]}

    assert {"onnx", "onnxruntime", "matplotlib"} <= names("onnx")
    assert not names("onnx") & {"torch", "transformers", "torch-pruning", "onnx2torch", "torchvision", "openvino",
                                "nncf"}
    assert {"openvino", "nncf"} <= names("openvino") and "torch" not in names("openvino")


def test_torch_technique_without_torch_fails_in_one_line(tmp_path: Path) -> None:
    """Where only the `onnx` extra is installed (the slim image), a spec that trains says which extra/image it
    needs, with exit code 2 and no traceback (sys.modules[name] = None hides an installed module)."""
    code = ("import sys; from kompress.jobs.errors import TORCH_MODULES\n"
            "for m in TORCH_MODULES: sys.modules[m] = None\n"
            "from kompress.jobs.cli import main\n"
            f"sys.exit(main(['run', '-q', 'examples/digits-qat.yaml', '-o', {str(tmp_path / 'out')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "technique 'qat' needs the full engine image (extra `torch`" in out.stderr
    assert "Traceback" not in out.stderr
