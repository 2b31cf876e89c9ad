"""Streams through bounded graphs: order, bypass, replicas, merges, and no deadlock in the
adversarial cases, on both runners."""
import signal

import pytest

from lipgraph.graph.items import Batch, Item
from lipgraph.graph.ordering import OrderedMerge, OrderError
from lipgraph.stages.synthetic import bypass_predicate
from tests.engine_util import bypass_graph, rows, run, write_graph


class RunTimedOut(BaseException):
    pass


@pytest.fixture
def alarm():
    """Fail instead of hanging: a deadlocked run raises TimeoutError after `seconds`."""
    def _raise(signum, frame):
        raise RunTimedOut("run did not finish in time (deadlock?)")
    old = signal.signal(signal.SIGALRM, _raise)

    def arm(seconds):
        signal.alarm(seconds)
    yield arm
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def check_rows(out, count, pattern):
    got = rows(out)
    assert [r["index"] for r in got] == list(range(count))
    pred = bypass_predicate(pattern)
    for r in got:
        assert r["value"] == r["index"] % 251
        if pred(r["index"]):
            assert r["trail"] == ["route:bypass"], r
        else:
            assert "model" in r["trail"] and "route:bypass" not in r["trail"], r


CASES = [
    ("alternate", 60, None),
    ("runs:3:80", 200, None),       # bypass runs far longer than every queue's capacity
    ("runs:9:2", 60, None),
    ("none", 40, None),
    ("all", 40, None),
    ("none", 1, None),              # a single item
    ("all", 1, None),
    ("none", 0, None),              # zero items
    ("runs:5:40", 120, 8),          # a second batcher downstream of the router
    ("random:0.5:7", 100, 3),
]


@pytest.mark.parametrize("pattern,count,rebatch", CASES)
@pytest.mark.parametrize("queue_size", [1, 2])
def test_inline_adversarial(tmp_path, pattern, count, rebatch, queue_size):
    out = str(tmp_path / "out.jsonl")
    path = write_graph(tmp_path, bypass_graph(out, count, pattern, queue_size=queue_size, rebatch=rebatch))
    res = run(path, "inline")
    assert res.ok, res.error
    check_rows(out, count, pattern)


@pytest.mark.parametrize("pattern,count,rebatch", CASES)
def test_process_adversarial(tmp_path, alarm, pattern, count, rebatch):
    out = str(tmp_path / "out.jsonl")
    path = write_graph(tmp_path, bypass_graph(out, count, pattern, queue_size=1, rebatch=rebatch))
    alarm(60)
    res = run(path, "process")
    assert res.ok, res.error
    check_rows(out, count, pattern)
    st = res.profile["stages"]
    assert st["sink"]["items_in"] == count
    long_items = sum(1 for i in range(count) if not bypass_predicate(pattern)(i))
    assert st["model"]["items_in"] == long_items


def test_replicas_keep_order_and_runners_agree(tmp_path, alarm):
    out_p, out_i = str(tmp_path / "p.jsonl"), str(tmp_path / "i.jsonl")
    alarm(90)
    path = write_graph(tmp_path, bypass_graph(out_p, 150, "runs:7:5", queue_size=2, workers=3), "p.yaml")
    res = run(path, "process")
    assert res.ok, res.error
    path_i = write_graph(tmp_path, bypass_graph(out_i, 150, "runs:7:5", queue_size=2, workers=3), "i.yaml")
    assert run(path_i, "inline").ok
    assert rows(out_p) == rows(out_i)
    check_rows(out_p, 150, "runs:7:5")
    procs = [p for p in res.profile["processes"] if p["group"] != "runner"]
    assert sorted(p["replica"] for p in procs if p["group"] == "post") == [0, 1, 2]
    assert len({p["pid"] for p in procs}) == len(procs)     # every group/replica its own process


def test_replicated_map_with_delays_keeps_order(tmp_path, alarm):
    """Replicas finishing out of order still deliver in order (round-robin collection)."""
    out = str(tmp_path / "o.jsonl")
    doc = {"queue_size": 2, "stages": {
        "src": {"type": "synthetic_source", "group": "io", "params": {"count": 40}},
        "work": {"type": "synthetic_map", "group": "w", "workers": 3,
                 "params": {"add": 1, "delay_s": 0.01, "vary": True}},
        "sink": {"type": "synthetic_sink", "group": "io", "params": {"path": out}}},
        "edges": ["src.out -> work.in", "work.out -> sink.in"]}
    alarm(60)
    res = run(write_graph(tmp_path, doc), "process")
    assert res.ok, res.error
    got = rows(out)
    assert [r["index"] for r in got] == list(range(40))
    assert all(r["value"] == (r["index"] % 251 + 1) % 256 for r in got)


def test_same_group_threads_share_a_process(tmp_path, alarm):
    out = str(tmp_path / "o.jsonl")
    alarm(60)
    path = write_graph(tmp_path, bypass_graph(out, 30, "alternate", grouped=False))
    res = run(path, "process")
    assert res.ok
    assert [p["group"] for p in res.profile["processes"]] == ["all", "runner"]
    assert all(not e["cross_process"] for e in res.profile["edges"].values())
    check_rows(out, 30, "alternate")


