"""Validation a user can trust: paired bootstrap intervals checked against references computed another way,
retrieval and per-class figures on known cases, slice-aware gates (scope, confidence, the worst slice named),
the termination summary keeping what decides a verdict, and a run whose main set passes while a slice fails."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from kompress.jobs import gates
from kompress.jobs.errors import ExitCode, SpecError
from kompress.jobs.measure import agreement, confidence
from kompress.jobs.measure.confidence import Figure, mean_of
from kompress.jobs.report import render
from kompress.jobs.report.model import ResultBlock, SliceQuality
from kompress.jobs.spec.document import parse_document
from kompress.jobs.spec.sections import GatesSpec

from conftest import DATASETS, example, run_cli, write_spec

# ---- intervals -------------------------------------------------------------------------------------------


def test_a_proportions_interval_matches_the_normal_approximation() -> None:
    """For a mean of 4000 Bernoulli(0.9) samples the percentile bootstrap and the Wald interval agree closely."""
    rng = np.random.default_rng(3)
    x = (rng.random(4000) < 0.9).astype(np.float64)
    est = confidence.estimate([mean_of("accuracy", x)], level=0.95)["accuracy"]
    p = x.mean()
    half = 1.959964 * np.sqrt(p * (1 - p) / len(x))
    assert est.value == pytest.approx(p)
    assert est.low == pytest.approx(p - half, abs=0.15 * half)
    assert est.high == pytest.approx(p + half, abs=0.15 * half)


def test_a_paired_drop_matches_scipys_bootstrap() -> None:
    """The drop of accuracy between two classifiers on the same samples: our interval (one matrix of resample
    counts) and scipy.stats.bootstrap's paired percentile interval of the same statistic agree."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    base = (rng.random(1500) < 0.92).astype(np.float64)
    flips = rng.random(1500) < 0.05  # the optimized model changes 5% of the answers
    opt = np.where(flips, 1 - base, base)
    ours = confidence.estimate([mean_of("accuracy_drop", base - opt)], level=0.9, resamples=4000)["accuracy_drop"]
    ref = stats.bootstrap((base, opt), lambda b, o, axis: b.mean(axis) - o.mean(axis), paired=True,
                          confidence_level=0.9, method="percentile", n_resamples=4000, random_state=1,
                          vectorized=True).confidence_interval
    width = ref.high - ref.low
    assert ours.low == pytest.approx(ref.low, abs=0.1 * width) and ours.high == pytest.approx(ref.high, abs=0.1 * width)
    # paired: far narrower than the two accuracies' own intervals would suggest
    alone = confidence.estimate([mean_of("a", base)], level=0.9)["a"]
    assert width < (alone.high - alone.low)  # type: ignore[operator]


def test_a_function_of_means_gets_its_interval_and_samples_share_resamples() -> None:
    """A ratio of means (the column cosine of one-value outputs): the interval brackets the value; with one
    sample there is no interval at all."""
    rng = np.random.default_rng(7)
    b = rng.normal(size=(500, 1))
    o = b + rng.normal(scale=0.1, size=(500, 1))
    fig, _, _ = agreement.cosine_figure(b, o)
    est = confidence.estimate([fig])["cosine_similarity"]
    assert est.low is not None and est.high is not None and est.low <= est.value <= est.high < 1.0
    single = confidence.estimate([Figure("x", np.ones((1, 1)), lambda m: m[..., 0])])["x"]
    assert single.low is None and single.value == 1.0


# ---- task figures on known cases ----------------------------------------------------------------------------


def test_neighbour_agreement_and_rank_correlation() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(60, 16)).astype(np.float32)
    assert confidence.estimate([agreement.neighbour_agreement(e, e)])["neighbor_agreement"].value == 1.0
    assert confidence.estimate([agreement.rank_correlation(e, e)])["rank_correlation"].value == pytest.approx(1.0)
    shuffled = e[rng.permutation(60)]  # every sample's output replaced by another's: retrieval is broken
    broken = confidence.estimate([agreement.neighbour_agreement(e, shuffled), agreement.rank_correlation(e, shuffled)])
    assert broken["neighbor_agreement"].value < 0.3 and abs(broken["rank_correlation"].value) < 0.3
    slight = e + rng.normal(scale=0.05, size=e.shape).astype(np.float32)
    kept = confidence.estimate([agreement.neighbour_agreement(e, slight)])["neighbor_agreement"].value
    assert kept > 0.8


