"""Resumable state of long work (training epochs, search trials), kept where a restarted Job finds it.

The Job's output prefix is stable across pod restarts (it is derived from the Job's name), so checkpoints go
to ``<output>/checkpoints/<scope>/``, local folder or S3. A scope name carries a fingerprint of everything
that produced it (source model, data, the steps so far), so a changed spec never resumes from stale state.
Weights are stored as safetensors and optimizer state is read back with ``torch.load(weights_only=True)``:
resuming never unpickles arbitrary objects."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from kompress.jobs.io.storage import Store


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Checkpoints:
    """A folder of checkpoint files; ``Checkpoints(None)`` keeps nothing (every method is a no-op)."""

    def __init__(self, store: Store | None, prefix: str = "checkpoints") -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def scope(self, name: str) -> Checkpoints:
        return Checkpoints(self.store, f"{self.prefix}/{name}")

    def _rel(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def read_json(self, name: str) -> Any:
        if self.store is None:
            return None
        raw = self.store.read(self._rel(name))
        return None if raw is None else json.loads(raw)

    def write_json(self, name: str, value: Any) -> None:
        if self.store is not None:
            self.store.write(self._rel(name), json.dumps(value, indent=1, sort_keys=True).encode())

    def save_training(self, name: str, module: Any, optimizer: Any, state: dict[str, Any]) -> None:
        """Weights (safetensors), optimizer state and a JSON progress record; the JSON goes last, so a kill
        while saving leaves the previous complete checkpoint in effect."""
        if self.store is None:
            return
        import torch
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
        self.store.write(self._rel(f"{name}.weights.safetensors"), save(tensors))
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        self.store.write(self._rel(f"{name}.optimizer.pt"), buffer.getvalue())
        self.write_json(f"{name}.json", state)

    def load_training(self, name: str, module: Any, optimizer: Any) -> dict[str, Any] | None:
        """Restore weights and optimizer state into the given objects; the saved progress record, or None."""
        state = self.read_json(f"{name}.json")
        if state is None or self.store is None:
            return None
        import torch
        from safetensors.torch import load

        weights = self.store.read(self._rel(f"{name}.weights.safetensors"))
        opt = self.store.read(self._rel(f"{name}.optimizer.pt"))
        if weights is None or opt is None:
            return None
        module.load_state_dict(load(weights))
        optimizer.load_state_dict(torch.load(io.BytesIO(opt), weights_only=True))
        return state

    def put_file(self, name: str, path: Path) -> None:
        if self.store is not None:
            self.store.put_file(self._rel(name), path)

    def get_file(self, name: str, dest: Path) -> bool:
        if self.store is None:
            return False
        raw = self.store.read(self._rel(name))
        if raw is None:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(raw)
        return True
