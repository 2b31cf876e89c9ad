"""Edges between processes: bounded multiprocessing queues carrying shared-memory handles.

An edge between two groups is one bounded queue, or one per replica when either end is a
replicated stage:

- into a replicated stage, the sender deals data messages round-robin (message k to replica
  k mod N); a Flush goes to the replica of the next data message, Info and EOS to all;
- out of a replicated stage, each replica writes its own queue and marks the end of the
  outputs of each input with a TURN token; the receiver reads the replicas' queues in the
  same round-robin order, so the stream comes out in input order with no reorder buffer.

A codec turns messages into what the queues carry: with the process runner, pickles whose
pixel data sits in shared memory (`graph.shm`); with Ray, object references.
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


class QueueOutput:
    """The sending end of a cross-process edge."""

    def __init__(self, queues: list, codec, to_replicas: bool):
        self.queues = queues
        self.codec = codec
        self.to_replicas = to_replicas and len(queues) > 1
        self.k = 0   # data messages sent (round-robin position)

    def _put(self, q, data: bytes) -> float:
        t = time.monotonic()
        q.put(data)
        return time.monotonic() - t

    def put(self, msg) -> float:
        if msg is EOS or isinstance(msg, Info):
            targets = self.queues if self.to_replicas else self.queues[:1]
            return sum(self._put(q, self.codec.encode(msg)) for q in targets)
        data = self.codec.encode(msg)
        if not self.to_replicas:
            return self._put(self.queues[0], data)
        q = self.queues[self.k % len(self.queues)]
        if isinstance(msg, (Item, Batch)):
            self.k += 1
        return self._put(q, data)

    def turn(self) -> None:
        self.queues[0].put(TURN)


class Receiver(threading.Thread):
    """Moves one incoming cross-process edge into the stage's local channel."""

    def __init__(self, queues: list, channel: Channel, from_replicas: bool, on_error, name: str,
                 decode=ShmCodec.decode):
        super().__init__(name=f"recv:{name}", daemon=True)
        self.decode = decode
        self.queues = queues
        self.channel = channel
        self.from_replicas = from_replicas and len(queues) > 1
        self.on_error = on_error
        self.edge = name

    def run(self) -> None:
        try:
            if self.from_replicas:
                self._collect()
            else:
                q = self.queues[0]
                while True:
                    msg = self.decode(q.get())
                    self.channel.put(msg)
                    if msg is EOS:
                        return
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


def edge_queue_count(src_workers: int, dst_workers: int) -> int:
    return max(src_workers, dst_workers)
