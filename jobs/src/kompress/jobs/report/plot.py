"""The run report's picture (report.png): baseline vs optimized, drawn with matplotlib (an engine extra, so
it lives apart from the light report code the operator reads), and the search's trials (search.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic.alias_generators import to_camel

from kompress.jobs.report.model import SET_FIGURES, OptimizationReport, Trial


def plot(typed: OptimizationReport, path: Path) -> Path:
    """Baseline vs optimized bars (latency percentiles, size, throughput, energy): drawn from report.json's
    own form, so the picture shows exactly what the file says."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = typed.to_json()
    b, o = report["baseline"], report["optimized"]
    if "generation" in o and "generation" in b:
        return _plot_generation(report, path)
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
    _pairs(axes[1:], panels, ("baseline", "optimized"))
    fig.suptitle(f"{report['name']}: speedup x{report['comparison']['speedup']:.2f}, "
                 f"size x{report['comparison']['sizeReduction']:.2f}, verdict {report['outcome']}")
    return _save(fig, path)




def slice_plot(typed: OptimizationReport, path: Path) -> Path | None:
    """Each evaluation set's figures as points with their confidence intervals, one panel per figure, the
    gate's threshold as a dashed line and the worst set in red (slices.png). None without slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    blocks = typed.blocks()
    if blocks is None or not blocks[1].slices:
        return None
    result = blocks[1]
    sets = [s.to_json() for s in result.evaluation_sets()]
    thresholds = typed.spec.get("gates", {})
    panels = [(to_camel(f), fig) for f, fig in SET_FIGURES.items() if sum(to_camel(f) in s for s in sets) > 1
              and not (f == "accuracy_drop" and result.quality_metric == "perplexityIncrease")]  # the same figure
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.45 * len(sets) + 1.6), squeeze=False)
    for ax, (key, (title, higher, gate)) in zip(axes[0], panels, strict=True):
        values = [s[key] for s in sets if key in s]
        worst = min(values) if higher else max(values)
        for row, s in enumerate(sets):
            if key not in s:
                continue
            low, high = s.get("intervals", {}).get(key, [s[key], s[key]])
            color = "#b00" if s[key] == worst else "#1f77b4"
            ax.errorbar([s[key]], [row], xerr=[[s[key] - low], [high - s[key]]], fmt="o", color=color, capsize=3)
        if gate and gate in thresholds:
            ax.axvline(thresholds[gate], color="#555", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(sets)), [s["name"] for s in sets])
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.invert_yaxis()
        ax.set_title(title + (f" (gate {thresholds[gate]:g})" if gate and gate in thresholds else ""), fontsize=9)
    level = result.interval_level or 0.95
    fig.suptitle(f"{typed.name}: quality by evaluation set, {level:.0%} intervals (the worst set of each figure in "
                 "red)", fontsize=10)
    return _save(fig, path)


def _pairs(axes: Any, panels: list[tuple[str, float, float]], names: tuple[str, str]) -> None:
    """One bar pair per panel (title, baseline value, optimized value), values written on the bars."""
    for ax, (title, bv, ov) in zip(axes, panels, strict=True):
        ax.bar(list(names), [bv, ov], color=["#8c8c8c", "#1f77b4"])
        ax.set_title(title, fontsize=9)
        for i, v in enumerate((bv, ov)):
            ax.annotate(f"{v:.4g}", (i, v), ha="center", va="bottom", fontsize=8)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_generation(report: dict[str, Any], path: Path) -> Path:
    """A language model: decode tokens/s, time to first token, size and perplexity, float vs optimized."""
    import matplotlib.pyplot as plt

    b, o = report["baseline"], report["optimized"]
    panels = [
        ("decode (tok/s, batch 1)", b["generation"]["decodeTokensPerSecond"], o["generation"]["decodeTokensPerSecond"]),
        (f"time to first token (ms, {o['generation']['promptTokens']}-token prompt)",
         b["generation"]["timeToFirstTokenSeconds"] * 1e3, o["generation"]["timeToFirstTokenSeconds"] * 1e3),
        ("size (MB)", b["sizeBytes"] / 1e6, o["sizeBytes"] / 1e6),
        ("perplexity", b["language"]["perplexity"], o["language"]["perplexity"]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    _pairs(axes, panels, ("float", "optimized"))
    cmp = report["comparison"]
    fig.suptitle(f"{report['name']}: decode x{cmp['speedup']:.2f}, perplexity {cmp.get('perplexityIncrease', 0):+.1%}, "
                 f"size x{cmp['sizeReduction']:.2f}, verdict {report['outcome']}")
    return _save(fig, path)


def _generation_search_plot(points: list[Trial], path: Path) -> Path:
    """Perplexity increase against decode speedup (each over its runtime's float model) for every trial; the
    runtimes' own default recipes (the peers' defaults) drawn as stars."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    xs = [t.metrics.speedup or 0.0 for t in points]  # type: ignore[union-attr]
    ys = [100 * (t.metrics.perplexity_increase or 0.0) for t in points]  # type: ignore[union-attr]
    for t, x, y in zip(points, xs, ys, strict=True):
        color = "#2ca02c" if t.status == "passed" else "#d62728"
        peer = "default" in t.name
        ax.scatter([x], [y], s=160 if t.chosen or peer else 45, color=color, marker="*" if peer else "o",
                   edgecolors="black" if t.chosen else "none", zorder=3)
        ax.annotate(t.name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front, best = [], float("inf")
    for x, y in sorted(zip(xs, ys, strict=True), key=lambda p: -p[0]):
        if y < best:
            front.append((x, y))
            best = y
    ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="#888", zorder=1, label="Pareto front")
    ax.set_xlabel("decode speedup over the float model (same runtime)")
    ax.set_ylabel("perplexity increase (%)")
    ax.set_title("trials (green: passes the gates; large: chosen; star: the runtime's default recipe)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def search_plot(trials: list[Trial], path: Path) -> Path | None:
    """Quality vs latency of every measured trial, the Pareto front drawn, the chosen one marked."""
    points = [t for t in trials if t.metrics]
    if not points:
        return None
    if all(t.metrics and t.metrics.perplexity is not None for t in points):
        import matplotlib

        matplotlib.use("Agg")
        return _generation_search_plot(points, path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_acc = all(t.metrics.accuracy is not None for t in points)  # type: ignore[union-attr]
    metric = "accuracy" if use_acc else "cosine_similarity"
    xs = [t.metrics.latency_p50_seconds * 1e3 for t in points]  # type: ignore[union-attr,operator]
    ys = [getattr(t.metrics, metric) for t in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t, x, y in zip(points, xs, ys, strict=True):
        color = "#2ca02c" if t.status == "passed" else "#d62728"
        ax.scatter([x], [y], s=120 if t.chosen else 40, color=color,
                   edgecolors="black" if t.chosen else "none", zorder=3)
        ax.annotate(t.name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front, best_y = [], -float("inf")
    for x, y in sorted(zip(xs, ys, strict=True)):
        if y > best_y:
            front.append((x, y))
            best_y = y
    ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="#888", zorder=1, label="Pareto front")
    ax.set_xlabel("latency p50 (ms)")
    ax.set_ylabel("accuracy" if use_acc else "cosine similarity")
    ax.set_title("search trials (green: passes the gates; large: chosen)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

