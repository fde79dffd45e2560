"""Rendering a run's report: report.json (the typed contract of report.model), report.html (for people,
with a plot), the compact summary for a Job's termination message, and the console table."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from pydantic.alias_generators import to_camel

from kompress.jobs.report.model import (
    SET_FIGURES,
    Artifacts,
    CopyCheck,
    OptimizationReport,
    RunSummary,
    SliceQuality,
)

SUMMARY_LIMIT = 4000  # Kubernetes caps a termination message at 4096 bytes


def write_json(report: OptimizationReport, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(report.to_json(), indent=2, sort_keys=False))
    tmp.replace(path)
    return path


def read_json(text: str | bytes) -> OptimizationReport:
    """A report.json, checked against this engine's report schema."""
    return OptimizationReport.model_validate_json(text)


def summary(report: OptimizationReport) -> str:
    """The Job's termination message (at most 4 KiB): outcome, metrics for status, where the report is."""
    blocks = report.blocks()
    artifacts = report.artifacts or Artifacts()
    out = RunSummary(outcome=report.outcome, message=report.message, error_kind=report.error_kind,
                     baseline=blocks[0] if blocks else None, result=blocks[1] if blocks else None,
                     gates_passed=report.gates.passed if report.gates else None,
                     failures=report.gates.failures[:5] if report.gates else [], warnings=report.warnings[:4],
                     promoted_to=report.promotion.uri if report.promotion else None,
                     report_uri=artifacts.report_json, model_uri=artifacts.model)
    text = json.dumps(out.to_json())
    if len(text) > SUMMARY_LIMIT:
        out.message = (out.message or "")[:500]
        out.failures = [f[:200] for f in out.failures]
        text = json.dumps(out.to_json())
    if len(text) > SUMMARY_LIMIT and out.result is not None and out.result.slices:
        # the operator re-applies the gates from this block: keep every slice that is the worst on some figure
        # (by point or interval bound), so a worst-slice or every-slice verdict there is the engine's
        out.result.slices = deciding_slices(out.result.slices)
        text = json.dumps(out.to_json())
    if len(text) > SUMMARY_LIMIT:  # never cut JSON mid-way: the operator parses it
        out.failures, out.message = out.failures[:1], (out.message or "")[:200]
        text = json.dumps(out.to_json())
    return text


def deciding_slices(slices: list[SliceQuality]) -> list[SliceQuality]:
    """The slices that are the worst on some figure, by its point or its interval's bound."""
    keep: set[str] = set()
    for field, (_, higher, _) in SET_FIGURES.items():
        key = to_camel(field)
        points = [(v, s.name) for s in slices if (v := getattr(s, field)) is not None]
        bounds = [(pair[0 if higher else 1], s.name) for s in slices if (pair := s.intervals.get(key))]
        keep |= {(min if higher else max)(scored)[1] for scored in (points, bounds) if scored}
    return [s for s in slices if s.name in keep]


SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Equal", "Where", "Slice",
                       "Cast", "ConstantOfShape", "Range", "Expand", "Size", "Constant"})
"""Ops that ONNX Runtime places on the CPU on purpose when they compute shapes (a GPU run reports them, but
they move a few integers, not activations)."""


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms"


