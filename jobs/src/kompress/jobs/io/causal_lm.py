"""A causal language model as kompress works on it: a float Hugging Face folder (config.json, safetensors,
tokenizer). A GGUF file is dequantized once into such a folder, cached by the file's digest; the report
records what precision the source held (the float reference is then the dequantized GGUF, which understates
what quantizing the original bf16 weights would lose). Pickled weights (pytorch_model.bin) are refused."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kompress.jobs.errors import InvalidInputError, require_torch

if TYPE_CHECKING:
    from kompress.jobs.progress import Progress

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
COMPRESS_MEMORY_FACTOR = 3.0
"""Peak resident memory while exporting and quantizing, in units of the model's float32 weights (measured:
ONNX Runtime GenAI's builder peaks at 2.7x exporting a 270M model in fp32; OpenVINO's conversion holds the
torch model and the converted graph)."""
COMPRESS_MEMORY_BASE = 1 << 30
"""Plus the libraries, the tokenizer and the evaluation's logits."""


@dataclass(frozen=True)
class CausalLM:
    hf_dir: Path
    """The float Hugging Face folder every runtime exports from."""
    architecture: str
    model_type: str
    source_format: str
    """huggingface or gguf."""
    source_precision: str
    """What the source's weights were stored as (float32, bfloat16, float16, or the GGUF type, e.g. Q4_1)."""
    parameters: int
    sha256: str
    config: dict[str, Any]

    @property
    def float32_bytes(self) -> int:
        return self.parameters * 4

    def metadata(self) -> dict[str, str]:
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "intermediate_size", "tie_word_embeddings", "sliding_window")
        out = {"architecture": self.architecture, "modelType": self.model_type, "sourcePrecision":
               self.source_precision, "parameters": str(self.parameters)}
        out.update({k: str(self.config[k]) for k in keys if self.config.get(k) is not None})
        if self.source_format == "gguf":
            out["floatReference"] = f"dequantized from GGUF {self.source_precision}"
        return out


def memory_limit(requested: str | None) -> tuple[int | None, str]:
    """The memory a run may use: the Job's limit (resources.memory, which a local run honours too, so it fails
    the way the Job would) or the container's cgroup limit, whichever is lower; and where it comes from."""
    limits: list[tuple[int, str]] = []
    if requested:
        limits.append((_quantity(requested), f"resources.memory {requested}"))
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            limits.append((int(raw), f"the container's memory limit ({path})"))
        break
    if not limits:
        return None, ""
    return min(limits)


def _quantity(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "K": 10**3, "M": 10**6, "G": 10**9,
             "T": 10**12}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * factor)
    return int(float(q))


def check_memory(parameters: int, limit: int | None, source: str) -> int:
    """Fail before any work when compressing this model would not fit the limit; returns the estimate."""
    need = int(parameters * 4 * COMPRESS_MEMORY_FACTOR + COMPRESS_MEMORY_BASE)
    if limit is not None and need > limit:
        raise InvalidInputError(
            f"a {parameters / 1e6:.0f}M-parameter model needs about {need / 2**30:.1f} GiB to compress "
            f"({COMPRESS_MEMORY_FACTOR:g} x its {parameters * 4 / 2**30:.1f} GiB of float32 weights + 1 GiB), more "
            f"than {source} ({limit / 2**30:.1f} GiB); raise resources.memory", field="resources.memory")
    return need


