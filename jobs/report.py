"""Run reports: report.json (the contract the operator reads), report.html (for people, with a plot),
a compact summary for a Job's termination message, and the console table."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

SUMMARY_LIMIT = 4000  # Kubernetes caps a termination message at 4096 bytes


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False, default=str))
    tmp.replace(path)
    return path


def _metrics_block(m: dict[str, Any]) -> dict[str, Any]:
    quality = m.get("quality") or {}
    fidelity = quality.get("fidelity") or {}
    block = {
        "latencyP50Seconds": m["latencySeconds"]["p50"], "latencyP95Seconds": m["latencySeconds"]["p95"],
        "latencyP99Seconds": m["latencySeconds"]["p99"], "throughputPerSecond": m["throughputInferencesPerSecond"],
        "sizeBytes": m["sizeBytes"], "peakMemoryBytes": m.get("peakMemoryBytes"),
        "energyPerInferenceJoules": m["energy"]["joulesPerInference"], "accuracy": quality.get("accuracy"),
        "cosineSimilarity": fidelity.get("cosineSimilarityMean", 1.0 if not fidelity else None),
    }
    return {k: v for k, v in block.items() if v is not None}


def status_blocks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat baseline/result blocks: the resource's status, the gates' input and the termination summary."""
    if not report.get("optimized"):
        return {}
    cmp = report["comparison"]
    result = _metrics_block(report["optimized"]) | {
        "speedup": cmp["speedup"], "sizeReduction": cmp["sizeReduction"], "accuracyDrop": cmp["accuracyDrop"],
        "energyMethod": report["optimized"]["energy"]["method"],
    }
    if report.get("runEnergy"):
        result["runEnergyJoules"] = report["runEnergy"]["joules"]
    if report.get("durationSeconds") is not None:
        result["durationSeconds"] = report["durationSeconds"]
    return {"baseline": _metrics_block(report["baseline"]), "result": result}


def summary(report: dict[str, Any]) -> str:
    """The Job's termination message (at most 4 KiB): outcome, metrics for status, where the report is."""
    gates = report.get("gates") or {}
    promo = report.get("promotion") or {}
    out: dict[str, Any] = {
        "outcome": report.get("outcome"), "message": report.get("message"), "errorKind": report.get("errorKind"),
        **status_blocks(report), "gatesPassed": gates.get("passed"),
        "failures": gates.get("failures", [])[:5], "promotedTo": promo.get("uri"),
        "reportUri": (report.get("artifacts") or {}).get("reportJson"),
        "modelUri": (report.get("artifacts") or {}).get("model"),
    }
    text = json.dumps(out, default=str)
    if len(text) > SUMMARY_LIMIT:
        out["message"] = str(out["message"])[:500]
        out["failures"] = [f[:200] for f in out["failures"]]
        text = json.dumps(out, default=str)[:SUMMARY_LIMIT]
    return text


SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Equal", "Where", "Slice",
                       "Cast", "ConstantOfShape", "Range", "Expand", "Size", "Constant"})
"""Ops that ONNX Runtime places on the CPU on purpose when they compute shapes (a GPU run reports them, but
they move a few integers, not activations)."""


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms"


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    b, o = report["baseline"], report["optimized"]
    fid = o["quality"]["fidelity"]
    rows = [
        ("latency p50", _ms(b["latencySeconds"]["p50"]), _ms(o["latencySeconds"]["p50"])),
        ("latency p95", _ms(b["latencySeconds"]["p95"]), _ms(o["latencySeconds"]["p95"])),
        (f"throughput (batch {o['throughputBatchSize']})", f"{b['throughputInferencesPerSecond']:.1f}/s",
         f"{o['throughputInferencesPerSecond']:.1f}/s"),
        ("size", _mb(b["sizeBytes"]), _mb(o["sizeBytes"])),
        (f"peak memory ({o.get('peakMemoryOf', 'host')})", _mb(b["peakMemoryBytes"]), _mb(o["peakMemoryBytes"])),
        (f"energy/inference ({o['energy']['method']})", f"{b['energy']['joulesPerInference']:.4f} J",
         f"{o['energy']['joulesPerInference']:.4f} J"),
    ]
    if "accuracy" in o["quality"]:
        rows.append(("accuracy", f"{b['quality']['accuracy']:.4f}", f"{o['quality']['accuracy']:.4f}"))
    rows.append(("fidelity (cosine mean/min)", "1.0000", f"{fid['cosineSimilarityMean']:.4f} / "
                 f"{fid['cosineSimilarityMin']:.4f}"))
    return rows


