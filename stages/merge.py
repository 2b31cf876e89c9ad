"""merge: several index-ordered inputs in, one index-ordered stream out."""
from __future__ import annotations

from lipgraph.graph.items import Batch
from lipgraph.graph.ordering import OrderedMerge
from lipgraph.graph.stage import Stage


class Merge(Stage):
    """Restores index order where a bypass rejoins the long path. Batches are passed on
    whole (or split into items with `unbatch: true`). Holds at most one message per input."""

    params = {"inputs": ["main", "bypass"], "unbatch": False}
    reads = writes = ()

    @classmethod
    def ports(cls, params):
        return tuple(params.get("inputs") or ("main", "bypass")), ("out",)

    @classmethod
    def validate_params(cls, params):
        ins = params.get("inputs") or []
        if len(ins) < 2 or len(set(ins)) != len(ins) or not all(isinstance(p, str) for p in ins):
            return [("inputs", "expected at least two distinct port names")]
        return []

    def open(self):
        self.merge = OrderedMerge(list(self.in_ports), name=self.name)

    def accepts(self):
        return self.merge.accepts()

    def on_info(self, info, port):
        if "start_index" in info.data:
            for msg in self.merge.set_start(info.data["start_index"]):
                yield from self._out(msg)
        yield from super().on_info(info, port)

    def on_flush(self, flush, port):
        return ()   # the merged stream is contiguous: gaps upstream mean nothing after here

    def process(self, item, port):
        for msg in self.merge.push(port, item):
            yield from self._out(msg)

    def on_eos(self, port):
        for msg in self.merge.end(port):
            yield from self._out(msg)

    def finish(self):
        self.merge.finish()
        return ()

    def _out(self, msg):
        if self.p["unbatch"] and isinstance(msg, Batch):
            for m in msg.items:
                yield "out", m
        else:
            yield "out", msg