@pytest.mark.parametrize("runner", ["process", "inline"])
def test_diamond_joins_both_branches_in_order(tmp_path, alarm, runner):
    """tee -> two branches of different lengths and speeds in their own processes -> zip:
    every index arrives once with both branches' work, and the slow branch is the
    bottleneck the profile names."""
    out = str(tmp_path / "o.jsonl")
    doc = {"queue_size": 2, "stages": {
        "src": {"type": "synthetic_source", "group": "io", "params": {"count": 30}},
        "tee": {"type": "synthetic_tee", "group": "io"},
        "a1": {"type": "synthetic_map", "group": "a", "params": {"add": 1}},
        "a2": {"type": "synthetic_map", "group": "a2", "params": {"add": 1, "delay_s": 0.02}},
        "b1": {"type": "synthetic_map", "group": "b", "params": {"add": 5}},
        "zip": {"type": "synthetic_zip", "group": "io"},
        "sink": {"type": "synthetic_sink", "group": "io", "params": {"path": out}}},
        "edges": ["src.out -> tee.in", "tee.a -> a1.in", "a1.out -> a2.in", "a2.out -> zip.a",
                  "tee.b -> b1.in", "b1.out -> zip.b", "zip.out -> sink.in"]}
    alarm(60)
    res = run(write_graph(tmp_path, doc), runner)
    assert res.ok, res.error
    got = rows(out)
    assert [r["index"] for r in got] == list(range(30))
    assert all(r["value"] == r["index"] % 251 + 5 for r in got)       # max(i + 2, i + 5)
    assert all(r["trail"] == ["a1", "a2", "b1"] for r in got)
    assert res.profile["bottleneck"]["stage"] == "a2"


def test_big_frames_cross_processes(tmp_path, alarm):
    """1080p frames through two process hops arrive intact (shared memory path)."""
    out = str(tmp_path / "o.jsonl")
    doc = {"queue_size": 2, "stages": {
        "src": {"type": "synthetic_source", "group": "a", "params": {"count": 12, "shape": [1080, 1920, 3]}},
        "work": {"type": "synthetic_map", "group": "b", "params": {"add": 3}},
        "sink": {"type": "synthetic_sink", "group": "a", "params": {"path": out}}},
        "edges": ["src.out -> work.in", "work.out -> sink.in"]}
    alarm(60)
    res = run(write_graph(tmp_path, doc), "process")
    assert res.ok, res.error
    assert [r["value"] for r in rows(out)] == [(i + 3) % 256 for i in range(12)]


# ----- the ordering primitive -------------------------------------------------------------
def test_ordered_merge_holds_one_head_per_input():
    m = OrderedMerge(["a", "b"], start=0)
    assert m.push("b", Item(1)) == [] and m.held == 1
    assert m.accepts() == ["a"]
    out = m.push("a", Item(0))
    assert [x.index for x in out] == [0, 1] and m.held == 0
    out = m.push("a", Batch([Item(2), Item(3), Item(4)]))
    assert [x.index for x in out] == [2] and m.next == 5


def test_ordered_merge_detects_missing_and_duplicates():
    m = OrderedMerge(["a", "b"], start=0)
    m.push("a", Item(1))
    with pytest.raises(OrderError, match="index 0 is missing"):
        m.push("b", Item(2))
    m = OrderedMerge(["a", "b"], start=0)
    m.push("a", Item(0))
    with pytest.raises(OrderError, match="duplicate or out of order"):
        m.push("b", Item(0))
    m = OrderedMerge(["a", "b"], start=0)
    m.push("a", Item(1))
    with pytest.raises(OrderError, match="index 0 is missing"):
        m.end("b")      # b ended without ever carrying index 0


def test_ordered_merge_rejects_holey_batch():
    m = OrderedMerge(["a", "b"], start=0)
    with pytest.raises(OrderError, match="not contiguous"):
        m.push("a", Batch([Item(0), Item(2)]))


def test_ordered_merge_unknown_start_waits_for_all_heads():
    m = OrderedMerge(["a", "b"])
    assert m.push("a", Item(5)) == []
    out = m.push("b", Item(3))
    assert [x.index for x in out] == [3]
    assert m.next == 4


# ----- deadlock detection in the inline runner ----------------------------------------------
from lipgraph.graph.stage import Stage  # noqa: E402


class GreedyBatcher(Stage):
    """Breaks rule 3: holds items until it has 1000 and ignores Flush."""
    def open(self):
        self.held = []

    def process(self, item, port):
        self.held.extend(item.members())
        if len(self.held) >= 1000:
            yield "out", Batch(self.held)
            self.held = []

    def on_flush(self, flush, port):
        return ()

    def finish(self):
        if self.held:
            yield "out", Batch(self.held)


def test_inline_runner_reports_deadlock_of_rule_breaking_stage(tmp_path):
    from lipgraph.graph.registry import register
    register("greedy_batcher", "tests.test_engine_streams:GreedyBatcher")
    out = str(tmp_path / "o.jsonl")
    doc = bypass_graph(out, 100, "runs:2:30", queue_size=1)
    doc["stages"]["model"]["type"] = "greedy_batcher"
    res = run(write_graph(tmp_path, doc), "inline")
    assert res.status == "failed"
    assert res.error["kind"] == "deadlock" and "no stage can make progress" in res.error["message"]
    assert "edge into" in res.error["message"]


def test_ordered_merge_start_learned_after_a_head_arrived():
    """The bypass path is shorter: its Info and first item can arrive before the long
    path's Info. Learning the start must release the waiting head."""
    m = OrderedMerge(["main", "bypass"])
    assert m.push("bypass", Item(0)) == []
    assert [x.index for x in m.set_start(0)] == [0]
    assert m.accepts() == ["main", "bypass"]
