"""batch_builder: consecutive face frames in batches for the GPU stages; cutaways down the
bypass to the sink, in order. A batch is released at a cutaway (before the cutaway is
bypassed), at an index gap, when full, and at the end (graph/README.md, rule 3)."""
from __future__ import annotations

import numpy as np

from graph.batching import BatchRouter
from graph.items import Batch
from graph.stage import Stage


def stack_batch(items) -> Batch:
    """A batch with the crops and audio tokens stacked for the model stages."""
    data = {"crops": np.stack([it.data["crop"] for it in items])}
    if all("audio" in it.data for it in items):
        data["audio"] = np.stack([it.data["audio"] for it in items]).astype(np.float32)
    return Batch(list(items), data)


class BatchBuilder(Stage):
    outputs = ("main", "bypass")
    params = {"batch_size": 8}

    @classmethod
    def validate_params(cls, params):
        return [("batch_size", "must be >= 1")] if params["batch_size"] < 1 else []

    def open(self):
        self.router = BatchRouter(self.p["batch_size"], "main", "bypass", make_batch=stack_batch)

    def process(self, item, port):
        if item.data.get("box") is None:
            yield from self.router.divert(item)
        else:
            yield from self.router.add(item)

    def on_flush(self, flush, port):
        yield from self.router.flush()
        yield from super().on_flush(flush, port)

    def finish(self):
        return self.router.flush()
