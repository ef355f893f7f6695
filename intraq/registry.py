"""Name -> factory registries (datasets, teachers, synthesizers), in the spirit of timm's model registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from intraq.errors import UserInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """A small mapping of names to factories that fails with the list of known names; an entry may carry
    metadata given where it is registered (e.g. a profile's evidence tier), so the two cannot drift apart."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = item
            self._meta[name] = dict(meta)
            return item

        return decorator

    def meta(self, name: str) -> dict[str, Any]:
        """What `name` was registered with (unknown names fail like `get`)."""
        self.get(name)
        return dict(self._meta[name])

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise UserInputError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