def test_the_worst_class_is_found() -> None:
    classes = np.repeat(np.arange(4), 25)
    drop = np.zeros(100)
    drop[50:60] = 1.0  # class 2 loses 10 of its 25 answers
    found = agreement.worst_class_drop(classes, drop)
    assert found is not None
    fig, worst = found
    est = confidence.estimate([fig])["class_accuracy_drop"]
    assert worst == "2" and est.value == pytest.approx(0.4)
    assert agreement.worst_class_drop(np.zeros(100), drop) is None  # one class: no per-class figure


# ---- gates over evaluation sets -----------------------------------------------------------------------------


def _block(**slices: tuple[float, list[float]]) -> ResultBlock:
    """A result whose main set has cosine 0.995 [0.993, 0.997] and the given slices (cosine, interval)."""
    return ResultBlock(speedup=2.0, size_reduction=4.0, accuracy_drop=0.005, quality_metric="cosineSimilarityMean",
                       cosine_similarity=0.995, intervals={"cosineSimilarity": [0.993, 0.997]}, interval_level=0.95,
                       slices=[SliceQuality(name=n, samples=200, cosine_similarity=c, accuracy_drop=1 - c,
                                            intervals={"cosineSimilarity": iv}) for n, (c, iv) in slices.items()])


def test_a_slice_that_fails_while_the_mean_passes_is_named() -> None:
    block = _block(queries=(0.985, [0.981, 0.989]), german=(0.991, [0.988, 0.994]))
    verdict = gates.evaluate(GatesSpec(min_cosine_similarity=0.99), block)
    assert not verdict.passed
    assert verdict.failures == ["minCosineSimilarity: measured 0.985 on slice 'queries' misses >= 0.99"]
    assert gates.evaluate(GatesSpec(min_cosine_similarity=0.99, scope="main"), block).passed
    every = gates.evaluate(GatesSpec(min_cosine_similarity=0.99, scope="every-slice"), block)
    assert [(r.slice, r.passed) for r in every.results[1:]] == [("main", True), ("queries", False), ("german", True)]
    # german's interval straddles the gate: the data cannot tell which side it is on
    assert any("'german'" in n and "more evaluation data" in n for n in every.notes)


def test_confidence_judges_the_bound() -> None:
    block = _block(german=(0.9915, [0.9895, 0.9935]))
    assert gates.evaluate(GatesSpec(min_cosine_similarity=0.99), block).passed
    strict = gates.evaluate(GatesSpec(min_cosine_similarity=0.99, confidence=0.95), block)
    assert not strict.passed and "lower bound of the 95% interval" in strict.failures[0]
    assert "'german'" in strict.failures[0]
    assert gates.evaluate(GatesSpec(max_accuracy_drop=0.02, confidence=0.95), block).passed  # no drop interval


def test_the_summary_keeps_the_slices_that_decide() -> None:
    """16 slices overflow a termination message; the summary keeps those worst on some figure, so the
    operator's re-check of the gates reaches the engine's verdict."""
    slices = {f"s{i:02d}": (0.999 - i * 1e-4, [0.998 - i * 1e-4, 0.9995]) for i in range(16)}
    slices["s07"] = (0.97, [0.96, 0.98])
    block = _block(**slices)
    kept = render.deciding_slices(block.slices)
    assert "s07" in [s.name for s in kept] and len(kept) < 16
    trimmed = block.model_copy(update={"slices": kept})
    for spec in (GatesSpec(min_cosine_similarity=0.99), GatesSpec(min_cosine_similarity=0.99, confidence=0.95),
                 GatesSpec(max_accuracy_drop=0.01, scope="every-slice")):
        assert gates.evaluate(spec, trimmed).passed == gates.evaluate(spec, block).passed


