"""The stage interface: what every element of a graph implements.

A stage has named input and output ports (like GStreamer pads) and reacts to messages:

- a *source* (no inputs) implements `generate()`, yielding ``(port, message)`` pairs;
- any other stage implements `process(item, port)`, yielding ``(port, message)`` pairs;
- `accepts()` names the input ports the stage can take a message from right now (merges
  and joins use it to bound what they hold; runners never deliver on other ports);
- `on_info`, `on_flush`, `on_eos` and `finish` handle control messages; by default Info and
  Flush are forwarded to every output, and EOS is sent on every output after `finish()`.

Stages are built from their YAML params, then `open()` (load models; timed as setup) and
`close()` are called in the thread that runs them. Heavy imports belong in `open()` or in
the modules it calls, so validating a graph stays cheap.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterable, Iterator

from .items import Flush, Info

Emit = tuple[str, Any]


class StageContext:
    """What a running stage may ask of its runner. Runners pass a subclass."""

    run_id: str = "local"
    replica: int = 0
    replicas: int = 1
    group: str = ""

    def set_total(self, total: int | None) -> None:
        """Announce how many items the stream will carry (for progress and ETA)."""

    def register_temp(self, path: str) -> None:
        """A file the runner must delete if the run fails (written, then renamed on success)."""

    def warn(self, message: str) -> None:
        """A warning shown to the user once, prefixed with the stage name."""

    def count(self, key: str, amount: int = 1, reason: str | None = None) -> None:
        """Add to a named counter in this stage's profile (e.g. fallbacks, with reasons)."""

    def heartbeat(self) -> None:
        """A long step (one that finishes no item for a while, such as joining segments)
        is still moving: the stall watchdog counts it as progress."""


class Stage:
    """Base class of all stages. Subclasses set the class attributes below."""

    inputs: ClassVar[tuple[str, ...]] = ("in",)
    outputs: ClassVar[tuple[str, ...]] = ("out",)
    # name -> default value; the default's type is the param's type (None: any type)
    params: ClassVar[dict[str, Any]] = {}
    # param -> the values it may take (checked after bind, with the stage's own checks)
    choices: ClassVar[dict[str, tuple]] = {}
    # old param name -> new name, so a graph still using the old one is told the new one
    renamed: ClassVar[dict[str, str]] = {}
    # one output message per input message and no state across items: may be replicated
    stateless: ClassVar[bool] = False
    # what runners may ask of the stage beyond its stream, each role a few class methods
    # (runners/job.py): "segmented_sink", "seekable_source"
    roles: ClassVar[tuple[str, ...]] = ()
    # params that place the output or pick the stretch of stream to make, not what the
    # stage computes: a job resumes across changes to them (runners/job.py)
    placement_params: ClassVar[tuple[str, ...]] = ()
    # fields of Item/Batch data the stage needs (a tuple, or a mapping input port -> tuple)
    # and adds; checked by graph/fields.py. reads None: not checked; writes None: may add
    # any field (an undeclared stage hides nothing from the stages after it)
    reads: ClassVar[tuple[str, ...] | dict[str, tuple[str, ...]] | None] = None
    writes: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, name: str, params: dict | None = None, ctx: StageContext | None = None):
        self.name = name
        self.p = dict(self.params)
        self.p.update(params or {})
        self.ctx = ctx or StageContext()
        self.info: dict = {}

    # ----- ports -------------------------------------------------------------------
    @classmethod
    def ports(cls, params: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Input and output port names for these params (override for dynamic ports)."""
        return tuple(cls.inputs), tuple(cls.outputs)

    @property
    def in_ports(self) -> tuple[str, ...]:
        return self.ports(self.p)[0]

    @property
    def out_ports(self) -> tuple[str, ...]:
        return self.ports(self.p)[1]

    @property
    def primary_input(self) -> str | None:
        ins = self.in_ports
        return ins[0] if ins else None

    @classmethod
    def uses_cuda(cls, params: dict) -> bool:
        """Whether this stage will use CUDA with these params (placement checks)."""
        device = str(params.get("device", "cpu") or "cpu")
        return device.startswith("cuda")

    # stages that others take their `auto` params from bind first (lower first)
    bind_order: ClassVar[int] = 0

    @classmethod
    def bind(cls, params: dict, graph: dict, notes: list) -> dict:
        """Resolve params that depend on other stages (`graph`: name -> StageSpec, already
        bound when their bind_order is lower). Append (param, message) to `notes` to tell
        the user about a choice made for them. Returns the params."""
        return params

    @classmethod
    def validate_params(cls, params: dict) -> list[tuple[str, str]]:
        """Extra checks beyond type: return (param, problem) pairs."""
        return []

    @classmethod
    def check_files(cls, params: dict) -> list[str]:
        """Problems with the files this stage will read or write, found before the run
        starts (a missing input, a file that is not what it should be, an output folder
        that cannot be written)."""
        return []

    # ----- lifecycle ---------------------------------------------------------------
    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    # ----- data --------------------------------------------------------------------
    def generate(self) -> Iterator[Emit]:
        raise NotImplementedError(f"{type(self).__name__} is not a source")

    def process(self, item: Any, port: str) -> Iterable[Emit] | None:
        raise NotImplementedError(f"{type(self).__name__}.process")

    def accepts(self) -> Iterable[str]:
        return self.in_ports

    # ----- control -----------------------------------------------------------------
    def on_info(self, info: Info, port: str) -> Iterable[Emit]:
        """Default: remember the primary input's Info and forward it to every output."""
        if port == self.primary_input:
            self.info.update(info.data)
            for out in self.out_ports:
                yield out, Info(info.data)

    def on_flush(self, flush: Flush, port: str) -> Iterable[Emit]:
        for out in self.out_ports:
            yield out, Flush(flush.before)

    def on_eos(self, port: str) -> Iterable[Emit]:
        return ()

    def finish(self) -> Iterable[Emit]:
        """All inputs ended: emit what is still held. EOS is sent after this."""
        return ()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
