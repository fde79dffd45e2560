"""A registry of named plugins (the runtimes, the tasks): built-ins listed once, plugins and tests register
their own. A leaf: it imports only errors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from kompress.jobs.errors import InvalidInputError


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Plugins by name, in registration order. `kind` and `field` word the error for an unknown name (the spec
    field that named it)."""

    def __init__(self, kind: str, field: str, builtin: Iterable[T]) -> None:
        self.kind, self.field = kind, field
        self.builtin = tuple(builtin)
        self._items: dict[str, T] = {}
        for item in self.builtin:
            self.register(item)

    def register(self, item: T) -> T:
        """Add a plugin (a name already registered is replaced: a test's fake, or a plugin's override)."""
        self._items[item.name] = item
        return item

    def unregister(self, name: str) -> None:
        if name in {b.name for b in self.builtin}:
            raise ValueError(f"{name} is a built-in {self.kind}")
        self._items.pop(name, None)

    def names(self) -> list[str]:
        return list(self._items)

    def all(self) -> list[T]:
        return list(self._items.values())

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise InvalidInputError(f"unknown {self.kind} {name!r}; registered {self.kind}s: "
                                    f"{', '.join(self._items)}", field=self.field) from None
