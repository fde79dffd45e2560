"""A sample's text, for the worst cases a report shows: the data's own `texts` array when it has one, else its
`input_ids` decoded by the model's tokenizer (a Hugging Face folder that carries one)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from kompress.jobs.io.data import Dataset

TextLookup = Callable[[Dataset, int], "str | None"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def lookup(model_dir: Path | None) -> TextLookup:
    """The text of row i of a dataset: its `texts` entry, else its token ids decoded with the tokenizer found
    in `model_dir` (loaded on first use; never fetched), else None."""
    tokenizer = functools.cache(lambda: _decoder(model_dir))

    def text(data: Dataset, row: int) -> str | None:
        if data.texts is not None:
            return str(data.texts[row])
        ids = data.inputs.get("input_ids")
        decode = tokenizer() if ids is not None and ids.ndim == 2 else None
        if decode is None or ids is None:
            return None
        mask = data.inputs.get("attention_mask")
        tokens = ids[row][mask[row] > 0] if mask is not None and mask.shape == ids.shape else ids[row]
        return decode([int(t) for t in tokens])

    return text


def _decoder(model_dir: Path | None) -> Callable[[list[int]], str] | None:
    if model_dir is None or not model_dir.is_dir() or not any((model_dir / f).exists() for f in TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception:  # the text is an aid to reading the worst cases; the report stands without it
        return None
    return lambda ids: str(tok.decode(ids, skip_special_tokens=True))
