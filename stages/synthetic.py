"""Synthetic stages for testing and benchmarking the engine without media or models.

Frames are arrays filled with a value derived from their index, so a sink can check that
every item arrived once, in order, through the expected path. `fail_at` raises at an index,
`kill_at` SIGKILLs the stage's own process at an index, `hang_at` never returns from that
index (a stuck driver: for the stall watchdog), `delay_s` simulates work that waits (I/O, a
GPU kernel) and `spin_s` work that holds a CPU core.

Importing this module registers the `synthetic_*` types; the package does not, so only the
tests (tests/conftest.py, through $LIPGRAPH_STAGE_MODULES) and benchmarks that use them do.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time

import numpy as np

from lipgraph.graph.batching import BatchRouter, Rebatcher
from lipgraph.graph.items import Info, Item
from lipgraph.graph.ordering import OrderedMerge
from lipgraph.graph.registry import register
from lipgraph.graph.stage import Stage


class SyntheticFailure(RuntimeError):
    pass


_FAULTS = {"fail_at": -1, "kill_at": -1, "hang_at": -1}     # what _maybe_fail reads


def _maybe_fail(stage: Stage, index: int) -> None:
    if index == stage.p.get("fail_at", -1):
        raise SyntheticFailure(f"synthetic failure at index {index}")
    flag = stage.p.get("fail_once", "")
    if flag and index == 0 and not os.path.exists(flag):
        open(flag, "w").close()             # the next attempt finds it and goes through
        raise SyntheticFailure(f"synthetic failure at index {index} (first attempt only)")
    if index == stage.p.get("kill_at", -1):
        os.kill(os.getpid(), signal.SIGKILL)
    if index == stage.p.get("hang_at", -1):
        hang_forever()


def hang_forever() -> None:
    """Block like a call that never returns (short sleeps, so a runner can still raise into
    this thread)."""
    while True:
        time.sleep(0.1)


def spin(seconds: float) -> None:
    """Do `seconds` of CPU work in this thread (pure Python, so the GIL is held too).
    Counted in thread CPU time: time spent preempted is not work done."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _trail(item: Item, name: str) -> None:
    item.data.setdefault("trail", []).append(name)


class SyntheticSource(Stage):
    """Emits `count` frames of `shape`, frame i filled with i % 251."""

    inputs = ()
    outputs = ("out",)
    params = {"count": 100, "shape": [8, 8, 3], "fps": 25.0, "start_index": 0, "delay_s": 0.0,
              "fresh": True, **_FAULTS}

    def generate(self):
        n, start = self.p["count"], self.p["start_index"]
        self.ctx.set_total(n)
        yield "out", Info(start_index=start, total=n, fps=self.p["fps"])
        shape = tuple(self.p["shape"])
        base = np.zeros(shape, np.uint8)
        for i in range(start, start + n):
            _maybe_fail(self, i)
            if self.p["delay_s"]:
                time.sleep(self.p["delay_s"])
            frame = np.full(shape, i % 251, np.uint8) if self.p["fresh"] else base
            yield "out", Item(i, {"frame": frame, "trail": []}, time_s=i / self.p["fps"])


class SyntheticMap(Stage):
    """Adds `add` to every frame (items or batches); optional cost per item (`delay_s`
    sleeping, `spin_s` on the CPU), failure, kill."""

    stateless = True
    params = {"add": 0, "delay_s": 0.0, "vary": False, "spin_s": 0.0, "fail_once": "", **_FAULTS}

    def process(self, item, port):
        for m in item.members():
            _maybe_fail(self, m.index)
            if self.p["add"]:
                m.data["frame"] = (m.data["frame"].astype(np.int32) + self.p["add"]).astype(np.uint8)
            _trail(m, self.name)
        if self.p["delay_s"]:
            # `vary`: items take 1/3 to 5/3 of delay_s, so replicas finish out of order
            scale = ((item.index * 7) % 5 + 1) / 3 if self.p["vary"] else 1.0
            time.sleep(self.p["delay_s"] * scale * len(item))
        if self.p["spin_s"]:
            spin(self.p["spin_s"] * len(item))
        yield "out", item


class SyntheticTee(Stage):
    """Sends every item down both outputs (the split of a diamond); each branch gets its
    own copy of the item's dict so branches do not see each other's changes."""

    outputs = ("a", "b")

    def process(self, item, port):
        yield "a", item
        yield "b", Item(item.index, dict(item.data, trail=list(item.data.get("trail", []))),
                        time_s=item.time, t0=item.t0)


class SyntheticZip(Stage):
    """Joins the two branches of a diamond: waits for index i on both inputs, emits one
    item whose frame is the element-wise maximum and whose trail holds both paths. It reads
    only from the branch that is behind, so it buffers at most one item."""

    inputs = ("a", "b")

    def open(self):
        self.held: dict[str, Item | None] = {"a": None, "b": None}

    def accepts(self):
        return [p for p, held in self.held.items() if held is None]

    def process(self, item, port):
        self.held[port] = item
        a, b = self.held["a"], self.held["b"]
        if a is None or b is None:
            return
        if a.index != b.index:
            raise RuntimeError(f"{self.name}: branches out of step (a at {a.index}, b at {b.index})")
        self.held = {"a": None, "b": None}
        a.data["frame"] = np.maximum(a.data["frame"], b.data["frame"])
        a.data["trail"] = a.data.get("trail", []) + b.data.get("trail", [])
        yield "out", a

    def finish(self):
        left = [p for p, held in self.held.items() if held is not None]
        if left:
            raise RuntimeError(f"{self.name}: input {left[0]!r} has item "
                               f"{self.held[left[0]].index} with no partner")
        return ()


