"""Errors the engine reports to users, each mapped to a process exit code.

A user error is one line that names the problem (and the spec field when there is one);
the CLI prints it without a traceback.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    SUCCESS = 0
    INVALID_INPUT = 2
    GATES_REJECTED = 3
    RUNTIME_FAILURE = 4


class KompressError(Exception):
    """Base class: carries the exit code and an optional spec field path."""

    exit_code = ExitCode.RUNTIME_FAILURE

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidInputError(KompressError):
    """The spec, the model, the data or a storage location is wrong; a retry will not help."""

    exit_code = ExitCode.INVALID_INPUT


class SpecError(InvalidInputError):
    """The spec failed validation; ``problems`` lists every (field path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "; ".join(f"{path or '<root>'}: {msg}" for path, msg in problems)
        super().__init__(f"invalid spec: {lines}")


class RuntimeFailure(KompressError):
    """Something failed while running (out of memory, a library bug); a retry may help."""

    exit_code = ExitCode.RUNTIME_FAILURE


TORCH_MODULES = ("torch", "transformers", "torch_pruning", "onnx2torch", "torchvision")
"""The `torch` extra's modules (kompress-jobs[torch]): the slim image and `pip install kompress-jobs[onnx]`
have none of them."""


def require_torch(what: str, *, field: str | None = None) -> None:
    """Fail with a one-line InvalidInputError (exit 2, no traceback) when ``what`` needs PyTorch and this
    install has only the ONNX half of the engine. Only looks for the modules; imports nothing."""
    import importlib.util

    missing = [m for m in TORCH_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidInputError(
            f"{what} needs the full engine image (extra `torch`: kompress-jobs[torch] or [engine]); this "
            f"install has only the ONNX techniques (the slim image, extra `onnx`: no {', '.join(missing)})",
            field=field)


def require_modules(what: str, modules: tuple[str, ...], extra: str, *, field: str | None = None) -> None:
    """A one-line InvalidInputError (exit 2) when `what` needs `modules` (installed by kompress-jobs[`extra`])
    and this install lacks some. Only looks for them; imports nothing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidInputError(f"{what} needs extra `{extra}` (kompress-jobs[{extra}]; in [engine] and the full "
                                f"image); this install has no {', '.join(missing)}", field=field)


def first_line(err: BaseException) -> str:
    """An exception as one short line (its type and the first line of its message), for errors that wrap a
    library's."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:240]}" if text else type(err).__name__
