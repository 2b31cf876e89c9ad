"""What stopped a run, whichever runner ran it: one `RunError`, built where the failure is seen
(a stage's thread, the session's monitor, a placement that lost a worker) and printed, stored
in the profile and returned in the result the same way."""
from __future__ import annotations

import dataclasses
import signal
import traceback as tb_module

# stage: a stage raised; killed: a worker died without saying why; stalled: nothing moved for
# the stall timeout; deadlock: the inline scheduler found no stage able to step; interrupted:
# SIGINT or SIGTERM; cancelled: stopped from outside (a sibling part failed); resources: the
# cluster cannot place the graph
KINDS = ("stage", "killed", "stalled", "deadlock", "interrupted", "cancelled", "resources")


@dataclasses.dataclass
class RunError:
    kind: str
    message: str
    stage: str | None = None        # the stage that failed or is stuck, where it is one stage
    group: str | None = None
    index: int | None = None        # first index of the item in hand
    type: str | None = None         # the stage's type
    after: int | None = None        # a source between items: the last index it produced
    last: int | None = None         # last index of the batch in hand
    traceback: str | None = None
    exitcode: int | None = None     # a dead process's exit status
    stacks: dict | None = None      # a stall: the stuck threads' stacks

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown run error kind {self.kind!r}")

    @classmethod
    def raised(cls, exc: BaseException, message: str | None = None, **where) -> "RunError":
        """A stage's exception, with its traceback; `where`: stage, group, type, index, ..."""
        text = "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))
        return cls("stage", message or f"{type(exc).__name__}: {exc}", traceback=text, **where)

    def to_dict(self) -> dict:
        """As the profile JSON records it (every field, always)."""
        return dataclasses.asdict(self)

    # read like the profile's record: error["stage"], error.get("kind")
    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)

    def describe(self) -> str:
        """The one message a user reads: a stage's failure names the stage, the item and the
        original traceback; every other kind says it in its message."""
        if self.kind != "stage":
            return self.message
        head = (f"stage '{self.stage}' ({self.type}, group {self.group}) failed "
                f"{describe_where(self.index, self.after, self.last)}: {self.message}")
        return head + ("\n" + self.traceback.rstrip() if self.traceback else "")


def format_error(error: RunError) -> str:
    return error.describe()


def describe_where(index: int | None, after: int | None = None, last: int | None = None) -> str:
    if index is not None and last is not None and last != index:
        return f"at items {index}..{last} (one batch)"
    if index is not None:
        return f"at item {index}"
    if after is not None:
        return f"after item {after} (producing the next one)"
    return "outside any item (setup, control message or end of stream)"


class Interrupted(Exception):
    """A signal (SIGTERM) asked the run to stop; SIGINT arrives as KeyboardInterrupt."""

    def __init__(self, signum: int):
        self.signum = signum


def raise_interrupted(signum, frame):
    raise Interrupted(signum)


def interrupted_error(exc: BaseException) -> tuple[str, RunError, int]:
    """(status, error, exit code) of a run stopped by a signal."""
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    return ("interrupted",
            RunError("interrupted", f"interrupted by {signal.Signals(signum).name}: run stopped"),
            128 + signum)
