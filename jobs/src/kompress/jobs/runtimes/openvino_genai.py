"""OpenVINO GenAI as kompress runs it: a Hugging Face causal LM converted in this process by OpenVINO's own
PyTorch frontend (no optimum-intel: it pins transformers below what kompress uses) into the stateful IR that
OpenVINO GenAI's `LLMPipeline` and OpenVINO Model Server's LLM serving read, its weights compressed by NNCF,
and sessions that score logits with the compiled IR and generate with the pipeline the server runs.

The served folder (what optimum-intel writes for the same model, so either side's tools read it):
`openvino_model.xml/.bin` (inputs input_ids, attention_mask, position_ids: i64 [batch, seq]; beam_idx: i32
[batch]; output logits: f32 [batch, seq, vocab]; the key/value cache hidden in the model's state, one
variable per layer and key or value), `openvino_tokenizer.xml/.bin` and `openvino_detokenizer.xml/.bin`
(openvino_tokenizers), and the Hugging Face config, generation config and tokenizer files."""

from __future__ import annotations

import gc
import inspect
import itertools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.runtimes.generative import (
    ExportLimits,
    Generation,
    GenerativeRuntime,
    GenerativeSession,
    WeightRecipe,
)

MODEL_XML = "openvino_model.xml"
TOKENIZER_XML = "openvino_tokenizer.xml"
DETOKENIZER_XML = "openvino_detokenizer.xml"
_NOT_KV = ("input_ids", "attention_mask", "position_ids")
_COPIED_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")
"""Hugging Face files copied next to the IR (config, generation config, tokenizer); weights are not."""
_TRACE_PAST, _TRACE_NEW, _TRACE_BATCH = 2, 3, 2
"""The traced example: a non-empty cache, several new tokens and two sequences, so that no shortcut a model
takes for an empty cache, one token or one sequence is baked into the graph."""


def _kv_names(layers: int, kind: str) -> list[str]:
    """optimum-intel's cache names (past_key_values.N.key / present.N.value), which GenAI's tools expect."""
    return [f"{kind}.{i}.{part}" for i in range(layers) for part in ("key", "value")]


