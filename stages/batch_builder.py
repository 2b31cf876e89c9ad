"""batch_builder: consecutive face frames grouped for the GPU stages; cutaways down the
bypass to the sink, in order. What is held is released before a cutaway is bypassed, at an
index gap, when full, and at the end (graph/README.md, rule 3).

- `model: musetalk`: up to `batch_size` consecutive face frames per batch.
- `model: latentsync`: windows of `window` consecutive face frames of one shot
  (default 16, at most 24: the temporal attention's limit). A window never spans a cutaway
  or a gap. A shot shorter than a window runs with fewer frames. The tail of a longer shot
  does not pad with invented frames: its window starts earlier, taking the last frames of
  the previous window again as context (their model inputs only; they are not output twice).
  Each face track makes its own windows (several dubbed faces, a change of chosen face).
`model: auto` follows the graph's UNet stage.
"""
from __future__ import annotations

import numpy as np

from lipgraph.graph.batching import BatchRouter
from lipgraph.graph.items import Batch, Flush
from lipgraph.graph.stage import Stage

from .unet_model import bind_auto
from .fields import STACKED, STACKED_FLOAT32, WITH_CONTEXT, names


def stack_batch(items, context=()) -> Batch:
    """A batch with per-frame model inputs stacked (context frames, if any, first)."""
    data = {"n_context": len(context)}
    for key, stacked in STACKED.items():
        rows = list(context) + list(items) if key in WITH_CONTEXT else list(items)
        if rows and all(key in _data(r) for r in rows):
            arr = np.stack([_data(r)[key] for r in rows])
            data[stacked] = arr.astype(np.float32) if key in STACKED_FLOAT32 else arr
    return Batch(list(items), data)


def _data(row) -> dict:
    return row if isinstance(row, dict) else row.data


class WindowRouter(BatchRouter):
    """BatchRouter whose batches are windows of one shot with an overlapping tail."""

    def __init__(self, window: int, main: str = "main", bypass: str = "bypass"):
        super().__init__(window, main, bypass, make_batch=self._window)
        self.history: list[dict] = []     # model inputs of the shot's last emitted frames

    def _window(self, items) -> Batch:
        need = self.size - len(items)
        context = self.history[-need:] if need > 0 else []
        kept = (self.history + [{k: it.data[k] for k in WITH_CONTEXT if k in it.data}
                                for it in items])
        self.history = kept[-(self.size - 1):] if self.size > 1 else []
        return stack_batch(items, context)

    def end_shot(self):
        """Release the shot's tail (with context) and forget the shot."""
        yield from super().end_shot()
        self.history = []

    def add(self, item):
        if self.pending and item.index != self.pending[-1].index + 1:
            yield from self.end_shot()       # a gap: a new shot
        yield from super().add(item)

    def divert(self, item):
        yield from self.end_shot()
        yield from super().divert(item)


class LaneWindows:
    """LatentSync windows per face track (`face_id`; one lane without track ids): each track's
    frames make their own windows (own shot, context and tail), so a window is always one
    person's consecutive frames, also when several faces of a frame are dubbed or the chosen
    face changes. A track missing from a frame ends its shot on the next frame, so no window
    is held for a face that has gone (face_join waits for every face of a frame)."""

    def __init__(self, window: int, main: str = "main", bypass: str = "bypass"):
        self.window, self.main, self.bypass = window, main, bypass
        self.lanes: dict = {}           # track id -> (WindowRouter, last index)
        self.main_open = False

    def add(self, item):
        lane = item.data.get("face_id")
        for key, (router, last) in list(self.lanes.items()):
            if last < item.index - 1:        # absent from the frame before this one
                yield from self._end(key)
        router = self.lanes.get(lane, (None,))[0] or WindowRouter(self.window, self.main, self.bypass)
        self.lanes[lane] = (router, item.index)
        self.main_open = True
        yield from router.add(item)

    def _end(self, key):
        router, _ = self.lanes.pop(key)
        yield from router.end_shot()

    def end_shot(self):
        for key in list(self.lanes):
            yield from self._end(key)

    flush = end_shot

    def divert(self, item):
        yield from self.end_shot()
        if self.main_open:
            yield self.main, Flush(before=item.index)
            self.main_open = False
        yield self.bypass, item


class BatchBuilder(Stage):
    outputs = ("main", "bypass")
    params = {"model": "auto", "batch_size": 8, "window": 16}
    choices = {"model": ("auto", "musetalk", "latentsync")}
    renamed = {"mode": "model"}
    reads = names("box")
    writes = names("n_context", *STACKED.values())

    bind = bind_auto(model=lambda models: models[0])

    @classmethod
    def validate_params(cls, params):
        problems = []
        if params["batch_size"] < 1:
            problems.append(("batch_size", "must be >= 1"))
        if not 1 <= params["window"] <= 24:
            problems.append(("window", "must be within 1..24 (LatentSync's temporal limit)"))
        return problems

    def open(self):
        if self.p["model"] == "latentsync":
            self.router = LaneWindows(self.p["window"], "main", "bypass")
        else:
            self.router = BatchRouter(self.p["batch_size"], "main", "bypass", make_batch=stack_batch)

    def process(self, item, port):
        # pre-roll frames (before a resumed or split run's first output frame) only warm up
        # tracking and smoothing: they bypass the models, so a window starts at the boundary
        if item.data.get("box") is None or item.data.get("preroll"):
            yield from self.router.divert(item)
        else:
            yield from self.router.add(item)

    def on_flush(self, flush, port):
        yield from self.router.end_shot()
        yield from super().on_flush(flush, port)

    def finish(self):
        return self.router.flush()
