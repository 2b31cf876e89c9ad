"""Run a lipgraph graph file.

    lipgraph musetalk --video in.mp4 --audio dub.wav --output out.mp4
    lipgraph GRAPH.yaml --set detect.detect_every=5 --runner inline
    lipgraph surgical --dry-run
    lipgraph GRAPH.yaml ... --runner ray [--address ADDR] [--parallel 4]
    lipgraph --jobs jobs.yaml [GRAPH.yaml] --runner ray [--retries 1] [--concurrency 4]
    lipgraph app [--host --port --weights DIR --share]     (the web app: lipgraph.app)

(`python run_graph.py ...` in a source checkout is the same command.) Built-in graphs are
found by name (musetalk, surgical); anything else is a graph file path.

Shortcuts such as --video/--audio/--output come from the graph's `args:` section; any
param can be set with --set stage.param=value. Every run writes a JSON profile and a Chrome
trace beside the output (or where --profile/--trace say) and prints a per-stage table.
Exit status: 0 ok, 1 a stage failed, 2 bad graph or arguments, 128+N stopped by signal N.
"""
from __future__ import annotations

import argparse
import os
import sys


def _shortcuts(graph: str | None) -> dict[str, tuple[list[str], bool]]:
    """The graph's command-line shortcuts, read before argv can be parsed (the graph itself is
    validated once their values are known): name -> (targets, repeatable). A shortcut whose
    param takes a list (--dub) may be given several times."""
    from lipgraph.graph.registry import resolve
    from lipgraph.graph.spec import GraphError, read_outline
    try:
        outline = read_outline(graph) if graph else None
    except GraphError:          # reported when the graph is loaded
        return {}
    out = {}
    for name, targets in (outline.shortcuts if outline else {}).items():
        stage, _, param = targets[0].partition(".")
        try:
            many = isinstance(resolve(outline.stage_types[stage]).params.get(param), list)
        except (LookupError, ValueError, ImportError):
            many = False
        out[name] = (targets, many)
    return out


