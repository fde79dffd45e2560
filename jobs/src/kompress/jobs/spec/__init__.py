"""The ModelOptimization spec: `sections.py` (what the engine reads: model, data, target, gates, ...),
`document.py` (the whole spec, techniques and search, parsing), `names.py` (runtime/task names checked
against their registries), `base.py` (SpecModel, the resource's identity). May import errors, the runtime
and task registries and the technique catalog; nothing that measures or runs a model."""
