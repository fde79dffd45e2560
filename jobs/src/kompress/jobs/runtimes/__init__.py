"""Runtimes a model is measured and served with: one module per runtime (onnxruntime, openvino), each a
`Runtime` (base.py) listed in registry.py. May import errors, cpu, io.model_files and report.model; never
spec, measure or anything above them (the spec reads the registry)."""
