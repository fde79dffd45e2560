"""The Argo CD health check (deploy/argocd/health-modeloptimization.lua) on sample ModelOptimizations.

Runs the script with lupa on Lua 5.1 (Argo CD embeds gopher-lua, a Lua 5.1), the way Argo CD does: the live
object as the global `obj`, the script's return value as {status, message}.
"""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "argocd" / "health-modeloptimization.lua"
README = ROOT / "deploy" / "argocd" / "README.md"
NOW = "2026-01-01T00:00:00Z"


def _runtime() -> Any:
    for name in ("lupa.lua51", "lupa.luajit21", "lupa.luajit20", "lupa"):
        try:
            return importlib.import_module(name).LuaRuntime(unpack_returned_tuples=True)
        except ImportError:
            continue
    pytest.fail("the lupa package is missing: pip install -e '.[dev]' (or pip install lupa)")


@pytest.fixture(scope="module")
def lua() -> Any:
    return _runtime()


def to_lua(lua: Any, value: Any) -> Any:
    """Python dicts/lists -> Lua tables, recursively (lists 1-indexed, as Argo CD's JSON decoding gives)."""
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            table[key] = to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for i, item in enumerate(value, start=1):
            table[i] = to_lua(lua, item)
        return table
    return value


def health(lua: Any, obj: dict[str, Any]) -> tuple[str, str]:
    run = lua.eval(f"function(obj)\n{SCRIPT.read_text()}\nend")
    result = run(to_lua(lua, obj))
    return result["status"], result["message"]


def cond(ctype: str, status: str, message: str = "", reason: str = "Because") -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": NOW}


def mopt(status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kompress.dev/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": "minilm-int8", "namespace": "ml", "generation": generation},
        "spec": {"model": {"uri": "s3://models/minilm/"}, "data": {"uri": "s3://data/x.npz"},
                 "techniques": [{"quantize": {}}]},
    }
    if status is not None:
        obj["status"] = status
    return obj


CASES = [
    ("no status yet", mopt(), "Progressing", "Waiting for the kompress operator"),
    ("pending", mopt({"observedGeneration": 1, "phase": "Pending",
                      "conditions": [cond("Accepted", "True", "spec accepted")]}), "Progressing", "spec accepted"),
    ("running", mopt({"observedGeneration": 1, "phase": "Running",
                      "conditions": [cond("Accepted", "True", "ok"),
                                     cond("JobRunning", "True", "Job minilm-int8-5f2c running")]}),
     "Progressing", "Job minilm-int8-5f2c running"),
    ("evaluating", mopt({"observedGeneration": 1, "phase": "Evaluating",
                         "conditions": [cond("Ready", "False", "evaluating gates")]}),
     "Progressing", "evaluating gates"),
    ("succeeded", mopt({"observedGeneration": 1, "phase": "Succeeded",
                        "conditions": [cond("Ready", "True", "promoted to s3://registry/minilm/3")]}),
     "Healthy", "promoted to s3://registry/minilm/3"),
    ("ready without phase", mopt({"observedGeneration": 1, "conditions": [cond("Ready", "True", "done")]}),
     "Healthy", "done"),
    ("failed", mopt({"observedGeneration": 1, "phase": "Failed", "message": "runtime failure",
                     "conditions": [cond("Ready", "False", "Job failed 3 times: OOMKilled")]}),
     "Degraded", "Job failed 3 times: OOMKilled"),
    ("rejected", mopt({"observedGeneration": 1, "phase": "Rejected",
                       "conditions": [cond("GatesPassed", "False", "speedup 1.2 < minSpeedup 1.5")]}),
     "Degraded", "speedup 1.2 < minSpeedup 1.5"),
    ("failed, message only in status", mopt({"observedGeneration": 1, "phase": "Failed", "message": "bad model"}),
     "Degraded", "bad model"),
    ("stalled", mopt({"observedGeneration": 1, "phase": "Pending",
                      "conditions": [cond("Stalled", "True", "secret s3-credentials not found", "SecretMissing"),
                                     cond("Ready", "False", "waiting")]}),
     "Degraded", "secret s3-credentials not found"),
    ("stalled false is not degraded", mopt({"observedGeneration": 1, "phase": "Running",
                                            "conditions": [cond("Stalled", "False", "fine"),
                                                           cond("JobRunning", "True", "running")]}),
     "Progressing", "running"),
    ("new generation not yet observed", mopt({"observedGeneration": 1, "phase": "Succeeded",
                                              "conditions": [cond("Ready", "True", "done")]}, generation=2),
     "Progressing", "generation 2"),
    ("old failure, new generation", mopt({"observedGeneration": 2, "phase": "Failed",
                                          "conditions": [cond("Ready", "False", "x")]}, generation=3),
     "Progressing", "generation 3"),
    ("empty status", mopt({}), "Progressing", ""),
]


@pytest.mark.parametrize(("obj", "want_status", "want_message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_health(lua: Any, obj: dict[str, Any], want_status: str, want_message: str) -> None:
    status, message = health(lua, obj)
    assert status == want_status, message
    assert want_message in message


def test_runs_on_lua_5_1(lua: Any) -> None:
    # Argo CD embeds gopher-lua (Lua 5.1): the script must not rely on newer syntax.
    assert tuple(lua.lua_version) == (5, 1)


def test_readme_snippet_is_the_script() -> None:
    body = textwrap.indent(SCRIPT.read_text().rstrip("\n"), "    ").replace("    \n", "\n")
    readme = README.read_text()
    assert "resource.customizations.health.kompress.dev_ModelOptimization: |" in readme
    assert body in readme, "deploy/argocd/README.md's argocd-cm snippet differs from health-modeloptimization.lua"
