"""Compression techniques: a light catalog (`catalog.py`, configs in `configs.py`) that the spec, the CRD and
the search read, and one implementation module per technique, imported only when the technique is applied."""

from kompress.jobs.techniques.base import StepResult
from kompress.jobs.techniques.catalog import BERT_LIKE, Stage, Technique, all_techniques, get, names

__all__ = ["BERT_LIKE", "Stage", "StepResult", "Technique", "all_techniques", "get", "names"]