def console_table(report: dict[str, Any]) -> str:
    if not report.get("optimized"):
        return f"verdict: {str(report.get('outcome')).upper()}"
    rows = [("metric", "baseline", "optimized"), *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    cmp = report["comparison"]
    lines.append("")
    lines.append(f"speedup x{cmp['speedup']:.2f}   size reduction x{cmp['sizeReduction']:.2f}   "
                 f"{cmp['qualityMetric']} drop {cmp['accuracyDrop']:.4f}")
    for g in report["gates"]["results"]:
        lines.append(f"gate {'PASS' if g['passed'] else 'FAIL'}  {g['message']}")
    for name in ("baseline", "optimized"):
        placement = report[name].get("placement") or {}
        compute = {op: n for op, n in placement.get("cpuOps", {}).items() if op not in SHAPE_OPS}
        if compute:
            ops = ", ".join(f"{op} x{n}" for op, n in list(compute.items())[:5])
            lines.append(f"{name}: {sum(compute.values())} compute nodes of "
                         f"{sum(placement['nodesByProvider'].values())} ran on the CPU provider ({ops})")
    if report.get("search"):
        search = report["search"]
        lines.append(f"search: {len(search['trials'])} trial(s), {search['stopped']}")
        for t in search["trials"]:
            gain = "" if t.get("gain") is None else f"{t['gain']:.2f}x"
            lines.append(f"  {'*' if t.get('chosen') else ' '} {t['name']:<36} {gain:>7}  {t['status']}")
    promo = report.get("promotion") or {}
    verdict = report["outcome"].upper()
    where = f" -> {promo['uri']}" if promo.get("uri") else (f" ({promo['reason']})" if promo.get("reason") else "")
    lines.append(f"verdict: {verdict}{where}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _search_section(report: dict[str, Any], search_plot: Path | None) -> list[str]:
    esc = html.escape
    search = report["search"]
    parts = [f"<h2>Search ({esc(search['objective'])})</h2><p>{len(search['trials'])} of {search['candidates']} "
             f"candidates tried; {esc(search['stopped'])}.</p>"]
    if search_plot and search_plot.exists():
        data = base64.b64encode(search_plot.read_bytes()).decode()
        parts.append(f"<img alt='trials: quality vs latency' src='data:image/png;base64,{data}'>")
    parts.append("<table><tr><th>trial</th><th>expected</th><th>gain</th><th>latency p50</th><th>size</th>"
                 "<th>quality</th><th>verdict</th></tr>")
    for t in search["trials"]:
        m = t.get("metrics") or {}
        quality = (f"accuracy {m['accuracy']:.4f}" if "accuracy" in m
                   else f"cosine {m['cosineSimilarity']:.4f}" if "cosineSimilarity" in m else "")
        verdict = t["status"] + (" (chosen)" if t.get("chosen") else "")
        why = "; ".join(t.get("failures") or []) or t.get("message") or ""
        parts.append(f"<tr><td>{esc(t['name'])}</td><td>{t['expectedGain']:.2f}x</td>"
                     f"<td>{'' if t.get('gain') is None else format(t['gain'], '.2f') + 'x'}</td>"
                     f"<td>{_ms(m['latencyP50Seconds']) if m else ''}</td>"
                     f"<td>{_mb(m['sizeBytes']) if m else ''}</td><td>{esc(quality)}</td>"
                     f"<td class='{'pass' if t['status'] == 'passed' else 'fail'}'>{esc(verdict)}"
                     f"<br><small>{esc(why)}</small></td></tr>")
    parts.append("</table>")
    return parts


def write_html(report: dict[str, Any], plot_path: Path | None, path: Path,
               search_plot: Path | None = None) -> Path:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>kompress: {esc(report['name'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:4px 10px;"
             "border-bottom:1px solid #ddd;text-align:left}.pass{color:#080}.fail{color:#b00}</style></head><body>",
             f"<h1>{esc(report['name'])}: {esc(report['outcome'])}</h1>",
             f"<p>{esc(str(report.get('message') or ''))}</p>"]
    if report.get("optimized"):
        if plot_path and plot_path.exists():
            data = base64.b64encode(plot_path.read_bytes()).decode()
            parts.append(f"<img alt='baseline vs optimized' src='data:image/png;base64,{data}' width='100%'>")
        parts.append("<h2>Baseline vs optimized</h2><table><tr><th>metric</th><th>baseline</th>"
                     "<th>optimized</th></tr>")
        parts += [f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td></tr>" for a, b, c in table_rows(report)]
        parts.append("</table><h2>Gates</h2><table>")
        for g in report["gates"]["results"] or [{"passed": True, "message": "no gates set"}]:
            cls = "pass" if g["passed"] else "fail"
            parts.append(f"<tr><td class='{cls}'>{'PASS' if g['passed'] else 'FAIL'}</td>"
                         f"<td>{esc(g['message'])}</td></tr>")
        parts.append("</table>")
    if report.get("search"):
        parts += _search_section(report, search_plot)
    parts.append("<h2>Steps</h2><table><tr><th>technique</th><th>seconds</th><th>size</th><th>parameters</th>"
                 "<th>quality</th><th>speedup (quick)</th><th>details</th></tr>")
    for s in report.get("steps", []):
        fid = (s.get("quality") or {}).get("fidelity") or {}
        quality = " ".join(x for x in (
            f"accuracy {s['quality']['accuracy']:.4f}" if "accuracy" in (s.get("quality") or {}) else "",
            f"cosine {fid['cosineSimilarityMean']:.4f}" if fid else "") if x)
        parts.append(f"<tr><td>{esc(s['technique'])}</td><td>{s['durationSeconds']:.1f}</td>"
                     f"<td>{_mb(s['sizeBytes']) if 'sizeBytes' in s else ''}</td><td>{s.get('parameters', '')}</td>"
                     f"<td>{esc(quality)}</td>"
                     f"<td>{format(s['speedupVsBaseline'], '.2f') + 'x' if 'speedupVsBaseline' in s else ''}</td>"
                     f"<td><code>{esc(json.dumps(s['details'], default=str))}</code></td></tr>")
    parts.append("</table><h2>Provenance</h2><pre>")
    parts.append(esc(json.dumps({k: report.get(k) for k in ("model", "data", "environment", "promotion",
                                                             "runEnergy")}, indent=2, default=str)))
    parts.append("</pre></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
