"""ONNX Runtime GenAI as a generative runtime: its model builder exports a Hugging Face causal-LM folder to the
folder `onnxruntime_genai.Model` (and a server built on it) reads — model.onnx, its external data,
genai_config.json and the tokenizer files — and quantizes the weights to MatMulNBits (INT4/INT8, blockwise).

Builder quirks handled here (0.18): it prints its progress to stdout (captured and kept only on failure); it
needs `onnx-ir`, which it does not declare; transformers-5 configs that nest the rope settings under
`rope_parameters` per layer type (Gemma 3) are flattened in the loaded config (it reads one flat dict);
asymmetric INT4 with the embedding shared with the lm_head writes a model ONNX Runtime refuses to load, so an
asymmetric recipe never shares it; INT8 embeddings are refused (GatherBlockQuantized is INT4 only), so an
8-bit recipe leaves the embedding in float."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError, RuntimeFailure
from kompress.jobs.runtimes.generative import ExportLimits, Generation, GenerativeRuntime, WeightRecipe

_QUIET_LOGGERS = ("neural_compressor", "onnxruntime.quantization", "onnx_ir",
                  "onnxruntime.quantization.matmul_nbits_quantizer")


def builder_layer_nodes(hf_name: str) -> list[str]:
    """The builder's MatMul node for one Hugging Face linear layer (q/k/v are fused into qkv_proj): what `keep`
    leaves unquantized. model.layers.3.self_attn.q_proj -> /model/layers.3/attn/qkv_proj/MatMul."""
    if hf_name == "lm_head":
        return ["/lm_head/MatMul"]
    parts = hf_name.split(".")
    if len(parts) < 5 or parts[:2] != ["model", "layers"]:
        raise InvalidInputError(f"no builder node for layer {hf_name!r}", field="techniques")
    layer, proj = parts[2], parts[-1]
    if proj in ("q_proj", "k_proj", "v_proj"):
        return [f"/model/layers.{layer}/attn/qkv_proj/MatMul"]
    if proj == "o_proj":
        return [f"/model/layers.{layer}/attn/o_proj/MatMul"]
    return [f"/model/layers.{layer}/mlp/{proj}/MatMul"]


def _flatten_rope(config: Any) -> None:
    """Transformers 5 nests Gemma 3's rope settings per layer type ({"full_attention": {...},
    "sliding_attention": {...}}); the builder reads one flat dict with a rope_type, plus rope_local_base_freq
    for the sliding layers. The loaded config object is patched; the model folder is never written."""
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and isinstance(rope.get("full_attention"), dict):
        sliding = rope.get("sliding_attention") or {}
        if "rope_theta" in sliding:
            config.rope_local_base_freq = sliding["rope_theta"]
        config.rope_parameters = dict(rope["full_attention"])


def _builder_architectures() -> set[str]:
    spec = importlib.util.find_spec("onnxruntime_genai")
    if spec is None or not spec.submodule_search_locations:
        return set()
    source = Path(next(iter(spec.submodule_search_locations))) / "models" / "builder.py"
    try:
        return set(re.findall(r'architectures\[0\] == "([A-Za-z0-9_]+)"', source.read_text()))
    except OSError:
        return set()


class OrtGenAiSession:
    def __init__(self, model_dir: Path, threads: int) -> None:
        import onnxruntime_genai as og

        config = og.Config(str(model_dir))
        config.clear_providers()
        # the spec's threads, overlaid on the served genai_config.json without writing it
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self._og = og
        self._model = og.Model(config)
        decoder = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
        # sliding-window layers need a KV cache at least as long as the window, whatever the sequence
        self._min_length = int((decoder.get("sliding_window") or {}).get("window_size", 0))

    def _generator(self, max_length: int) -> Any:
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(max_length=max(max_length, self._min_length), do_sample=False, batch_size=1)
        return self._og.Generator(self._model, params)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        gen = self._generator(len(ids) + 1)
        gen.append_tokens(ids[None].astype(np.int64))
        out = np.asarray(gen.get_output("logits"), dtype=np.float32)
        return out.reshape(-1, out.shape[-1])[-len(ids):]

    def generate(self, prompt: np.ndarray, new_tokens: int) -> Generation:
        gen = self._generator(len(prompt) + new_tokens)
        start = time.perf_counter()
        gen.append_tokens(prompt[None].astype(np.int64))  # the prompt pass
        gen.generate_next_token()  # picks the first new token from the prompt pass's logits
        tokens = [int(gen.get_next_tokens()[0])]
        first = time.perf_counter() - start
        times = []
        while len(tokens) < new_tokens:
            t0 = time.perf_counter()
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
            times.append(time.perf_counter() - t0)
        return Generation(tokens, first, times)

    def close(self) -> None:
        self._model = None


class OnnxRuntimeGenAI(GenerativeRuntime):
    name = "onnxruntime-genai"
    summary = "ONNX Runtime GenAI: the model builder's ONNX folder (MatMulNBits INT4/INT8 weights)"
    modules = ("onnxruntime_genai", "onnx_ir", "onnx")
    algorithms = frozenset({"rtn", "k_quant"})
    group_sizes = (16, 32, 64, 128, 256)
    serving_format = "onnxruntime-genai"
    accuracy_level = 4
    """MatMulNBits computes with INT8 activations on the CPU (the builder's CPU default): what is served."""

    def refuses(self, architecture: str, model_type: str) -> str | None:
        """The builder dispatches on config.architectures[0]; its list is read from its source (importing it
        loads torch and transformers)."""
        known = _builder_architectures()
        if known and architecture not in known:
            return (f"ONNX Runtime GenAI's model builder cannot export {architecture} (it exports "
                    f"{', '.join(sorted(a for a in known if a.endswith('ForCausalLM')))}, ...)")
        return None

    def export_float(self, hf_dir: Path, out: Path, limits: ExportLimits) -> Path:
        return self._build(hf_dir, out, "fp32", {})

    def quantize(self, hf_dir: Path, float_dir: Path, out: Path, recipe: WeightRecipe, limits: ExportLimits,
                 calibration: list[np.ndarray]) -> Path:
        why = self.supports(recipe)
        if why:
            raise InvalidInputError(why, field="techniques")
        options: dict[str, str] = {
            "block_size": str(recipe.group_size), "is_symmetric": str(recipe.symmetric).lower(),
            "accuracy_level": str(self.accuracy_level),
            "algo_config": {"rtn": "default" if recipe.symmetric else "rtn", "k_quant": "k_quant"}[recipe.algorithm],
        }
        if recipe.bits == 4:
            # an asymmetric INT4 embedding shared with the lm_head is refused by ONNX Runtime at load time
            shared = recipe.symmetric and not recipe.int8_lm_head
            options["shared_embeddings"] = str(shared).lower()
            if shared:  # named, or exact-name overrides drop the INT4 embedding (a float one: +113 MB on SmolLM2)
                options["op_types_to_quantize"] = "MatMul/Gather"
            if recipe.int8_lm_head:
                options["matmul_mixed_precision"] = "last_matmul:int8"
        overrides = [{"match": {"name": node}, "type": "int8"}
                     for node in dict.fromkeys(n for k in recipe.keep for n in builder_layer_nodes(k))]
        if overrides and recipe.bits == 8:
            raise InvalidInputError("keepSensitive keeps layers at 8 bits: it applies to a 4-bit recipe",
                                    field="techniques")
        target = {"quant_config": {"weights": {"overrides": overrides}}} if overrides else None
        return self._build(hf_dir, out, f"int{recipe.bits}", options, target)

    def _build(self, hf_dir: Path, out: Path, precision: str, options: dict[str, str],
               target_options: dict[str, Any] | None = None) -> Path:
        from onnxruntime_genai.models import builder

        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        source = hf_dir
        cache = out.parent / f"{out.name}-cache"
        kv = [f"{k}={v}" for k, v in {"hf_token": "false", **options}.items()]
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):  # its progress bars
                extra = builder.parse_extra_options(None, str(source), str(out), precision, "cpu", str(cache), kv,
                                                    target_options=target_options)
                _flatten_rope(extra["hf_details"]["hf_config"])
                builder.create_model(None, str(source), str(out), precision, "cpu", str(cache), **extra)
        except NotImplementedError as err:
            raise InvalidInputError(f"ONNX Runtime GenAI's model builder cannot export this model: {err}",
                                    field="model.uri") from None
        except Exception as err:
            tail = captured.getvalue().strip().splitlines()[-3:]
            raise RuntimeFailure(f"ONNX Runtime GenAI's model builder failed ({precision}): {err}"
                                 + (f" [{' | '.join(tail)}]" if tail else "")) from err
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        return out

    def search_recipes(self, config: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]], str | None]]:
        """INT8 at block 64 (on SmolLM2 faster than the builder's block 32 and as close to float), the builder's
        default INT4 (RTN, symmetric, block 32, INT4 embedding shared with the lm_head), and INT4 with the layers
        measured most sensitive kept at INT8 (exact-name overrides of the builder's quantizer; on SmolLM2 the
        middle layers' value projections, which the builder fuses into qkv). Measured on SmolLM2 against the
        default's KL 0.409 at 3.37x its float decode: 8 kept, 0.371 at 3.53x; 30, 0.319 at 3.28x; 60, 0.252 at
        3.31x. Not among them: k-quant with an INT8 lm_head (KL 0.297 at 0.89x the default's speed: the lm_head
        holds a fifth of the weights), asymmetric INT4 (the embedding can no longer be shared, so it stays
        float: bigger and slower, no lower KL), layers kept in float instead of INT8 (slower)."""
        def wo(**kw: Any) -> list[dict[str, Any]]:
            return [{"weightOnly": {"bits": 4, "groupSize": 32, **kw}}]
        return [("int8 g64", wo(bits=8, groupSize=64), None),
                ("int4 builder-default", wo(), None),
                ("int4 + 8 sensitive int8", wo(keepSensitive=8), None),
                ("int4 + 30 sensitive int8", wo(keepSensitive=30), None),
                ("int4 + 60 sensitive int8", wo(keepSensitive=60), None)]

    def open(self, model_dir: Path, threads: int, precision: str | None = None) -> OrtGenAiSession:
        return OrtGenAiSession(model_dir, threads)


RUNTIME = OnnxRuntimeGenAI()