def bypass_predicate(spec: str):
    """'none', 'all', 'alternate', 'runs:A:B' (A long then B bypassed), 'random:P:SEED'."""
    kind, *args = spec.split(":")
    fixed = {"none": lambda i: False, "all": lambda i: True, "alternate": lambda i: i % 2 == 1}
    if kind in fixed:
        return fixed[kind]
    if kind == "runs":
        a, b = int(args[0]), int(args[1])
        return lambda i: i % (a + b) >= a
    if kind == "random":
        p, seed = float(args[0]), int(args[1])
        return lambda i: random.Random(seed * 1_000_003 + i).random() < p
    raise ValueError(f"unknown bypass pattern {spec!r}")


class _Holding(Stage):
    """Holds items in `self.held` (a BatchRouter or Rebatcher); a Flush or the end releases them."""

    def on_flush(self, flush, port):
        yield from self.held.flush()
        yield from super().on_flush(flush, port)

    def finish(self):
        return self.held.flush()


class SyntheticRouter(_Holding):
    """Batches long-path items, sends the others down `bypass` (a stand-in batch builder)."""

    outputs = ("main", "bypass")
    params = {"batch_size": 4, "bypass": "alternate", **_FAULTS}

    @classmethod
    def validate_params(cls, params):
        try:
            bypass_predicate(params["bypass"])
        except (ValueError, IndexError) as exc:
            return [("bypass", str(exc))]
        return [("batch_size", "must be >= 1")] if params["batch_size"] < 1 else []

    def open(self):
        self.held = BatchRouter(self.p["batch_size"], "main", "bypass")
        self.pred = bypass_predicate(self.p["bypass"])

    def process(self, item, port):
        _maybe_fail(self, item.index)
        if self.pred(item.index):
            _trail(item, f"{self.name}:bypass")
            yield from self.held.divert(item)
        else:
            yield from self.held.add(item)


class SyntheticBatchMap(Stage):
    """A batched model stand-in: `delay_s` per batch plus `per_item_s` per item."""

    params = {"delay_s": 0.0, "per_item_s": 0.0, **_FAULTS}

    def process(self, batch, port):
        for m in batch.members():
            _maybe_fail(self, m.index)
            _trail(m, self.name)
        t = self.p["delay_s"] + self.p["per_item_s"] * len(batch)
        if t:
            time.sleep(t)
        yield "out", batch


class SyntheticRebatch(_Holding):
    """Collects items into batches; releases on Flush and at the end (downstream batcher)."""

    params = {"batch_size": 8}

    def open(self):
        self.held = Rebatcher(self.p["batch_size"], "out")

    def process(self, item, port):
        for m in item.members():
            yield from self.held.add(m)


class SyntheticUnbatch(Stage):
    stateless = True

    def process(self, item, port):
        for m in item.members():
            yield "out", m


class SyntheticSink(Stage):
    """Merges its inputs in index order and writes one JSON line per item to `path`
    (a temporary file renamed on success). Records index, frame value and trail."""

    outputs = ()
    params = {"path": "", "inputs": ["in"], "delay_s": 0.0, **_FAULTS}

    @classmethod
    def ports(cls, params):
        return tuple(params.get("inputs") or ("in",)), ()

    def open(self):
        self.merge = OrderedMerge(list(self.in_ports), name=self.name) if len(self.in_ports) > 1 else None
        self.f = None
        self.tmp = None
        if self.p["path"]:
            from lipgraph.media.partial import partial_path, sweep_partials
            sweep_partials(self.p["path"])
            self.tmp = partial_path(self.p["path"])
            self.ctx.register_temp(self.tmp)
            self.f = open(self.tmp, "w")
        self.count = 0

    def accepts(self):
        return self.merge.accepts() if self.merge else self.in_ports

    def on_info(self, info, port):
        if self.merge and "start_index" in info.data:
            self._write(self.merge.set_start(info.data["start_index"]))
        return ()

    def process(self, item, port):
        self._write(self.merge.push(port, item) if self.merge else [item])
        return ()

    def on_eos(self, port):
        if self.merge:
            self._write(self.merge.end(port))
        return ()

    def _write(self, msgs) -> None:
        for msg in msgs:
            for m in msg.members():
                _maybe_fail(self, m.index)
                if self.p["delay_s"]:
                    time.sleep(self.p["delay_s"])
                self.count += 1
                if self.f:
                    frame = m.data.get("frame")
                    value = int(frame.flat[0]) if frame is not None and frame.size else None
                    self.f.write(json.dumps({"index": m.index, "value": value,
                                             "trail": m.data.get("trail", [])}) + "\n")

    def finish(self):
        if self.merge:
            self.merge.finish()
        if self.f:
            self.close()
            os.replace(self.tmp, self.p["path"])
        return ()

    def close(self):
        # after a failed run the runner removes the temporary file
        if self.f:
            self.f.close()
            self.f = None


for _name, _cls in {"synthetic_source": SyntheticSource, "synthetic_map": SyntheticMap,
                    "synthetic_router": SyntheticRouter, "synthetic_tee": SyntheticTee,
                    "synthetic_zip": SyntheticZip, "synthetic_batch_map": SyntheticBatchMap,
                    "synthetic_rebatch": SyntheticRebatch, "synthetic_unbatch": SyntheticUnbatch,
                    "synthetic_sink": SyntheticSink}.items():
    register(_name, f"{__name__}:{_cls.__name__}")
