"""Progress for long steps: step lines on stderr, and bars when stderr is a terminal (periodic lines in
Job logs, where bars would only add noise)."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, total_steps: int, stream: Any = None, quiet: bool = False) -> None:
        self.total = total_steps
        self.current = 0
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.started = time.perf_counter()

    def step(self, text: str) -> None:
        self.current += 1
        self._line(f"[{self.current}/{self.total}] {text}")

    def info(self, text: str) -> None:
        self._line(f"      {text}")

    def _line(self, text: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self.started
            print(f"kompress {elapsed:7.1f}s {text}", file=self.stream, flush=True)

    def bar(self, total: int, desc: str, unit: str) -> Any:
        if self.quiet or not (hasattr(self.stream, "isatty") and self.stream.isatty()):
            return _PeriodicLines(self, total, desc, unit)
        from tqdm import tqdm

        return tqdm(total=total, desc=f"      {desc}", unit=unit, file=self.stream, leave=False, dynamic_ncols=True)


class _PeriodicLines:
    """A progress bar for logs (a Job's, CI's): one line every PERIOD seconds instead of redraws."""

    PERIOD = 10.0

    def __init__(self, progress: Progress, total: int, desc: str, unit: str) -> None:
        self.progress, self.total, self.desc, self.unit = progress, total, desc, unit
        self.done = 0
        self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if time.perf_counter() - self.last >= self.PERIOD:
            self.last = time.perf_counter()
            self.progress.info(f"{self.desc}: {self.done}/{self.total} {self.unit}s")

    def close(self) -> None:
        pass