def build_parser(shortcuts: dict, add_help: bool = True) -> argparse.ArgumentParser:
    from lipgraph.runners import RUNNERS
    p = argparse.ArgumentParser(prog="lipgraph", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                add_help=add_help)
    p.add_argument("graph", nargs="?", default=None,
                   help="graph file (YAML) or a built-in graph: musetalk, surgical (alias latentsync)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="STAGE.PARAM=VALUE",
                   help="override a stage param (repeatable); the value is read as YAML")
    p.add_argument("--runner", choices=RUNNERS, default="process",
                   help="process: groups in processes (default); inline: one process, for debugging")
    p.add_argument("--address", default=None, help="Ray cluster address (with --runner ray)")
    p.add_argument("--dry-run", action="store_true", help="print the validated plan and exit")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same graph, inputs and output "
                        "from its last complete segment")
    p.add_argument("--profile", default=None, metavar="PATH", help="profile JSON path")
    p.add_argument("--trace", default=None, metavar="PATH", help="Chrome trace path")
    p.add_argument("--no-trace", action="store_true", help="do not write a trace file")
    p.add_argument("--profile-every", type=float, default=5.0, metavar="SECONDS",
                   help="rewrite the profile JSON this often while running (0: only at the end)")
    p.add_argument("--quiet", action="store_true", help="no progress and no table")
    p.add_argument("--stall-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="stop the run as failed when nothing moves this long (no stage finishes "
                        "an item, no message moves), naming the stuck stage, its item and its "
                        "stack (default 300; 0: off)")
    p.add_argument("--parallel", default="1", metavar="N",
                   help="split the output into N parts (cut on keyframes) run side by side, "
                        "then join them; auto: one part per GPU")
    p.add_argument("--jobs", default=None, metavar="FILE",
                   help="run a batch of jobs (YAML list of graph/video/audio/output/set)")
    p.add_argument("--retries", type=int, default=1, help="with --jobs: retries of a failed job")
    p.add_argument("--concurrency", type=int, default=2, help="with --jobs: jobs at once")
    p.add_argument("--random-weights", nargs="?", const="tiny", default=None, choices=("tiny", "full"),
                   help="run with randomly initialised models instead of real weights (tiny: "
                        "small configs, fast; full: the published sizes, for timing). Built once "
                        "and kept in ~/.cache/lipgraph. The output is NOT lip-synced")
    for name, (targets, many) in shortcuts.items():
        p.add_argument(f"--{name}", dest=f"arg_{name}", default=None, metavar="VALUE",
                       action="append" if many else "store",
                       help=f"sets {', '.join(targets)}" + (" (repeatable)" if many else ""))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["app"]:
        from lipgraph.app import main as app_main
        return app_main(argv[1:])
    # the graph file names the shortcut options (--video ...): find it first
    known, _ = build_parser({}, add_help=False).parse_known_args(argv)
    shortcuts = _shortcuts(known.graph)
    args = build_parser(shortcuts).parse_args(argv)
    if args.stall_timeout < 0:
        print("lipgraph: --stall-timeout: expected seconds >= 0 (0: off)", file=sys.stderr)
        return 2

    from lipgraph.graph.plan import describe_plan
    from lipgraph.launch import RANDOM_BANNER, UsageError, check, default_paths, load, make_runner
    from lipgraph.runners import RunOptions, format_error

    if args.jobs:
        return run_jobs_file(args)
    if not args.graph:
        print("lipgraph: a graph file is needed (or --jobs FILE)", file=sys.stderr)
        return 2

    given = {name: getattr(args, f"arg_{name}") for name in shortcuts}
    try:
        graph = load(args.graph, args.sets, given, args.random_weights, check_inputs=not args.dry_run)
        if args.dry_run:
            print(describe_plan(graph, args.runner))
            return 0
        plan = check(graph, args.resume)
    except UsageError as exc:
        print(f"lipgraph: {exc}", file=sys.stderr)
        return 2
    prof_default, trace_default = default_paths(graph)
    options = RunOptions(
        profile_path=args.profile or prof_default,
        trace_path=None if args.no_trace else (args.trace or trace_default),
        progress=not args.quiet, table=not args.quiet, profile_every_s=args.profile_every,
        stall_timeout_s=args.stall_timeout)
    if args.random_weights:
        options.extra["random_weights"] = args.random_weights
    parts = parallel_parts(args)
    if parts is None:
        return 2
    if parts > 1:
        return run_split(graph, args, options, plan, parts)
    result = make_runner(graph, options, args.runner, args.address).run()
    if args.random_weights and result.ok:
        print(RANDOM_BANNER, file=sys.stderr)
    if not result.ok:
        print(f"lipgraph: {format_error(result.error)}", file=sys.stderr)
        if plan is not None and os.path.isdir(plan.workdir):
            print(f"lipgraph: completed segments are kept in {plan.workdir}; run the same "
                  "command with --resume to continue", file=sys.stderr)
    return result.exit_code


def parallel_parts(args) -> int | None:
    if args.parallel == "auto":
        from lipgraph.runners.scaleout import auto_parts
        return auto_parts(args.runner, args.address)
    try:
        n = int(args.parallel)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        print(f"lipgraph: --parallel: expected a number >= 1 or auto, got {args.parallel!r}",
              file=sys.stderr)
        return None


def run_split(graph, args, options, plan, parts: int) -> int:
    from lipgraph.runners import scaleout
    if plan is None:
        print("lipgraph: --parallel needs a graph whose mux writes segments", file=sys.stderr)
        return 2
    result = scaleout.run_split(graph, parts, args.runner, args.address, options)
    if not result.ok:
        print(f"lipgraph: {result.error}", file=sys.stderr)
        return result.exit_code or 1
    print(f"{graph.name}: done in {result.wall_s:.1f} s ({len(result.parts)} parts)", file=sys.stderr)
    return 0


def run_jobs_file(args) -> int:
    from lipgraph.graph.spec import GraphError
    from lipgraph.runners import scaleout
    try:
        specs = scaleout.read_jobs(args.jobs, args.graph)
    except (GraphError, OSError, ValueError) as exc:
        print(f"lipgraph: {exc}", file=sys.stderr)
        return 2
    print(f"{len(specs)} job(s) on the {args.runner} runner", file=sys.stderr)
    from lipgraph.stages.preflight import preflight
    status = scaleout.run_jobs(specs, args.runner, args.address, args.retries, args.concurrency,
                               stall_timeout_s=args.stall_timeout, check=preflight)
    print(scaleout.format_jobs(status), file=sys.stderr)
    report = os.path.splitext(args.jobs)[0] + ".report.json"
    from lipgraph.graph.profile import write_json_atomic
    write_json_atomic(report, status)
    print(f"report: {report}", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in status) else 1


if __name__ == "__main__":
    sys.exit(main())
