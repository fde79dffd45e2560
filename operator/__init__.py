"""Kubernetes operator for ModelOptimization resources (see the operator issue).

It will import the engine's spec, report and registry code from :mod:`kompress.jobs`
and never run a model itself.
"""
