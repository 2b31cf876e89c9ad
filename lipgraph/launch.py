"""From what a user gives (a graph name or file, shortcut values, `stage.param` overrides, random
weights, resume) to a runner ready to run: the steps the command line, the Python API and the
web app share, so all three check and start a run the same way.

    graph = load("musetalk", sets, {"video": ..., "audio": ..., "output": ...}, say=print)
    plan = check(graph, resume=False, say=print)     # bad inputs raise here, before any model loads
    result = make_runner(graph, options).run()

Every refusal is a `UsageError` whose text is what `lipgraph` prints (after "lipgraph: ")
before exiting with status 2.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Iterable

RANDOM_BANNER = ("*** RANDOM WEIGHTS: the models are randomly initialised; this output is NOT "
                 "lip-synced (it exercises the pipeline and its profile only) ***")


class LipgraphError(Exception):
    """A run that could not start or did not finish; its text is what `lipgraph` prints."""


class UsageError(LipgraphError):
    """Bad graph, arguments, inputs or model files: nothing was started."""


def to_stderr(text: str) -> None:
    print(text, file=sys.stderr)


def load(graph: str, sets: Iterable[str] | dict = (), shortcuts: dict | None = None,
         random_weights: str | None = None, say: Callable[[str], None] = to_stderr,
         check_inputs: bool = True):
    """The validated graph: shortcut values first, then `sets` (which win); with
    `random_weights` ("tiny" or "full") every model stage points at random models, built on
    first use after the input files are checked (unless `check_inputs` is False: a dry run)."""
    from lipgraph.graph.spec import GraphError, load_graph
    shortcuts = {k: v for k, v in (shortcuts or {}).items() if v not in (None, [], ())}
    if "dub" in shortcuts:
        shortcuts = with_dubs(shortcuts, say)
    try:
        spec = load_graph(graph, sets, shortcuts=shortcuts)
        if random_weights:
            if shortcuts.get("weights"):
                raise UsageError("--weights and --random-weights exclude each other")
            if check_inputs:
                check_files(spec)
            spec = _with_random_weights(graph, spec, sets, shortcuts, random_weights, say)
    except GraphError as exc:
        raise UsageError(str(exc)) from exc
    return spec


def with_dubs(shortcuts: dict, say) -> dict:
    """`dub` (one dub per speaker: ID=AUDIO values, or a YAML file) as the graph takes it: the
    dubs for the audio stage, every dubbed track chosen (`face: ID+ID`, unless `face` is given)
    and, without `audio`, the dubs' mix as the soundtrack (media/dubs.py)."""
    from lipgraph.media.audio import probe_audio
    from lipgraph.media.decode import MediaError
    from lipgraph.media.dubs import dub_values, mixed_soundtrack, parse_dubs
    try:
        dubs = parse_dubs(shortcuts["dub"])
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    for tid, path in dubs.items():
        try:
            probe_audio(path)
        except (MediaError, OSError) as exc:
            raise UsageError(f"--dub {tid}={path}: {exc}") from exc
    out = {**shortcuts, "dub": dub_values(dubs)}
    out.setdefault("face", "+".join(str(t) for t in dubs))
    if "audio" not in out:
        out["audio"] = mixed_soundtrack(list(dubs.values()))
        say(f"note: the soundtrack is the mix of the {len(dubs)} dubs: {out['audio']}")
    return out


def check_files(graph) -> None:
    """The stages' input files only (no model files): a second, nothing loaded."""
    from lipgraph.stages import preflight
    try:
        preflight.check_files(graph)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def random_model_sets(graph, size: str = "tiny") -> list[str]:
    """--set lines pointing the graph's model stages at random models of `size` (built on
    first use) and marking the output as not lip-synced."""
    from lipgraph.models.random_weights import ensure_random_weights, random_weight_sets, uses_latentsync
    extra = random_weight_sets(graph, ensure_random_weights(size, uses_latentsync(graph)))
    sink = graph.output_stage()
    if sink is not None and "comment" in sink.cls.params:
        extra.append(f"{sink.name}.comment=lipgraph random weights: not lip-synced")
    return extra


def _with_random_weights(path: str, graph, sets, shortcuts: dict, size: str, say):
    from lipgraph.graph.spec import load_graph
    from lipgraph.models.random_weights import uses_latentsync
    say(RANDOM_BANNER)
    say(f"note: {size} random models{' (with LatentSync)' if uses_latentsync(graph) else ''} "
        "from the lipgraph cache (built on first use)")
    extra = random_model_sets(graph, size)
    # the user's own --set lines (or mapping) still win
    if isinstance(sets, dict):
        return load_graph(path, {**dict(line.split("=", 1) for line in extra), **sets}, shortcuts)
    return load_graph(path, extra + list(sets), shortcuts=shortcuts)


def check(graph, resume: bool = False, say: Callable[[str], None] = to_stderr):
    """Preflight every stage's files and model files, then create (or resume) the job of a
    graph whose sink writes segments: its `JobPlan`, or None for any other graph."""
    from lipgraph.runners import job
    from lipgraph.stages.preflight import preflight
    for note in graph.notes:
        say(f"note: {note}")
    try:
        preflight(graph)
    except (FileNotFoundError, ValueError) as exc:      # bad inputs, missing model files
        raise UsageError(str(exc)) from exc
    if not job.resumable(graph):
        if resume:
            raise UsageError("--resume needs a graph whose mux writes segments (segment_s > 0)")
        return None
    try:
        plan = job.prepare(graph, resume)
    except job.ResumeRefused as exc:
        raise UsageError(str(exc)) from exc
    for note in plan.notes:
        say(f"note: {note}")
    return plan


def default_paths(graph) -> tuple[str, str]:
    """The profile JSON and trace paths: beside the output, or named after the graph."""
    base = os.path.abspath(graph.output_path() or graph.name)
    return base + ".profile.json", base + ".trace.json"


def make_runner(graph, options, runner: str = "process", address: str | None = None):
    from lipgraph.runners import get_runner
    cls = get_runner(runner)
    return cls(graph, options, address=address) if runner == "ray" else cls(graph, options)