def inspect(local: Path, declared: str | None) -> tuple[str, Path, int, str]:
    """(format, the .gguf file or the folder, parameters, source precision), read from headers only."""
    gguf = [local] if local.is_file() and local.suffix == ".gguf" else (
        sorted(local.glob("*.gguf")) if local.is_dir() else [])
    if declared == "gguf" or (gguf and declared is None):
        if len(gguf) != 1:
            raise InvalidInputError(f"{local.name}: expected one .gguf file, found {len(gguf)}", field="model.uri")
        params, precision = _gguf_facts(gguf[0])
        return "gguf", gguf[0], params, precision
    if not local.is_dir() or not (local / "config.json").is_file():
        raise InvalidInputError(f"{local.name}: not a Hugging Face causal-LM folder (no config.json) nor a .gguf "
                                "file", field="model.uri")
    weights = sorted(local.glob("*.safetensors"))
    if not weights:
        pickled = [p.name for p in local.glob("*.bin")]
        raise InvalidInputError(f"{local.name}: no safetensors weights"
                                + (f" ({', '.join(pickled)} is a pickle, never loaded: convert it to safetensors)"
                                   if pickled else ""), field="model.uri")
    if not any((local / f).is_file() for f in TOKENIZER_FILES):
        raise InvalidInputError(f"{local.name}: no tokenizer ({' or '.join(TOKENIZER_FILES)}) in the model folder",
                                field="model.uri")
    params, dtypes = 0, set()
    for w in weights:
        header = _safetensors_header(w)
        for name, t in header.items():
            if name != "__metadata__":
                n = 1
                for d in t["shape"]:
                    n *= d
                params += n
                dtypes.add(t["dtype"])
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
    return "huggingface", local, params, "+".join(sorted(names.get(d, d) for d in dtypes))


def _safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100 << 20:
            raise InvalidInputError(f"{path.name}: not a safetensors file", field="model.uri")
        try:
            header: dict[str, Any] = json.loads(f.read(size))
        except ValueError:
            raise InvalidInputError(f"{path.name}: not a safetensors file", field="model.uri") from None
    return header


def _gguf_facts(path: Path) -> tuple[int, str]:
    try:
        from gguf import GGUFReader
    except ImportError:
        raise InvalidInputError("a GGUF model needs the `gguf` package (extra llm)", field="model.uri") from None
    try:
        reader = GGUFReader(str(path))
    except Exception as err:
        raise InvalidInputError(f"{path.name}: not a readable GGUF file ({err})", field="model.uri") from None
    params = sum(int(t.n_elements) for t in reader.tensors)
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + int(t.n_elements)
    return params, max(types, key=lambda k: types[k]) if types else "unknown"


# long: validation, the GGUF conversion and the facts belong together
def prepare(local: Path, declared: str | None, cache_root: Path, sha256: str,
            progress: Progress | None = None) -> CausalLM:
    fmt, source, params, precision = inspect(local, declared)
    hf_dir = source
    if fmt == "gguf":
        hf_dir = cache_root / "gguf" / sha256[:32]
        if not (hf_dir / "config.json").is_file():
            _gguf_to_folder(source, hf_dir, progress)
    try:
        config = json.loads((hf_dir / "config.json").read_text())
    except ValueError as err:
        raise InvalidInputError(f"{hf_dir.name}/config.json is not valid JSON ({err})", field="model.uri") from None
    arch = (config.get("architectures") or [""])[0]
    if not arch.endswith("ForCausalLM") and not arch.endswith("ForConditionalGeneration"):
        raise InvalidInputError(f"{local.name}: not a causal language model (architectures: {arch or 'none'}; "
                                "text-generation takes a *ForCausalLM model)", field="model.uri")
    return CausalLM(hf_dir, arch, str(config.get("model_type", "")), fmt, precision, params, sha256, config)


def _gguf_to_folder(gguf: Path, out: Path, progress: Progress | None) -> None:
    """Dequantize a GGUF file into a float32 Hugging Face folder, holding the model once: transformers loads it
    dequantized, and its state dict is written as it is (a GGUF-loaded model refuses save_pretrained)."""
    require_torch("a GGUF model (dequantized with transformers)", field="model.uri")
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    if progress is not None:
        progress.info(f"dequantizing {gguf.name} to a float32 Hugging Face folder (cached)")
    partial = out.with_name(out.name + f".partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as err:
        raise InvalidInputError(f"{gguf.name}: transformers cannot load this GGUF file ({err})",
                                field="model.uri") from None
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    config["architectures"] = [type(model).__name__]  # a GGUF-loaded config does not name its class
    save_model(model, str(partial / "model.safetensors"), metadata={"format": "pt"})
    (partial / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.to_json_file(str(partial / "generation_config.json"))
    tokenizer.save_pretrained(partial)
    del model
    if out.exists():  # another run finished first: its folder is the same conversion
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.rename(out)
    if progress is not None:
        progress.info(f"dequantized in {time.perf_counter() - started:.0f} s")