def _generation_rows(b: Any, o: Any) -> list[tuple[str, str, str]]:
    """A language model's rows: decode speed and time to first token as served, perplexity and agreement with
    the float model on the same tokens."""
    bg, og, bl, ol = b.generation, o.generation, b.language, o.language
    rows = [
        ("runtime", _served(b), _served(o)),
        ("decode (batch 1)", f"{bg.decode_tokens_per_second:.1f} tok/s", f"{og.decode_tokens_per_second:.1f} tok/s"),
        (f"time to first token ({og.prompt_tokens}-token prompt)", _ms(bg.time_to_first_token_seconds),
         _ms(og.time_to_first_token_seconds)),
        ("size", _mb(b.size_bytes), _mb(o.size_bytes)),
        ("peak memory while generating", _mb(b.peak_memory_bytes or 0), _mb(o.peak_memory_bytes or 0)),
    ]
    if bg.energy_per_token_joules is not None and og.energy_per_token_joules is not None:
        rows.append((f"energy/token ({o.energy.method if o.energy else ''})", f"{bg.energy_per_token_joules:.4f} J",
                     f"{og.energy_per_token_joules:.4f} J"))
    rows += [
        (f"perplexity ({ol.evaluation_tokens} tokens)", f"{bl.perplexity:.3f}",
         f"{ol.perplexity:.3f} ({ol.perplexity / bl.perplexity - 1:+.2%}"
         + ("" if "perplexityIncrease" not in o.quality.intervals else
            " [{:+.2%}, {:+.2%}]".format(*o.quality.intervals["perplexityIncrease"])) + ")"),
        ("KL vs source (mean / p99)", f"{bl.kl_divergence_mean or 0:.2g}", f"{ol.kl_divergence_mean:.4f}"
         f"{_iv(o.quality.intervals, 'klDivergence')} / {ol.kl_divergence_p99:.3f}"),
        ("top-1 token agreement", f"{bl.token_agreement or 1:.4f}",
         f"{ol.token_agreement:.4f}{_iv(o.quality.intervals, 'tokenAgreement')}"),
        (f"greedy continuation agreement ({og.new_tokens} tokens)", "1.000",
         f"{ol.continuation_agreement or 0:.3f}"),
    ]
    return rows


def table_rows(report: OptimizationReport) -> list[tuple[str, str, str]]:
    b, o = report.baseline, report.optimized
    assert b is not None and o is not None
    if o.generation is not None and o.language is not None and b.generation and b.language:
        return _generation_rows(b, o)
    assert b.latency_seconds and o.latency_seconds
    assert b.energy and o.energy and o.quality.fidelity
    fid = o.quality.fidelity
    rows = [
        ("runtime", _served(b), _served(o)),
        ("latency p50", _ms(b.latency_seconds.p50), _ms(o.latency_seconds.p50)),
        ("latency p95", _ms(b.latency_seconds.p95), _ms(o.latency_seconds.p95)),
        (f"throughput (batch {o.throughput_batch_size})", f"{b.throughput_inferences_per_second:.1f}/s",
         f"{o.throughput_inferences_per_second:.1f}/s"),
        ("size", _mb(b.size_bytes), _mb(o.size_bytes)),
        (f"peak memory ({o.peak_memory_of or 'host'})", _mb(b.peak_memory_bytes or 0),
         _mb(o.peak_memory_bytes or 0)),
        (f"energy/inference ({o.energy.method})", f"{b.energy.joules_per_inference:.4f} J",
         f"{o.energy.joules_per_inference:.4f} J"),
    ]
    iv = o.quality.intervals
    if o.quality.accuracy is not None and b.quality.accuracy is not None:
        rows.append(("accuracy", f"{b.quality.accuracy:.4f}", f"{o.quality.accuracy:.4f}{_iv(iv, 'accuracy')}"))
    rows.append(("fidelity (cosine mean/min)", "1.0000", f"{fid.cosine_similarity_mean:.4f}"
                 f"{_iv(iv, 'cosineSimilarity')} / {fid.cosine_similarity_min:.4f}"))
    for label, value, key in (("top-1 agreement", fid.top1_agreement, "top1Agreement"),
                              ("nearest-neighbour agreement", fid.neighbor_agreement, "neighborAgreement"),
                              ("similarity rank correlation", fid.rank_correlation, "rankCorrelation"),
                              (f"worst class drop (class {fid.worst_class})", fid.class_accuracy_drop,
                               "classAccuracyDrop")):
        if value is not None:
            rows.append((label, "1.0000" if "drop" not in label else "0.0000", f"{value:.4f}{_iv(iv, key)}"))
    return rows


def _iv(intervals: dict[str, list[float]], key: str) -> str:
    """A figure's interval, as printed beside it."""
    pair = intervals.get(key)
    return f" [{pair[0]:.4f}, {pair[1]:.4f}]" if pair else ""


