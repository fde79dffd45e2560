"""Compression techniques. Each module registers itself on import; heavy libraries load lazily."""

from kompress.jobs.techniques import distill, fp16, graph_optimize, prune, qat, quantize  # noqa: F401  (registration)
from kompress.jobs.techniques.registry import StepResult, Technique, all_techniques, get, names, register

__all__ = ["StepResult", "Technique", "all_techniques", "get", "names", "register"]
