"""Where the baseline's time goes, per operator type, from ONNX Runtime's own profiler: what a search
quantizes and how much it can expect to gain follow from this profile, not from priors written for one
architecture (Amdahl: a recipe can only speed up the share of time spent in the ops it changes)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from kompress.jobs.runtimes.onnxruntime import open_session
from kompress.jobs.spec.document import TargetSpec

PROFILE_RUNS = 20


def profile(path: Path, feeds: dict[str, np.ndarray], target: TargetSpec, runs: int = PROFILE_RUNS) -> dict[str, float]:
    """Share of node time per op type over `runs` profiled calls (after one unprofiled warm-up in the same
    session, whose events are dropped), largest first; shares sum to 1."""
    totals = op_times(path, feeds, target, runs)
    whole = sum(totals.values()) or 1.0
    return {op: round(d / whole, 4) for op, d in totals.items()}


def op_times(path: Path, feeds: dict[str, np.ndarray], target: TargetSpec,
             runs: int = PROFILE_RUNS) -> dict[str, float]:
    """Mean kernel time per call (microseconds) per op type, largest first (see `profile`)."""
    with tempfile.TemporaryDirectory() as tmp:
        session = open_session(path, target, profile_prefix=str(Path(tmp) / "profile"))
        for _ in range(runs + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_run: list[dict[str, float]] = []
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            per_run.append({})
        elif event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time") and per_run:
            op = event["args"].get("op_name", "?")
            per_run[-1][op] = per_run[-1].get(op, 0.0) + float(event.get("dur", 0))
    counted = per_run[1:] or per_run  # the first run warms caches and allocators
    totals: dict[str, float] = {}
    for run in counted:
        for op, dur in run.items():
            totals[op] = totals.get(op, 0.0) + dur
    return {op: d / max(len(counted), 1) for op, d in sorted(totals.items(), key=lambda kv: -kv[1])}
