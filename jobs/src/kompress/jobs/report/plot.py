"""The run report's picture (report.png): baseline vs optimized, drawn with matplotlib (an engine extra, so
it lives apart from the light report code the operator reads)."""

from __future__ import annotations

from pathlib import Path

from kompress.jobs.report.model import OptimizationReport


def plot(typed: OptimizationReport, path: Path) -> Path:
    """Baseline vs optimized bars (latency percentiles, size, throughput, energy): drawn from report.json's
    own form, so the picture shows exactly what the file says."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = typed.to_json()
    b, o = report["baseline"], report["optimized"]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    colors = ["#8c8c8c", "#1f77b4"]
    qs = ["p50", "p95", "p99"]
    x = range(len(qs))
    axes[0].bar([i - 0.2 for i in x], [b["latencySeconds"][q] * 1e3 for q in qs], 0.4, label="baseline",
                color=colors[0])
    axes[0].bar([i + 0.2 for i in x], [o["latencySeconds"][q] * 1e3 for q in qs], 0.4, label="optimized",
                color=colors[1])
    axes[0].set_xticks(list(x), qs)
    axes[0].set_title(f"latency (ms, batch {o['latencySeconds']['batchSize']})")
    axes[0].legend()
    panels = [
        ("size (MB)", b["sizeBytes"] / 1e6, o["sizeBytes"] / 1e6),
        (f"throughput (/s, batch {o['throughputBatchSize']})", b["throughputInferencesPerSecond"],
         o["throughputInferencesPerSecond"]),
        (f"energy/inference (mJ, {o['energy']['method']})", b["energy"]["joulesPerInference"] * 1e3,
         o["energy"]["joulesPerInference"] * 1e3),
    ]
    for ax, (title, bv, ov) in zip(axes[1:], panels, strict=True):
        ax.bar(["baseline", "optimized"], [bv, ov], color=colors)
        ax.set_title(title)
        for i, v in enumerate((bv, ov)):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"{report['name']}: speedup x{report['comparison']['speedup']:.2f}, "
                 f"size x{report['comparison']['sizeReduction']:.2f}, verdict {report['outcome']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