def slice_rows(report: OptimizationReport) -> list[list[str]]:
    """The quality table by evaluation set (main first, then data.slices), each figure with its interval:
    a header row, then one row per set. Empty when the run had no slices."""
    blocks = report.blocks()
    if blocks is None or not blocks[1].slices:
        return []
    result = blocks[1]
    main, *slices = result.evaluation_sets()
    main.samples = report.data.evaluation_samples if report.data else 0
    sets = [s.to_json() for s in (main, *slices)]
    shown = [(to_camel(f), fig.label) for f, fig in SET_FIGURES.items() if any(to_camel(f) in s for s in sets)
             and not (f == "accuracy_drop" and result.quality_metric == "perplexityIncrease")]  # the same figure
    level = result.interval_level or 0.95
    rows = [["set", "samples", *(f"{label} [{level:.0%} interval]" for _, label in shown)]]
    for s in sets:
        rows.append([s["name"], str(s["samples"]),
                     *(f"{s[k]:.4f}{_iv(s.get('intervals', {}), k)}" if k in s else "" for k, _ in shown)])
    return rows


NOT_SHOWN = frozenset({"python", "kompress-jobs", "boto3", "numpy", "onnxruntimeProviders"})


def _environment_line(report: OptimizationReport) -> str:
    """Where the figures hold: the CPU and the flags that decide its kernels, the GPU, threads, runtimes."""
    env = report.environment
    libs = ", ".join(f"{k} {v}" for k, v in env.libraries.items() if k not in NOT_SHOWN)
    return (f"measured on {env.cpu or env.machine} ({' '.join(env.cpu_flags) or 'no notable ISA flags'})"
            + (f", GPU {env.gpu}" if env.gpu else "") + f", {env.threads} threads" + (f"; {libs}" if libs else ""))


def _served(variant: Any) -> str:
    return " ".join(p for p in (variant.runtime, variant.precision) if p)


def _copy_figures(check: CopyCheck) -> str:
    q = check.quality
    parts = [f"cosine {q.cosine_similarity:.6f}" if q.cosine_similarity is not None else ""]
    if q.top1_agreement is not None:
        parts.append(f"top-1 agreement {q.top1_agreement:.4f}")
    if q.accuracy is not None and q.baseline_accuracy is not None:
        parts.append(f"{q.quality_metric or 'accuracy'} {q.accuracy:.4f} (original {q.baseline_accuracy:.4f})")
    parts.append(f"max |diff| {check.max_abs_difference:.3g} on {check.samples} rows")
    verdict = "; ".join(g.message for g in check.gates if not g.passed)
    return ", ".join(p for p in parts if p) + (f" -- FAILS {verdict}" if verdict else "")


def copy_lines(report: OptimizationReport) -> list[str]:
    """The conversion from the model's own framework and a tflite export, each against the original."""
    lines = []
    if report.conversion is not None:
        c = report.conversion
        lines.append(f"converted from {c.framework}: {c.route}; against the original: {_copy_figures(c.check)}")
    export = report.export
    if export is not None and export.check is not None:
        size = f"{export.size_bytes / 1e6:.2f} MB" if export.size_bytes else ""
        latency = f", p50 {_ms(export.latency_p50_seconds)} in {export.runtime}" if export.latency_p50_seconds else ""
        lines.append(f"export {export.format} {export.precision or ''} ({size}{latency}): {export.route}; against the "
                     f"original: {_copy_figures(export.check)}")
    return lines


