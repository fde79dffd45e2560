"""The serving registry: a versioned Triton/KServe model repository, laid out by the serving runtime, with
atomic, idempotent promotion. May import io.storage, report.model, spec sections and the runtime registry."""
