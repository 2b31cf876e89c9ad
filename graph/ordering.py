"""Restoring index order where paths meet again (the bypass pattern).

`OrderedMerge` merges several input streams, each already in index order, into one stream
in index order. It knows the next index it must emit, so it holds at most one message per
input (the head) and takes from whichever input carries that index: the buffer is bounded by
the number of inputs, independent of queue sizes and of how long a bypass run lasts. Its
`accepts()` tells the runner to deliver only on inputs without a head. See graph/README.md
for why this cannot deadlock.
"""
from __future__ import annotations

from .items import Batch


class OrderError(RuntimeError):
    pass


class OrderedMerge:
    def __init__(self, ports: list[str], start: int | None = None, name: str = "merge"):
        self.ports = list(ports)
        self.name = name
        self.next = start
        self.heads: dict[str, object] = {}
        self.ended: set[str] = set()

    def set_start(self, index: int) -> list:
        """The source's first index (from its Info). Every input carries the source's Info
        ahead of its data, so the first Info on any input arrives before any head needs it.
        Returns the messages that became ready."""
        if self.next is None:
            self.next = int(index)
        return self._drain()

    def accepts(self) -> list[str]:
        return [p for p in self.ports if p not in self.heads and p not in self.ended]

    @property
    def held(self) -> int:
        return len(self.heads)

    def push(self, port: str, msg) -> list:
        if port in self.heads:
            raise OrderError(f"{self.name}: input '{port}' already holds {self.heads[port]!r}")
        if self.next is not None and msg.index < self.next:
            raise OrderError(f"{self.name}: index {msg.index} on '{port}' arrived after index "
                             f"{self.next - 1} was emitted (duplicate or out of order)")
        self.heads[port] = msg
        return self._drain()

    def end(self, port: str) -> list:
        self.ended.add(port)
        return self._drain()

    def finish(self) -> None:
        if self.heads:
            raise OrderError(f"{self.name}: inputs ended with items still waiting: "
                             f"{sorted(m.index for m in self.heads.values())} (expected index {self.next})")

    def _drain(self) -> list:
        out = []
        while self.heads:
            if self.next is None:
                # start unknown: wait until every open input shows its head, take the lowest
                if any(p not in self.heads and p not in self.ended for p in self.ports):
                    break
                port = min(self.heads, key=lambda p: self.heads[p].index)
            else:
                port = next((p for p, m in self.heads.items() if m.index == self.next), None)
                if port is None:
                    if all(p in self.heads or p in self.ended for p in self.ports):
                        got = sorted(m.index for m in self.heads.values())
                        raise OrderError(f"{self.name}: index {self.next} is missing: every input has "
                                         f"moved past it (heads {got})")
                    break
            msg = self.heads.pop(port)
            if isinstance(msg, Batch):
                idx = [m.index for m in msg.items]
                if idx != list(range(idx[0], idx[0] + len(idx))):
                    raise OrderError(f"{self.name}: batch on '{port}' is not contiguous: {idx}")
            self.next = msg.last_index + 1
            out.append(msg)
        return out