def console_table(report: OptimizationReport) -> str:
    if report.optimized is None or report.comparison is None or report.gates is None:
        return "\n".join([*copy_lines(report), f"verdict: {report.outcome.upper()}"])
    rows = [("metric", "baseline", "optimized"), *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    cmp = report.comparison
    lines.append("")
    lines.append(f"speedup x{cmp.speedup:.2f}   size reduction x{cmp.size_reduction:.2f}   "
                 f"{cmp.quality_metric} drop {cmp.accuracy_drop:.4f}")
    lines += [f"gate {'PASS' if g.passed else 'FAIL'}  {g.message}" for g in report.gates.results]
    lines += copy_lines(report)
    lines += [f"NOTE: {n}" for n in report.gates.notes]
    lines += [f"WARNING: the optimized model is {w}" for w in report.warnings]
    by_set = slice_rows(report)
    if by_set:
        widths = [max(len(r[i]) for r in by_set) for i in range(len(by_set[0]))]
        lines += ["", "quality by evaluation set:", *("  ".join(c.ljust(widths[i]) for i, c in enumerate(r))
                                                     for r in by_set)]
    if report.optimized.quality.worst_cases:
        lines.append("most changed samples:")
        lines += [f"  {w.slice}#{w.row}  change {w.change:.4f}  "
                  + (f"{w.baseline} -> {w.optimized}" if w.baseline else w.optimized)
                  + (f"  {w.text[:80]!r}" if w.text else "") for w in report.optimized.quality.worst_cases[:5]]
    lines.append(_environment_line(report))
    for name, variant in (("baseline", report.baseline), ("optimized", report.optimized)):
        placement = variant.placement if variant else None
        compute = {op: n for op, n in (placement.cpu_ops if placement else {}).items() if op not in SHAPE_OPS}
        if placement and compute:
            ops = ", ".join(f"{op} x{n}" for op, n in list(compute.items())[:5])
            lines.append(f"{name}: {sum(compute.values())} compute nodes of "
                         f"{sum(placement.nodes_by_provider.values())} ran on the CPU provider ({ops})")
    if report.search:
        lines.append(f"search: {len(report.search.trials)} trial(s), {report.search.stopped}")
        for t in report.search.trials:
            gain = "" if t.gain is None else f"{t.gain:.2f}x"
            served = " ".join(p for p in (t.runtime, t.precision) if p)
            lines.append(f"  {'*' if t.chosen else ' '} {t.name:<36} {served:<16} {gain:>7}  {t.status}")
    promo = report.promotion
    where = (f" -> {promo.uri}" if promo and promo.uri else f" ({promo.reason})" if promo and promo.reason else "")
    lines.append(f"verdict: {report.outcome.upper()}{where}")
    return "\n".join(lines)


def _search_section(report: dict[str, Any], search_plot: Path | None) -> list[str]:
    esc = html.escape
    search = report["search"]
    parts = [f"<h2>Search ({esc(search['objective'])})</h2><p>{len(search['trials'])} of {search['candidates']} "
             f"candidates tried; {esc(search['stopped'])}.</p>"]
    if search_plot and search_plot.exists():
        data = base64.b64encode(search_plot.read_bytes()).decode()
        parts.append(f"<img alt='trials: quality vs latency' src='data:image/png;base64,{data}'>")
    parts.append("<table><tr><th>trial</th><th>runtime</th><th>expected</th><th>gain</th><th>latency p50</th>"
                 "<th>size</th>"
                 "<th>quality</th><th>verdict</th></tr>")
    for t in search["trials"]:
        m = t.get("metrics") or {}
        quality = (f"accuracy {m['accuracy']:.4f}" if "accuracy" in m
                   else f"cosine {m['cosineSimilarity']:.4f}" if "cosineSimilarity" in m
                   else f"perplexity {m['perplexity']:.3f} ({m.get('perplexityIncrease', 0):+.1%}), KL "
                        f"{m.get('klDivergence', 0):.4f}, top-1 {m.get('tokenAgreement', 0):.3f}, "
                        f"{m.get('decodeTokensPerSecond', 0):.1f} tok/s" if "perplexity" in m else "")
        verdict = t["status"] + (" (chosen)" if t.get("chosen") else "")
        why = "; ".join(t.get("failures") or []) or t.get("message") or ""
        served = " ".join(p for p in (t.get("runtime"), t.get("precision")) if p)
        parts.append(f"<tr><td>{esc(t['name'])}</td><td>{esc(served)}</td><td>{t['expectedGain']:.2f}x</td>"
                     f"<td>{'' if t.get('gain') is None else format(t['gain'], '.2f') + 'x'}</td>"
                     f"<td>{_ms(m['latencyP50Seconds']) if m else ''}</td>"
                     f"<td>{_mb(m['sizeBytes']) if m else ''}</td><td>{esc(quality)}</td>"
                     f"<td class='{'pass' if t['status'] == 'passed' else 'fail'}'>{esc(verdict)}"
                     f"<br><small>{esc(why)}</small></td></tr>")
    parts.append("</table>")
    return parts


def _quality_sections(typed: OptimizationReport, slice_plot: Path | None = None) -> list[str]:
    """The quality table by evaluation set (the worst set marked, with its plot) and the samples that changed
    most."""
    esc = html.escape
    parts = [f"<p><small>{esc(_environment_line(typed))}</small></p>"]
    by_set = slice_rows(typed)
    blocks = typed.blocks()
    worst = blocks[1].worst_slice if blocks else None
    if by_set:
        parts.append("<h2>Quality by evaluation set</h2><table class='slices'><tr>"
                     + "".join(f"<th>{esc(c)}</th>" for c in by_set[0]) + "</tr>")
        for row in by_set[1:]:
            mark = " class='fail'" if row[0] == worst else ""
            parts.append(f"<tr{mark}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        parts.append(f"</table><p>Worst set: <b>{esc(worst or '')}</b>.</p>")
        if slice_plot and slice_plot.exists():
            data = base64.b64encode(slice_plot.read_bytes()).decode()
            parts.append(f"<img alt='quality by evaluation set' src='data:image/png;base64,{data}' width='100%'>")
    cases = typed.optimized.quality.worst_cases if typed.optimized else []
    if cases:
        parts.append("<h2>Most changed samples</h2><table class='worst'><tr><th>set</th><th>row</th><th>change</th>"
                     "<th>baseline</th><th>optimized</th><th>text</th></tr>")
        parts += [f"<tr><td>{esc(w.slice)}</td><td>{w.row}</td><td>{w.change:.4f}</td><td>{esc(w.baseline)}</td>"
                  f"<td>{esc(w.optimized)}</td><td>{esc(w.text or '')}</td></tr>" for w in cases]
        parts.append("</table>")
    return parts


def write_html(typed: OptimizationReport, plot_path: Path | None, path: Path,
               search_plot: Path | None = None, slice_plot: Path | None = None) -> Path:
    """report.html for people, rendered from report.json's own form (same names, same figures)."""
    esc = html.escape
    report = typed.to_json()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>kompress: {esc(report['name'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:4px 10px;"
             "border-bottom:1px solid #ddd;text-align:left}.pass{color:#080}.fail{color:#b00}</style></head><body>",
             f"<h1>{esc(report['name'])}: {esc(report['outcome'])}</h1>",
             f"<p>{esc(str(report.get('message') or ''))}</p>"]
    parts += [f"<p>{esc(line)}</p>" for line in copy_lines(typed)]
    if report.get("optimized"):
        if plot_path and plot_path.exists():
            data = base64.b64encode(plot_path.read_bytes()).decode()
            parts.append(f"<img alt='baseline vs optimized' src='data:image/png;base64,{data}' width='100%'>")
        parts.append("<h2>Baseline vs optimized</h2><table><tr><th>metric</th><th>baseline</th>"
                     "<th>optimized</th></tr>")
        parts += [f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td></tr>" for a, b, c in table_rows(typed)]
        parts.append("</table><h2>Gates</h2><table>")
        for g in report["gates"]["results"] or [{"passed": True, "message": "no gates set"}]:
            cls = "pass" if g["passed"] else "fail"
            parts.append(f"<tr><td class='{cls}'>{'PASS' if g['passed'] else 'FAIL'}</td>"
                         f"<td>{esc(g['message'])}</td></tr>")
        parts.append("</table>")
        parts += [f"<p><b>Note:</b> {esc(n)}</p>" for n in typed.gates.notes] if typed.gates else []
        parts += [f"<p class='fail'><b>Warning:</b> the optimized model is {esc(w)}</p>"
                  for w in typed.warnings]
        parts += _quality_sections(typed, slice_plot)
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
