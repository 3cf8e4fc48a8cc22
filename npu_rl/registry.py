"""Named registries: the single source of truth for every choice a config string makes.

A registry maps a name (`grpo`, `token-mean`, `vllm`, `tensorboard`, ...) to a function or factory.
Components register themselves with a decorator beside their definition; config validation asks the
registry whether a name exists and, when it does not, lists the registered names with the closest
match. Adding an estimator, loss, backend or tracker is one function plus one decorator.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name that is not registered; the message lists the registered ones.

    A KeyError for lookups and a ValueError for callers that treat it as a bad setting."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """An ordered name -> object map with a registering decorator and helpful lookup errors."""

    def __init__(self, kind: str, redirects: dict[str, str] | None = None) -> None:
        self.kind = kind  # e.g. "advantage estimator", used in error messages
        self._items: dict[str, T] = {}
        # names people ask for that are spelled otherwise here -> what to use (beats a look-alike guess)
        self.redirects = redirects or {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator registering the object under one or more names (aliases share one object)."""

        def wrap(obj: T) -> T:
            for name in names:
                if name in self._items and self._items[name] is not obj:
                    raise ValueError(f"{self.kind} {name!r} is registered twice")
                self._items[name] = obj
            return obj

        return wrap

    def add(self, name: str, obj: T) -> T:
        """Register `obj` under `name` without a decorator (for lazily imported factories)."""
        return self.register(name)(obj)

    def get(self, name: str, key: str | None = None) -> T:
        """The object registered as `name`; `key` (a dotted config key) is named in the error."""
        if name not in self._items:
            raise UnknownName(self.unknown_message(name, key))
        return self._items[name]

    def unknown_message(self, name: object, key: str | None = None) -> str:
        hint = difflib.get_close_matches(str(name), list(self._items), n=1)
        where = f"{key}: " if key else ""
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        if str(name) in self.redirects:
            extra = f" (use {self.redirects[str(name)]})"
        return f"{where}unknown {self.kind} {name!r}{extra}; registered: {', '.join(self._items)}"

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
