"""The user documentation keeps up with the code: every param of every stage used by the
shipped graphs is described in docs/params.md, under its stage type."""
import glob
import os
import re

import yaml

from lipgraph.graph import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_stage_type(name: str) -> bool:
    try:
        return bool(registry.resolve(name))
    except registry.UnknownStageType:
        return False


def documented() -> dict[str, set[str]]:
    """stage type -> params named in the table rows of its section(s)."""
    text = open(os.path.join(ROOT, "docs", "params.md")).read()
    found: dict[str, set[str]] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = section.partition("\n")
        types = [t for t in re.findall(r"`([a-z_]+)`", title) if is_stage_type(t)]
        types = types or ["*" + title.strip()]
        names = set()
        for row in re.findall(r"^\| (`[^|]+)\|", body, flags=re.M):
            names |= set(re.findall(r"`([a-z_0-9]+)`", row))
        for t in types:
            found.setdefault(t, set()).update(names)
    return found


def test_every_param_of_the_shipped_graphs_is_documented():
    docs = documented()
    common = docs.get("*Devices (every model stage)", set())
    assert {"device", "dtype", "weights"} <= common
    types = set()
    for path in glob.glob(os.path.join(ROOT, "configs", "graphs", "*.yaml")):
        types |= {s["type"] for s in yaml.safe_load(open(path))["stages"].values()}
    missing = []
    for t in sorted(types):
        params = set(registry.resolve(t).params)
        if not params:
            assert t in docs, f"stage type {t} has no section"
        for p in sorted(params - docs.get(t, set()) - common):
            missing.append(f"{t}.{p}")
    assert not missing, f"undocumented params: {missing}"


def test_readme_commands_exist():
    """The commands the README shows name files and tools that exist."""
    text = open(os.path.join(ROOT, "README.md")).read()
    for path in set(re.findall(r"(?:python )(bench/[a-z_]+\.py|run_graph\.py)", text)):
        assert os.path.isfile(os.path.join(ROOT, path)), path
    for mod in set(re.findall(r"python -m lipgraph\.(tools\.[a-z_]+)", text)):
        assert os.path.isfile(os.path.join(ROOT, *mod.split(".")) + ".py"), mod
    from lipgraph.graph.builtin import ALIASES, builtin_names
    named = set(re.findall(r"^lipgraph ([a-z_]+) ", text, flags=re.M))
    assert named and named <= set(builtin_names()) | set(ALIASES), named
    for graph in set(re.findall(r"configs/graphs/[a-z_]+\.yaml", text)):
        assert os.path.isfile(os.path.join(ROOT, graph)), graph


def test_help_lists_the_graph_shortcuts():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "run_graph.py", "configs/graphs/surgical.yaml", "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for opt in ("--video", "--audio", "--output", "--weights", "--steps", "--random-weights"):
        assert opt in proc.stdout, opt
