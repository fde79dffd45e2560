"""Measuring a variant as it is served: sessions through the runtime registry, outputs on the data, quality
through the task, interleaved timing, energy meters, peak memory. May import io, runtimes, tasks, report.model,
spec and gates; never techniques, search or the runner."""
