"""Routing items to a batched long path or a bypass, with the flush rules that keep a
bounded graph free of deadlock (graph/README.md).

`Rebatcher` groups consecutive items (or several items of one index) into batches of up to
`size` and releases what it holds at an index discontinuity, on `flush()` (call it on a Flush
message) and at end of stream, so it may sit anywhere on a long path.

`BatchRouter` is a Rebatcher that also sends some items down a bypass. It releases the batch
it holds *before* it sends any later item elsewhere, and marks each switch away from the
long path with a `Flush`, so batching stages further down the long path release too.
"""
from __future__ import annotations

from typing import Callable, Iterator

from .items import Batch, Flush, Item

Emit = tuple[str, object]


class Rebatcher:
    def __init__(self, size: int, port: str = "out",
                 make_batch: Callable[[list[Item]], Batch] = Batch):
        if size < 1:
            raise ValueError("batch size must be >= 1")
        self.size = size
        self.port = port
        self.make_batch = make_batch
        self.pending: list[Item] = []

    def add(self, item: Item) -> Iterator[Emit]:
        # the next index, or the same one again (several items of one frame: its faces)
        if self.pending and item.index - self.pending[-1].index not in (0, 1):
            yield from self.flush()
        self.pending.append(item)
        if len(self.pending) >= self.size:
            yield from self.flush()

    def flush(self) -> Iterator[Emit]:
        if self.pending:
            items, self.pending = self.pending, []
            yield self.port, self.make_batch(items)


class BatchRouter(Rebatcher):
    def __init__(self, size: int, main: str = "main", bypass: str = "bypass",
                 make_batch: Callable[[list[Item]], Batch] = Batch):
        super().__init__(size, main, make_batch)
        self.bypass = bypass
        self.main_open = False      # something went down main since the last Flush marker

    def add(self, item: Item) -> Iterator[Emit]:
        """A long-path item."""
        self.main_open = True
        yield from super().add(item)

    def end_shot(self) -> Iterator[Emit]:
        """A break in the stream (a Flush from upstream): release what is held."""
        yield from self.flush()

    def divert(self, item: Item) -> Iterator[Emit]:
        """A bypass item: release what is held, mark the gap on the long path, then bypass."""
        yield from self.flush()
        if self.main_open:
            yield self.port, Flush(before=item.index)
            self.main_open = False
        yield self.bypass, item
