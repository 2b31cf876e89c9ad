"""Edges between processes: one bounded queue, or one per replica where either end is a
replicated stage. Into one, data messages are dealt round-robin (a Flush goes with the next
data message, Info and EOS to all); out of one, each replica marks the end of each input's
outputs with a TURN token and the receiver reads the replicas in the same order, so the
stream keeps its order with no reorder buffer. A codec makes what the queues carry:
shared-memory pickles (`graph.shm`), or with Ray object references.
"""
from __future__ import annotations

import threading
import time

from lipgraph.graph import shm
from lipgraph.graph.channels import Aborted, Channel
from lipgraph.graph.items import EOS, Batch, Info, Item

TURN = b""          # never a valid pickle: marks "next replica" on replicated outputs


class ShmCodec:
    def __init__(self, run_id: str):
        self.run_id = run_id

    def encode(self, msg):
        return shm.dumps(msg, self.run_id)

    @staticmethod
    def decode(data):
        return shm.loads(data)


def edge_queues(graph, make) -> dict:
    """Edge name -> its queues (`make(edge, i)`), for every edge between groups: one queue,
    or one per replica of the replicated end."""
    return {e.name: [make(e, i) for i in range(max(graph.stages[e.src].workers,
                                                     graph.stages[e.dst].workers))]
            for e in graph.edges if graph.is_cross_group(e)}


class QueueOutput:
    """The sending end of a cross-process edge."""

    def __init__(self, queues: list, codec):
        self.queues = queues
        self.codec = codec
        self.k = 0   # data messages sent (round-robin position)

    def put(self, msg) -> float:
        if msg is EOS or isinstance(msg, Info):
            targets = self.queues
        else:
            targets = [self.queues[self.k % len(self.queues)]]
            self.k += isinstance(msg, (Item, Batch))
        blocked = 0.0
        for q in targets:       # each receiver maps (and unlinks) a segment of its own
            data = self.codec.encode(msg)
            t = time.monotonic()
            q.put(data)
            blocked += time.monotonic() - t
        return blocked

    def turn(self) -> None:
        self.queues[0].put(TURN)


class Receiver(threading.Thread):
    """Moves one incoming cross-process edge into the stage's local channel."""

    def __init__(self, queues: list, channel: Channel, on_error, name: str, decode=ShmCodec.decode):
        super().__init__(name=f"recv:{name}", daemon=True)
        self.decode = decode
        self.queues = queues
        self.channel = channel
        self.on_error = on_error
        self.edge = name

    def run(self) -> None:
        try:
            self._collect()
        except Aborted:
            return
        except BaseException as exc:   # a broken message: report as the consumer's failure
            self.on_error(exc, self.edge)

    def _collect(self) -> None:
        n = len(self.queues)
        r = 0
        while True:
            data = self.queues[r].get()
            if data == TURN:
                r = (r + 1) % n
                continue
            msg = self.decode(data)
            if msg is EOS:
                break
            if isinstance(msg, Info) and r != 0:
                continue   # every replica forwards the same Info: pass replica 0's only
            self.channel.put(msg)
        # replica r ended on its turn, so no data message follows anywhere: drain the others
        for j in range(n):
            while j != r:
                data = self.queues[j].get()
                if data == TURN:
                    continue
                msg = self.decode(data)
                if msg is EOS:
                    break
                if not isinstance(msg, Info):
                    self.channel.put(msg)
        self.channel.put(EOS)
