"""Messages that travel along graph edges.

Data messages are `Item` (one frame or record, keyed by its stream index) and `Batch`
(several consecutive items handled as one unit by batched stages). Control messages are
`Info` (stream facts such as frame rate and frame count, sent by sources before any item),
`Flush` (a gap: the router upstream sent the following items elsewhere, so anything held
back must be released now) and `EOS` (end of stream on that edge).
"""
from __future__ import annotations

import time
from typing import Any, Iterator


class Item:
    """One unit of the stream: a frame or record with its index in the source stream."""

    __slots__ = ("index", "time", "data", "t0")

    def __init__(self, index: int, data: dict | None = None, time_s: float | None = None,
                 t0: float | None = None):
        self.index = int(index)
        self.time = time_s
        self.data = {} if data is None else data
        # monotonic creation time, shared clock across processes on one machine (latency)
        self.t0 = time.monotonic() if t0 is None else t0

    def __getstate__(self):
        return (self.index, self.time, self.data, self.t0)

    def __setstate__(self, state):
        self.index, self.time, self.data, self.t0 = state

    def __len__(self) -> int:
        return 1

    @property
    def last_index(self) -> int:
        return self.index

    def members(self) -> Iterator["Item"]:
        yield self

    def __repr__(self) -> str:
        keys = ",".join(self.data)
        return f"Item({self.index}, t={self.time}, [{keys}])"


class Batch:
    """Consecutive items processed together; `data` holds the stacked per-batch arrays."""

    __slots__ = ("items", "data")

    def __init__(self, items: list[Item], data: dict | None = None):
        if not items:
            raise ValueError("a Batch needs at least one item")
        self.items = items
        self.data = {} if data is None else data

    def __getstate__(self):
        return (self.items, self.data)

    def __setstate__(self, state):
        self.items, self.data = state

    def __len__(self) -> int:
        return len(self.items)

    @property
    def index(self) -> int:
        return self.items[0].index

    @property
    def last_index(self) -> int:
        return self.items[-1].index

    def members(self) -> Iterator[Item]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"Batch({self.index}..{self.last_index}, n={len(self.items)})"


class _OneField:
    """A control item with one slot, pickled as a 1-tuple: slots leave no `__dict__` to pickle,
    and a tuple is never falsy, so an empty value (`Info()`, `Flush()`) survives the queue."""

    __slots__ = ()

    def __getstate__(self):
        return (getattr(self, self.__slots__[0]),)

    def __setstate__(self, state):
        setattr(self, self.__slots__[0], state[0])


class Info(_OneField):
    """Stream facts from a source (fps, total, start_index...), forwarded before items."""

    __slots__ = ("data",)

    def __init__(self, data: dict | None = None, **kw):
        self.data = dict(data or {}, **kw)

    def __repr__(self) -> str:
        return f"Info({self.data})"


class Flush(_OneField):
    """A gap marker: release held items. `before` is the index that went down another path."""

    __slots__ = ("before",)

    def __init__(self, before: int | None = None):
        self.before = before

    def __repr__(self) -> str:
        return f"Flush(before={self.before})"


class _EndOfStream:
    __slots__ = ()

    def __repr__(self) -> str:
        return "EOS"

    def __reduce__(self):
        return "EOS"


EOS = _EndOfStream()

def count_items(msg: Any) -> int:
    """Frames carried by a message (a Batch counts its members)."""
    return len(msg) if isinstance(msg, (Item, Batch)) else 0
