"""What a model is for: one module per task (embedding, classification, generic), each a `Task` (base.py)
listed in registry.py. A task says how a Hugging Face folder is exported for it, how its outputs become one
vector per sample, which quality figures it reports, which quality metric its drop is measured on and which
gates it accepts. May import io.data and report.model; never spec (the spec reads the registry)."""
