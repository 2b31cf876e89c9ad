"""A plain (non-editable) install adds one import name, `lipgraph`, and a `lipgraph` command
that finds the built-in graphs by name from any folder."""
import os
import shutil
import subprocess
import sys
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("pkg")
    env_dir = base / "venv"
    # the dependencies (torch, ...) come from this interpreter's site-packages; lipgraph itself
    # is built from the repository and installed into the fresh environment
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = str(env_dir / "bin" / "python")
    # built from a copy: a build leaves build/ and *.egg-info/ beside its sources
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", "tests", "bench", "sample", "out", "runs"))
    subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-cache-dir", str(src)],
                   check=True, cwd=base, timeout=300)
    work = base / "elsewhere"
    work.mkdir()
    return py, str(env_dir / "bin" / "lipgraph"), work


def _py(py, work, code):
    return subprocess.run([py, "-c", code], cwd=work, capture_output=True, text=True, timeout=120)


def test_one_import_name(installed):
    py, _, work = installed
    ok = _py(py, work, "import lipgraph, lipgraph.graph.spec, lipgraph.stages.mux, os; "
                       "print(os.path.dirname(lipgraph.__file__))")
    assert ok.returncode == 0, ok.stderr
    assert ROOT not in ok.stdout and "site-packages" in ok.stdout
    for name in ("models", "tools", "graph", "stages", "runners", "media", "vision", "run_graph"):
        r = _py(py, work, f"import {name}")
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (name, r.stderr)


def test_command_runs_builtin_graph(installed, tmp_path):
    py, cmd, work = installed
    help_ = subprocess.run([cmd, "--help"], cwd=work, capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and help_.stdout.startswith("usage: lipgraph")
    made = subprocess.run([py, "-m", "lipgraph.tools.sample", str(tmp_path), "--seconds", "1.2", "--extra", "0"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out.mp4"
    run = subprocess.run([cmd, "musetalk", "--video", str(tmp_path / "sample.mp4"),
                          "--audio", str(tmp_path / "dub.wav"), "--output", str(out),
                          "--random-weights", "--quiet", "--set", "detect.detector=haar"],
                         cwd=work, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    import av
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 30
