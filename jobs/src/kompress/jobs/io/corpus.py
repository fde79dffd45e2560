"""Text for a causal language model: documents read from a .txt file (or a folder of them), split into
calibration and evaluation documents that never overlap, tokenized once, and cut into calibration sequences,
evaluation windows and timing prompts. Every runtime is fed the same token ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kompress.jobs.errors import InvalidInputError

SPLITS = ("calibration", "evaluation")


@dataclass(frozen=True)
class Document:
    title: str
    text: str
    split: str | None
    """calibration or evaluation when its heading says so."""


@dataclass
class TextSplit:
    calibration: list[np.ndarray]
    """data.text.calibrationSequences sequences of calibrationLength token ids (int64)."""
    evaluation: list[np.ndarray]
    """Non-overlapping windows of sequenceLength token ids from the evaluation documents."""
    prompts: list[np.ndarray]
    """Timing prompts of target.generation.promptTokens ids, from the evaluation documents."""
    sha256: str
    calibration_documents: list[str]
    evaluation_documents: list[str]
    calibration_tokens: int
    evaluation_tokens: int


def read_documents(path: Path, field: str = "data.uri") -> list[Document]:
    """A .txt file's documents (sections headed `### [split: ]title`), or one per .txt file of a folder."""
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise InvalidInputError(f"{path}: no text (expected a UTF-8 .txt file or a folder of them)", field=field)
    docs: list[Document] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"{f.name} is not UTF-8 text", field=field) from None
        docs.extend(_sections(text, f.stem))
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise InvalidInputError(f"{path}: the text is empty", field=field)
    return docs


def _sections(text: str, default_title: str) -> list[Document]:
    out: list[Document] = []
    title: str = default_title
    split: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("### "):
            if any(s.strip() for s in lines):
                out.append(Document(title, "\n".join(lines).strip(), split))
            heading = line[4:].strip()
            head, _, rest = heading.partition(":")
            split, title = (head.strip(), rest.strip()) if head.strip() in SPLITS and rest else (None, heading)
            lines = []
        else:
            lines.append(line)
    if any(s.strip() for s in lines):
        out.append(Document(title, "\n".join(lines).strip(), split))
    return out


def assign(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """(calibration, evaluation): headings decide; the rest alternate, evaluation first; a single document is
    cut in halves at a paragraph break (calibration first)."""
    if len(docs) == 1 and docs[0].split is None:
        paragraphs = docs[0].text.split("\n\n")
        half = max(1, len(paragraphs) // 2) if len(paragraphs) > 1 else 0
        if half == 0:
            words = docs[0].text.split(" ")
            first, second = " ".join(words[:len(words) // 2]), " ".join(words[len(words) // 2:])
        else:
            first, second = "\n\n".join(paragraphs[:half]), "\n\n".join(paragraphs[half:])
        return [Document(docs[0].title + " (first half)", first, "calibration")], [
            Document(docs[0].title + " (second half)", second, "evaluation")]
    calibration: list[Document] = []
    evaluation: list[Document] = []
    free = 0
    for d in docs:
        split = d.split
        if split is None:
            split = "evaluation" if free % 2 == 0 else "calibration"
            free += 1
        (calibration if split == "calibration" else evaluation).append(d)
    return calibration, evaluation


def _ids(tokenizer: Any, docs: list[Document]) -> list[np.ndarray]:
    return [np.asarray(tokenizer(d.text, add_special_tokens=False)["input_ids"], dtype=np.int64) for d in docs]


def _chunks(streams: list[np.ndarray], length: int, limit: int) -> list[np.ndarray]:
    """Non-overlapping chunks of `length` ids, never across documents, at most `limit`, taken round-robin over
    the documents so that a small limit still samples every document."""
    per_doc = [[s[i:i + length] for i in range(0, len(s) - length + 1, length)] for s in streams]
    out: list[np.ndarray] = []
    depth = 0
    while len(out) < limit and any(depth < len(c) for c in per_doc):
        out.extend(c[depth] for c in per_doc if depth < len(c))
        depth += 1
    return out[:limit]


# long: the checks, each naming the field to change, read best beside what they check
def split_text(path: Path, tokenizer: Any, *, sequence_length: int, evaluation_windows: int,
               calibration_sequences: int, calibration_length: int, prompt_tokens: int, prompts: int,
               field: str = "data.uri") -> TextSplit:
    docs = read_documents(path, field)
    digest = hashlib.sha256("\x1e".join(f"{d.split}\x1f{d.title}\x1f{d.text}" for d in docs).encode()).hexdigest()
    calibration_docs, evaluation_docs = assign(docs)
    if not evaluation_docs:
        raise InvalidInputError(f"{path.name}: no evaluation text (every document is headed calibration)",
                                field=field)
    cal_ids, eval_ids = _ids(tokenizer, calibration_docs), _ids(tokenizer, evaluation_docs)
    cal_tokens, eval_tokens = sum(len(s) for s in cal_ids), sum(len(s) for s in eval_ids)
    windows = _chunks(eval_ids, sequence_length, evaluation_windows)
    if len(windows) < 2:
        raise InvalidInputError(f"{path.name}: the evaluation text holds {eval_tokens} tokens, fewer than 2 windows "
                                f"of data.text.sequenceLength {sequence_length} (give more text or a shorter "
                                "sequenceLength)", field=field)
    calibration = _chunks(cal_ids, calibration_length, calibration_sequences)
    if len(calibration) < calibration_sequences:
        need = calibration_sequences * calibration_length
        raise InvalidInputError(f"{path.name}: text too short to calibrate: the calibration text holds {cal_tokens} "
                                f"tokens in {len(calibration_docs)} document(s), fewer than "
                                f"data.text.calibrationSequences x calibrationLength = {need} (give more text, or "
                                "fewer or shorter calibration sequences)", field=field)
    timing = _chunks(eval_ids, prompt_tokens, prompts)
    if not timing:
        raise InvalidInputError(f"{path.name}: no evaluation document holds target.generation.promptTokens "
                                f"{prompt_tokens} tokens", field=field)
    while len(timing) < prompts:
        timing.append(timing[len(timing) % max(1, len(timing))])
    return TextSplit(calibration, windows, timing, digest, [d.title for d in calibration_docs],
                     [d.title for d in evaluation_docs], cal_tokens, eval_tokens)


def slice_windows(path: Path, tokenizer: Any, *, sequence_length: int, windows: int,
                  field: str) -> tuple[list[np.ndarray], str]:
    """A data.slices text, all of it evaluation: up to `windows` windows of `sequence_length` tokens (round-robin
    over its documents), and its digest."""
    docs = read_documents(path, field)
    digest = hashlib.sha256("\x1e".join(f"{d.title}\x1f{d.text}" for d in docs).encode()).hexdigest()
    ids = _ids(tokenizer, docs)
    out = _chunks(ids, sequence_length, windows)
    if len(out) < 2:
        raise InvalidInputError(f"{path.name}: the slice holds {sum(len(s) for s in ids)} tokens, fewer than 2 windows "
                                f"of data.text.sequenceLength {sequence_length}", field=field)
    return out, digest
