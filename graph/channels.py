"""Bounded in-process channels and the inbox a stage waits on.

All channels feeding one stage share that stage's `Inbox` lock, so the stage can wait for
"a message on any of the ports I accept now" without polling. `put` blocks while the channel
is full: that is the backpressure between stages of one process. `abort()` wakes everyone.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Iterable


class Aborted(Exception):
    """The run is being torn down; raised from blocked channel operations."""


class Inbox:
    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.readable = threading.Condition(self.lock)
        self.channels: dict[str, "Channel"] = {}
        self.aborted = False
        self._rr = 0

    def channel(self, port: str, capacity: int) -> "Channel":
        ch = self.channels[port] = Channel(self, capacity)
        return ch

    def get(self, ports: Iterable[str]) -> tuple[str, Any]:
        """Next message from any of `ports` (round-robin among ready ones)."""
        ports = list(ports)
        if not ports:
            raise ValueError(f"{self.name}: waiting on no input port")
        with self.lock:
            while True:
                if self.aborted:
                    raise Aborted()
                n = len(ports)
                for k in range(n):
                    port = ports[(self._rr + k) % n]
                    ch = self.channels[port]
                    if ch.buf:
                        self._rr = (self._rr + k + 1) % n
                        msg = ch.buf.popleft()
                        ch.writable.notify()
                        return port, msg
                self.readable.wait()

    def abort(self) -> None:
        with self.lock:
            self.aborted = True
            self.readable.notify_all()
            for ch in self.channels.values():
                ch.writable.notify_all()


class Channel:
    """One edge's bounded FIFO inside a process."""

    def __init__(self, inbox: Inbox, capacity: int):
        if capacity < 1:
            raise ValueError("channel capacity must be >= 1")
        self.inbox = inbox
        self.capacity = capacity
        self.buf: collections.deque = collections.deque()
        self.writable = threading.Condition(inbox.lock)

    def put(self, msg: Any) -> float:
        """Append, blocking while full. Returns the seconds spent blocked."""
        blocked = 0.0
        with self.inbox.lock:
            if len(self.buf) >= self.capacity:
                t = time.monotonic()
                while len(self.buf) >= self.capacity:
                    if self.inbox.aborted:
                        raise Aborted()
                    self.writable.wait(0.5)
                blocked = time.monotonic() - t
            if self.inbox.aborted:
                raise Aborted()
            self.buf.append(msg)
            self.inbox.readable.notify()
        return blocked

    def __len__(self) -> int:
        return len(self.buf)