def _load_float(hf_dir: Path) -> Any:
    """The Hugging Face model in float32 with PyTorch's SDPA attention: OpenVINO converts SDPA to its
    ScaledDotProductAttention op, which its CPU plugin fuses and which GenAI's paged-attention transformation
    (continuous batching, what the model server runs) rewrites; an eager softmax(QK^T) is neither."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa",
                                                 low_cpu_mem_usage=True)
    model.eval()
    model.config.use_cache = True
    return model


def _wrapper(model: Any, layers: int) -> Any:
    """The module traced: flat tensors in (ids, mask, positions, then each layer's key and value), flat out
    (logits, then each layer's new key and value). The cache is a plain `DynamicCache` of full layers even
    for sliding-window models: the state keeps every position and the model's own mask applies the window."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    def filled(key: Any, value: Any) -> Any:
        # set, not `update`d: update concatenates onto an empty 1-D tensor, which traces to an invalid Concat
        layer = DynamicLayer()
        layer.lazy_initialization(key, value)
        layer.keys, layer.values = key, value
        return layer

    # transformers 5.2x renamed the argument `cache` (past_key_values is deprecated, to be removed)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    class _Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
            cache = DynamicCache()
            cache.layers = [filled(past[2 * i], past[2 * i + 1]) for i in range(layers)]
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             **{cache_arg: cache}, use_cache=True, return_dict=True)
            present = [t for layer in cache.layers[:layers] for t in (layer.keys, layer.values)]  # type: ignore[union-attr]
            return (out.logits, *present)

    return _Decoder()


def _cache_shapes(model: Any) -> list[tuple[int, ...]]:
    """Each cache tensor's shape for one sequence of one token, from a real forward pass: the number of
    layers, key/value heads and head sizes as the model itself lays them out (no config arithmetic)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        model(input_ids=torch.ones((1, 1), dtype=torch.long), **{cache_arg: cache}, use_cache=True)
    return [tuple(t.shape) for layer in cache.layers for t in (layer.keys, layer.values)]  # type: ignore[union-attr]


def _convert(model: Any) -> Any:
    """The stateless OpenVINO model (cache as inputs and outputs), traced on an example with a cache, its
    inputs and outputs named as optimum-intel names them."""
    import openvino as ov
    import torch

    shapes = _cache_shapes(model)
    layers = len(shapes) // 2
    total = _TRACE_PAST + _TRACE_NEW
    vocab = int(model.get_input_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(0)
    example = [torch.randint(3, vocab, (_TRACE_BATCH, _TRACE_NEW), generator=gen),
               torch.ones((_TRACE_BATCH, total), dtype=torch.long),
               torch.arange(_TRACE_PAST, total).repeat(_TRACE_BATCH, 1)]
    example += [torch.randn((_TRACE_BATCH, s[1], _TRACE_PAST, *s[3:]), generator=gen) for s in shapes]
    dynamic = [ov.PartialShape([-1, -1])] * 3 + [ov.PartialShape([-1, s[1], -1, *s[3:]]) for s in shapes]
    with torch.no_grad():
        ov_model = ov.convert_model(_wrapper(model, layers), example_input=tuple(example),
                                    input=list(zip(dynamic, [ov.Type.i64] * 3 + [ov.Type.f32] * len(shapes),
                                                   strict=True)))
    for port, name in zip(ov_model.inputs, [*_NOT_KV, *_kv_names(layers, "past_key_values")], strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, ["logits", *_kv_names(layers, "present")], strict=True):
        port.get_tensor().set_names({name})
    return ov_model


def _make_stateful(ov_model: Any) -> None:
    """Hide the cache in the model's state the way optimum-intel's `patch_stateful` does (GenAI's LLMPipeline
    and the model server's paged-attention rewrite both look for this form): a `beam_idx` input (i32, one per
    sequence) gathers each cache input along the batch before use (`fuse_cache_reorder`: beam search reorders
    the cache without reading it out), each past input is paired with its present output as a variable
    (`apply_make_stateful_transformation`), and each variable starts as zeros of [batch, heads, 0, size]
    (`build_state_initializer`), so a reset state is an empty cache for any batch."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    past = [p.get_any_name() for p in ov_model.inputs if p.get_any_name().startswith("past_key_values.")]
    present = [p.get_any_name() for p in ov_model.outputs if p.get_any_name().startswith("present.")]
    batch = ov_model.input("input_ids").get_partial_shape()[0]
    beam_idx = ops.parameter(name="beam_idx", dtype=ov.Type.i32, shape=ov.PartialShape([batch]))
    beam_idx.output(0).get_tensor().add_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    for name in past:
        port = ov_model.input(name)
        consumers = port.get_target_inputs()
        gathered = ops.gather(port, beam_idx, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    ov_model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ov_model, dict(zip(past, present, strict=True)))
    rows = ops.gather(ops.shape_of(ov_model.input("input_ids"), output_type="i64"), ops.constant([0]),
                      ops.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [rows if i == 0 else ops.constant(np.array([d.min_length], dtype=np.int64))
                    for i, d in enumerate(op.get_output_partial_shape(0))]
            op.set_arguments([ops.broadcast(ops.constant(0.0, dtype=op.get_output_element_type(0)),
                                            ops.concat(dims, axis=0))])
    ov_model.validate_nodes_and_infer_types()


def _length_limits(config: Any) -> list[tuple[int, str]]:
    """The longest sequences the served model is exact for, each with its reason. A sliding-window attention is
    applied by the traced mask, which OpenVINO's paged attention (the model server, GenAI's continuous batching)
    drops: it reads the window from a few known mask patterns that transformers 5's masks do not match, so it
    attends to the whole sequence. Dynamic NTK RoPE rescales in Python once a sequence outgrows the trained
    length, a branch the trace fixes at its short example (longrope's switch is a traced `where`: exact)."""
    text = config.get_text_config(decoder=True)
    limits = []
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None)
    if window and getattr(text, "use_sliding_window", True) is not False and (
            types is None or "sliding_attention" in types):
        limits.append((int(window), f"a sliding window of {window} tokens, which OpenVINO's paged attention "
                                    "does not apply"))
    rope = getattr(text, "rope_parameters", None) or {}
    ropes = [rope] if "rope_type" in rope else [r for r in rope.values() if isinstance(r, dict)]
    if any("dynamic" in str(r.get("rope_type", "")) for r in ropes):
        trained = int(getattr(text, "max_position_embeddings", 0) or 0)
        limits.append((trained, f"dynamic RoPE scaling beyond {trained} tokens, which the traced graph fixes"))
    return limits


def _copy_hf_files(src: Path, out: Path) -> None:
    """The Hugging Face config, generation config, chat template and tokenizer files (not the weights)."""
    for path in src.iterdir():
        if path.is_file() and path.suffix in _COPIED_SUFFIXES and not path.name.endswith(".index.json"):
            shutil.copy2(path, out / path.name)


def _export_tokenizer(hf_dir: Path, out: Path) -> None:
    """openvino_tokenizers' tokenizer and detokenizer IRs, which GenAI and the model server tokenize with."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from transformers import AutoTokenizer

    try:
        tokenizer, detokenizer = convert_tokenizer(AutoTokenizer.from_pretrained(hf_dir), with_detokenizer=True)
    except Exception as err:  # openvino_tokenizers raises many types for tokenizers it cannot convert
        raise InvalidInputError(f"openvino_tokenizers cannot convert the tokenizer in {hf_dir.name}: "
                                f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}",
                                field="model.uri") from None
    ov.save_model(tokenizer, str(out / TOKENIZER_XML))
    ov.save_model(detokenizer, str(out / DETOKENIZER_XML))


def _mode(recipe: WeightRecipe) -> Any:
    from nncf import CompressWeightsMode

    if recipe.bits == 8:
        return CompressWeightsMode.INT8_SYM if recipe.symmetric else CompressWeightsMode.INT8_ASYM
    return CompressWeightsMode.INT4_SYM if recipe.symmetric else CompressWeightsMode.INT4_ASYM


def _dataset(calibration: list[np.ndarray]) -> Any:
    """NNCF's calibration set for the stateful IR: one full-sequence prefill per item (a dict of the IR's
    inputs, batch 1). NNCF's OpenVINO engine resets a stateful model's state before each item, so each
    sequence starts from an empty cache, as a prompt does."""
    import nncf

    def item(ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids),
                "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None], "beam_idx": np.zeros(1, np.int32)}

    return nncf.Dataset([item(ids) for ids in calibration])


def _kept_patterns(model: Any, keep: tuple[str, ...]) -> list[str]:
    """Regexes matching the MatMuls of Hugging Face modules in the converted IR. OpenVINO's PyTorch frontend
    names a linear layer's MatMul after its module path (`__module.model.model.layers.3.mlp.down_proj/
    aten::linear/MatMul`: the traced wrapper adds one `model.`), so a module matches at a path boundary. A name
    that matches no MatMul is an error (NNCF would silently ignore it)."""
    import re

    matmuls = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"]
    patterns = []
    for name in keep:
        pattern = rf"(.*\.|^){re.escape(name.removesuffix('.weight'))}/.*"
        if not any(re.match(pattern, op) for op in matmuls):
            raise InvalidInputError(f"{name} (kept at 8 bits) is not a linear layer of this model", field="quantize")
        patterns.append(pattern)
    return patterns


def _compress(model: Any, recipe: WeightRecipe, calibration: list[np.ndarray]) -> Any:
    """NNCF weight compression of the body at the recipe's bits (see `OpenVinoGenAI.quantize`)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    kept = _kept_patterns(model, recipe.keep)
    ignored = nncf.IgnoredScope(patterns=kept, validate=False) if kept else None
    if recipe.bits == 8:
        return nncf.compress_weights(model, mode=_mode(recipe), ignored_scope=ignored)
    algorithm = recipe.algorithm
    model = nncf.compress_weights(
        model, mode=_mode(recipe), group_size=recipe.group_size or -1, ratio=recipe.ratio, ignored_scope=ignored,
        awq=algorithm in ("awq", "awq+se") or None,
        scale_estimation=algorithm in ("scale_estimation", "awq+se") or None,
        gptq=algorithm == "gptq" or None, dataset=_dataset(calibration) if recipe.data_aware else None,
        subset_size=max(1, len(calibration)),
        advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))
    if kept:  # the kept weights are still float: the second pass compresses only them (compressed ones are skipped)
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return model


@dataclass
class _Timer:
    """GenAI streamer recording when each token arrives (`time.perf_counter` per `write`): per-token times as
    the caller sees them, where the pipeline's perf_metrics give only means."""

    start: float
    stamps: list[float]
    tokens: list[int]

    def write(self, token: Any) -> None:
        now = time.perf_counter()
        for t in token if isinstance(token, list | tuple) else [token]:
            self.stamps.append(now)
            self.tokens.append(int(t))


class OpenVinoGenAISession:
    """Logits from the compiled stateful IR; generation with GenAI's LLMPipeline. Each is built on first use,
    so a session used for one purpose does not pay for the other."""

    def __init__(self, model_dir: Path, threads: int, precision: str) -> None:
        self.model_dir = model_dir
        self.threads = threads
        self.precision = precision
        self._request: Any = None
        self._pipeline: Any = None

    def _properties(self) -> dict[str, Any]:
        return {"INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": "LATENCY"}

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """One prefill of the whole sequence from an empty cache (the state is reset each call)."""
        import openvino as ov

        if self._request is None:
            core = ov.Core()
            compiled = core.compile_model(core.read_model(str(self.model_dir / MODEL_XML)), "CPU", self._properties())
            self._request = compiled.create_infer_request()
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        self._request.reset_state()
        self._request.infer({"input_ids": ids, "attention_mask": np.ones_like(ids),
                             "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
                             "beam_idx": np.zeros(1, dtype=np.int32)})
        out = self._request.get_tensor("logits").data
        self._request.reset_state()  # the cache of a long sequence is not kept between calls
        return np.array(out[0], dtype=np.float32)

    def _pipe(self) -> Any:
        """The continuous-batching pipeline (a scheduler config selects it), as the model server runs it, with
        prefix caching off so that every prompt's first token is computed, not found in a cache."""
        import openvino_genai

        if self._pipeline is None:
            scheduler = openvino_genai.SchedulerConfig()
            scheduler.enable_prefix_caching = False
            scheduler.cache_size = 1
            self._pipeline = openvino_genai.LLMPipeline(str(self.model_dir), "CPU", scheduler_config=scheduler,
                                                        **self._properties())
        return self._pipeline

    def generate(self, prompt: np.ndarray, new_tokens: int) -> Generation:
        """Greedy, exactly `new_tokens` tokens, the prompt's ids handed over as they are (no tokenizer)."""
        import openvino as ov
        import openvino_genai

        pipe = self._pipe()
        ids = np.asarray(prompt, dtype=np.int64).reshape(1, -1)
        config = pipe.get_generation_config()
        config.do_sample, config.num_beams = False, 1
        config.max_new_tokens = config.min_new_tokens = new_tokens
        config.ignore_eos = True
        timer = _Timer(0.0, [], [])

        class _Streamer(openvino_genai.StreamerBase):
            def write(self, token: Any) -> openvino_genai.StreamingStatus:
                timer.write(token)
                return openvino_genai.StreamingStatus.RUNNING

            def end(self) -> None:
                return None

        inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        timer.start = time.perf_counter()
        result = pipe.generate(inputs, config, _Streamer())
        tokens = [int(t) for t in result.tokens[0]]
        stamps = [timer.start, *timer.stamps]
        return Generation(tokens=tokens, first_token_seconds=stamps[1] - stamps[0] if len(stamps) > 1 else 0.0,
                          decode_seconds=[b - a for a, b in itertools.pairwise(stamps[1:])])

    def close(self) -> None:
        self._request = None
        self._pipeline = None
        gc.collect()


class OpenVinoGenAI(GenerativeRuntime):
    name = "openvino-genai"
    summary = "OpenVINO GenAI (CPU): a stateful OpenVINO IR, NNCF weight compression, served by OpenVINO Model Server"
    modules = ("openvino", "openvino_genai", "openvino_tokenizers", "nncf")
    extra = "llm"
    algorithms = frozenset({"rtn", "awq", "scale_estimation", "awq+se"})
    group_sizes = (32, 64, 128, None)
    serving_format = "openvino-genai"
    precisions = ("f32", "bf16")
    supported_architectures = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text", "granite"})
    """Each converted from a tiny random model and checked against transformers (logits, greedy generation)."""

    def supports(self, recipe: WeightRecipe) -> str | None:
        """NNCF's INT8 modes are per-channel round-to-nearest of every weight: no groups, ratio or
        data-aware algorithm."""
        if recipe.bits == 8 and (recipe.group_size is not None or recipe.algorithm != "rtn" or recipe.ratio < 1.0):
            return f"{self.name} quantizes int8 per channel with rtn only (NNCF's INT8 modes)"
        if recipe.bits not in (4, 8):
            return f"{self.name} quantizes weights to 4 or 8 bits"
        return super().supports(recipe)

    def export_float(self, hf_dir: Path, out: Path, limits: ExportLimits) -> Path:
        """Convert with OpenVINO's PyTorch frontend (the model loaded once, in float32, freed before return),
        make the IR stateful, save its weights in float32, and add the tokenizer IRs and the Hugging Face
        files. The cache grows with the sequence (no fixed length); `limits.max_length` is checked against
        what the served model computes exactly (`_length_limits`) before anything is loaded."""
        self.require("exporting for OpenVINO GenAI")
        import openvino as ov
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(hf_dir)
        refusal = self.refuses((config.architectures or [""])[0], config.model_type)
        if refusal:
            raise InvalidInputError(refusal, field="model.uri")
        for length, reason in _length_limits(config):
            if limits.max_length > length:
                raise InvalidInputError(f"{self.name} cannot serve {limits.max_length} tokens of this "
                                        f"{config.model_type} model exactly: it has {reason}", field="model.uri")
        out.mkdir(parents=True, exist_ok=True)
        model = _load_float(hf_dir)
        try:
            ov_model = _convert(model)
        finally:
            del model
            gc.collect()
        _make_stateful(ov_model)
        ov.save_model(ov_model, str(out / MODEL_XML), compress_to_fp16=False)
        del ov_model
        gc.collect()
        _export_tokenizer(hf_dir, out)
        _copy_hf_files(hf_dir, out)
        return out

    def quantize(self, hf_dir: Path, float_dir: Path, out: Path, recipe: WeightRecipe, limits: ExportLimits,
                 calibration: list[np.ndarray]) -> Path:
        """NNCF `compress_weights` of the float IR (the tokenizer IRs and Hugging Face files copied as they are).

        - bits/symmetric: INT4_SYM/INT4_ASYM/INT8_SYM/INT8_ASYM; group_size None is per-channel (-1).
        - A group size that does not divide a layer's input size: NNCF's `GroupSizeFallbackMode.ADJUST`, that
          layer gets the largest power of two below the group size that divides it (at least 32), else 8 bits;
          the rest of the model keeps the recipe's group size.
        - algorithm: awq, scale_estimation, awq+se (NNCF data-aware, calibrated on `calibration`: one prefill
          per sequence); ratio < 1: NNCF's mixed precision, the rest at INT8_ASYM.
        - lm_head: NNCF keeps the embedding and the last MatMul (the output projection; with tied embeddings,
          the one shared weight) at INT8_ASYM per-channel unless `all_layers=True`. kompress leaves it at that
          default whatever `int8_lm_head` says, so an int4 recipe's head is at 8 bits here either way.
        - keep: those layers are excluded from the 4-bit pass (NNCF's ignored scope keeps them float) and a
          second INT8_ASYM per-channel pass compresses them, since NNCF skips already compressed weights."""
        self.require("quantizing for OpenVINO GenAI")
        if reason := self.supports(recipe):
            raise InvalidInputError(reason, field="quantize")
        if recipe.data_aware and not calibration:
            raise InvalidInputError(f"{recipe.label} needs calibration sequences", field="quantize")
        import nncf
        import openvino as ov

        out.mkdir(parents=True, exist_ok=True)
        for path in float_dir.iterdir():
            if path.is_file() and path.name not in (MODEL_XML, MODEL_XML.replace(".xml", ".bin")):
                shutil.copy2(path, out / path.name)
        model = ov.Core().read_model(str(float_dir / MODEL_XML))
        try:
            model = _compress(model, recipe, calibration)
        except nncf.InvalidGroupSizeError as err:
            raise InvalidInputError(f"group size {recipe.group_size} does not fit this model: "
                                    f"{str(err).splitlines()[0][:200]}", field="quantize") from None
        ov.save_model(model, str(out / MODEL_XML), compress_to_fp16=False)
        del model
        gc.collect()
        return out

    def search_recipes(self, config: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]], str | None]]:
        """bf16 compute (where the CPU has it), INT8 weights, optimum-intel's default INT4 (asymmetric, group
        128: a group that does not divide a layer is adjusted, where optimum-intel refuses the model), INT4 at
        group 64 (on SmolLM2 lower KL than the default at its speed: 0.303 vs 0.326), and NNCF's AWQ + scale
        estimation with 80% of the layers at 4 bits, the rest at 8 (KL 0.090 at 0.93x the default's speed).
        Not among them: scale estimation alone (dominated there: KL 0.21 at 0.78x), AWQ + scale estimation on
        every layer (KL 0.18 at 0.81x)."""
        from kompress.jobs.cpu import cpu_has_bf16

        def wo(**kw: Any) -> list[dict[str, Any]]:
            return [{"weightOnly": {"bits": 4, "symmetric": False, "groupSize": 64, **kw}}]
        recipes: list[tuple[str, list[dict[str, Any]], str | None]] = [
            ("int8", [{"weightOnly": {"bits": 8, "groupSize": None}}], None),
            ("int4 optimum-default", wo(groupSize=128), None),
            ("int4 asym g64", wo(), None),
            ("int4 awq+se ratio 0.8", wo(algorithm="awq+se", ratio=0.8), None),
        ]
        if cpu_has_bf16():
            recipes.insert(0, ("bf16", [], "bf16"))
        return recipes

    def open(self, model_dir: Path, threads: int, precision: str | None = None) -> GenerativeSession:
        self.require("running an OpenVINO GenAI model")
        return OpenVinoGenAISession(model_dir, threads, self.precision(precision) or "f32")


RUNTIME = OpenVinoGenAI()
