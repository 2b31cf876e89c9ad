"""What the benchmark scripts share: the repository on the import path, the built-in MuseTalk
graph, the start of their command lines, their working folder and random models, and
run_graph.py runs timed from outside."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MUSETALK = os.path.join(ROOT, "configs", "graphs", "musetalk.yaml")

from lipgraph.graph.profile import write_json_atomic as write_json  # noqa: E402,F401


def parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


def frame_size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT as two numbers."""
    w, h = (int(v) for v in text.split("x"))
    return w, h


def model_args(ap: argparse.ArgumentParser, size: str) -> None:
    """--size, --models, --device and --keep of the benchmarks that run the MuseTalk graph."""
    ap.add_argument("--size", default=size)
    ap.add_argument("--models", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", default=None, help="folder for inputs and outputs (reused)")


def work_folder(keep: str | None, prefix: str) -> str:
    """The benchmark's working folder: `keep` (reused between runs) or a new temporary one."""
    folder = keep or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(folder, exist_ok=True)
    return folder


def random_models(folder: str, size: str = "tiny") -> dict:
    """Random MuseTalk models of `size` (tiny or full) under `folder`/models."""
    from lipgraph.models.random_weights import full_size_weights, tiny_weights
    return (full_size_weights if size == "full" else tiny_weights)(os.path.join(folder, "models"))


def timed_graph_run(cmd: list[str], label: str) -> float:
    """Run a run_graph.py command line; its wall time, or exit with its error."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
    return wall