# ---- the spec ---------------------------------------------------------------------------------------------------


def test_slices_are_checked_when_read() -> None:
    doc = example("digits-int8.yaml")
    doc["spec"]["data"]["slices"] = [{"name": "main", "uri": "x.npz"}]
    with pytest.raises(SpecError, match="main"):
        parse_document(doc)
    doc["spec"]["data"]["slices"] = [{"name": "a", "uri": "x.npz"}, {"name": "a", "uri": "y.npz"}]
    with pytest.raises(SpecError, match="more than once"):
        parse_document(doc)
    doc["spec"]["data"]["slices"] = [{"name": f"s{i}", "uri": "x.npz"} for i in range(17)]
    with pytest.raises(SpecError, match="slices"):
        parse_document(doc)
    doc["spec"]["data"]["slices"] = []
    doc["spec"]["gates"]["minNeighborAgreement"] = 0.9
    with pytest.raises(SpecError, match="minNeighborAgreement applies to task embedding"):
        parse_document(doc)


# ---- end to end -----------------------------------------------------------------------------------------------


class _Tables(HTMLParser):
    """The HTML report's tables, by their class, as rows of cell text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._current: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._current = self.tables.setdefault(dict(attrs).get("class") or f"t{len(self.tables)}", [])
        elif tag == "tr" and self._current is not None:
            self._current.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._current:
            self._current[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_a_slice_that_breaks_is_caught_and_shown(tmp_path: Path) -> None:
    """The digits CNN's static INT8 agrees with the original on its evaluation rows; on a slice of the same
    digits, faded and noisy, it changes about a quarter of the answers while its accuracy barely moves (both
    are near chance there). The run is rejected naming the slice, and the report shows the slice table, the
    intervals and the samples that changed most."""
    src = np.load(DATASETS / "digits-eval.npz")
    x = src["pixels"].astype(np.float32)
    rng = np.random.default_rng(1)
    faded = x * 0.35 + rng.normal(0, 0.6 * x.std(), x.shape).astype(np.float32)
    np.savez(tmp_path / "faded.npz", pixels=faded.astype(np.float32), labels=src["labels"],
             texts=np.array([f"digit {d}, faded" for d in src["labels"]]))
    doc = example("digits-int8.yaml")
    doc["spec"]["data"]["slices"] = [{"name": "faded", "uri": str(tmp_path / "faded.npz"), "evaluationSamples": 300}]
    doc["spec"]["gates"] = {"maxAccuracyDrop": 0.01, "minTop1Agreement": 0.98}
    doc["spec"]["promotion"]["registry"] = str(tmp_path / "registry")
    doc["spec"]["target"]["iterations"] = 20
    proc = run_cli("run", str(write_spec(tmp_path / "spec.yaml", doc)), "-o", str(tmp_path / "out"), cwd=tmp_path)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    quality = report["optimized"]["quality"]
    faded_q = quality["slices"][0]
    assert faded_q["name"] == "faded" and faded_q["samples"] == 300
    assert report["data"]["slices"][0]["evaluationSamples"] == 300
    main_agreement = report["optimized"]["quality"]["fidelity"]["top1Agreement"]
    if not (main_agreement >= 0.98 > faded_q["top1Agreement"]):
        pytest.fail(f"expected the main set to agree and the faded slice not to (main {main_agreement}, "
                    f"faded {faded_q})")
    assert proc.returncode == ExitCode.GATES_REJECTED, proc.stderr[-2000:]
    assert "minTop1Agreement" in report["message"] and "'faded'" in report["message"]
    assert report["gates"]["results"][1]["gate"] == "maxAccuracyDrop" and report["gates"]["results"][1]["passed"]
    assert not (tmp_path / "registry" / "digits").exists()  # nothing promoted
    low, high = faded_q["intervals"]["accuracyDrop"]
    assert low <= faded_q["accuracyDrop"] <= high
    if high > 0.01:  # the drop's interval reaches past the gate: the data cannot show the drop is small
        assert any("maxAccuracyDrop on slice 'faded'" in n for n in report["gates"]["notes"])
    assert "accuracy" in quality["intervals"]
    worst = quality["worstCases"]
    assert worst and worst[0]["slice"] == "faded" and worst[0]["text"].startswith("digit ")
    tables = _Tables()
    tables.feed((tmp_path / "out" / "report.html").read_text())
    by_set = tables.tables["slices"]
    assert [r[0] for r in by_set[1:]] == ["main", "faded"] and "interval" in " ".join(by_set[0])
    assert len(tables.tables["worst"]) == len(worst) + 1
    assert "quality by evaluation set" in proc.stdout
    assert (tmp_path / "out" / "slices.png").stat().st_size > 0
    assert report["artifacts"]["slicePlot"].endswith("slices.png")


def test_calibrating_on_evaluation_rows_is_refused_unless_allowed(tmp_path: Path) -> None:
    doc = example("digits-int8.yaml")
    doc["spec"]["data"]["evaluationSamples"] = 360  # every row: none left to calibrate on
    doc["spec"]["promotion"]["registry"] = str(tmp_path / "registry")
    doc["spec"]["target"]["iterations"] = 10
    proc = run_cli("run", str(write_spec(tmp_path / "spec.yaml", doc)), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stderr[-2000:]
    assert "allowCalibrationOverlap" in proc.stderr and "Traceback" not in proc.stderr
    doc["spec"]["data"]["allowCalibrationOverlap"] = True
    proc = run_cli("run", str(write_spec(tmp_path / "spec.yaml", doc)), "-o", str(tmp_path / "out2"), cwd=tmp_path)
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["data"]["calibrationOverlapsEvaluation"]


def test_the_slices_example_moves_the_search_to_a_recipe_that_holds_everywhere(tmp_path: Path) -> None:
    """examples/minilm-slices.yaml: a candidate that passes every gate on the main set fails on a slice (named
    in its failures), and what the search promotes, if anything, holds on every slice; the report's slice
    table and the trial table carry the figures."""
    pytest.importorskip("openvino")
    doc = example("minilm-slices.yaml")
    doc["spec"]["promotion"]["registry"] = str(tmp_path / "registry")
    doc["spec"]["target"]["iterations"] = 40  # quality decides here; speed figures live in bench/
    doc["spec"]["search"]["trialIterations"] = 10
    proc = run_cli("run", str(write_spec(tmp_path / "spec.yaml", doc)), "-o", str(tmp_path / "out"), cwd=tmp_path,
                   env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode in (ExitCode.SUCCESS, ExitCode.GATES_REJECTED), proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    spec = GatesSpec.model_validate(doc["spec"]["gates"])
    main_only = spec.model_copy(update={"scope": "main"})
    trials = [t for t in report["search"]["trials"] if t.get("metrics")]
    caught = [t for t in trials if gates.evaluate(main_only, ResultBlock.model_validate(t["metrics"]), "latency").passed
              and t["status"] == "rejected"]
    assert caught, [(t["name"], t["failures"]) for t in trials]
    assert any("on slice '" in f and "'main'" not in f for f in caught[0]["failures"])
    for t in trials:
        assert {s["name"] for s in t["metrics"]["slices"]} == {"other-language", "short-queries", "misspelled",
                                                                "long-passages"}
    if proc.returncode == ExitCode.SUCCESS:
        chosen = next(t for t in trials if t.get("chosen"))
        assert chosen["status"] == "passed" and chosen["name"] != caught[0]["name"]
        blocks = render.read_json((tmp_path / "out" / "report.json").read_text()).blocks()
        assert blocks is not None
        result = blocks[1]
        assert gates.evaluate(spec, result, "latency").passed  # the final measurement holds on every slice too
        assert (tmp_path / "registry" / "minilm-slices" / "1").is_dir()
    else:
        assert not (tmp_path / "registry" / "minilm-slices").exists()
    assert "quality by evaluation set" in proc.stdout and "other-language" in proc.stdout
