"""kompress: make ML models smaller, faster and cheaper to run.

The engine lives in :mod:`kompress.jobs` (folder ``jobs/``), the Kubernetes
operator in :mod:`kompress.operator` (folder ``operator/``).
"""

__version__ = "0.1.0"
