"""A cache of one value, for what only one of may be in memory at a time."""
from __future__ import annotations

from typing import Any, Callable


class LastOne:
    """A cache of one value: asking for another key drops the held value before making the new one
    (so that two models, or two layer caches, are never in memory together)."""

    def __init__(self) -> None:
        self.key: Any = None
        self.value: Any = None
        self.full = False

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        """The value for `key`, made by `make()` unless it is the one held."""
        if not self.full or self.key != key:
            self.key, self.value, self.full = None, None, False  # free the old value first
            self.value, self.key, self.full = make(), key, True
        return self.value
