"""Compression engine: spec, techniques, evaluation, gates, report, registry."""
