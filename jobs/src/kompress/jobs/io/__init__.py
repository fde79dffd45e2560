"""Where bytes come from and go: storage (local, package://, S3), checkpoints, model files, the data (.npz,
feeds) and model formats (ONNX, Hugging Face and torch.export exported to ONNX). May import errors, cpu, the
task registry (how a Hugging Face folder is exported for a task) and spec sections; nothing that measures."""
