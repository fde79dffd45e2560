"""Compression engine: spec, techniques, evaluation, gates, report, registry."""

import importlib.metadata

__version__ = importlib.metadata.version("kompress-jobs")
