"""Kubernetes operator for ModelOptimization resources: reconcile, create the engine Job, read its summary
(through the engine's report models), apply the gates, promote, patch status. It imports only the engine's
light core (spec, report models, gates, registry, storage) and never runs or opens a model."""
