"""Graph files: validation errors a user can act on, overrides, dry-run plan."""
import subprocess
import sys

import pytest

from lipgraph.graph.spec import GraphError, load_graph
from tests.engine_util import write_graph

ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__file__))


def base():
    return {
        "name": "t",
        "stages": {
            "src": {"type": "synthetic_source", "group": "a", "params": {"count": 3}},
            "work": {"type": "synthetic_map", "group": "b"},
            "sink": {"type": "synthetic_sink", "group": "a"},
        },
        "edges": ["src.out -> work.in", "work.out -> sink.in"],
    }


def problems(tmp_path, doc, sets=()):
    path = write_graph(tmp_path, doc)
    with pytest.raises(GraphError) as ei:
        load_graph(path, list(sets))
    return ei.value.problems, path


def test_valid_graph_loads_with_defaults(tmp_path):
    g = load_graph(write_graph(tmp_path, base()))
    assert g.topo_order() == ["src", "work", "sink"]
    assert g.stages["src"].params["count"] == 3
    assert g.stages["work"].params["delay_s"] == 0.0      # default filled in
    assert [e.queue_size for e in g.edges] == [8, 8]
    assert set(g.groups) == {"a", "b"} and g.groups["a"].stages == ["src", "sink"]


def test_unknown_stage_type_suggests_and_names_line(tmp_path):
    doc = base()
    doc["stages"]["work"]["type"] = "synthetic_mapp"
    probs, path = problems(tmp_path, doc)
    assert len(probs) == 1
    p = probs[0]
    assert p.startswith(path + ":") and "stage 'work'" in p and "field 'type'" in p
    assert "unknown stage type 'synthetic_mapp'" in p and "synthetic_map" in p


def test_unknown_param_lists_known_ones(tmp_path):
    doc = base()
    doc["stages"]["src"]["params"]["cuont"] = 5
    (p,), _ = problems(tmp_path, doc)
    assert "stage 'src'" in p and "params.cuont" in p and "count" in p


def test_param_type_checked(tmp_path):
    doc = base()
    doc["stages"]["src"]["params"]["count"] = "many"
    (p,), _ = problems(tmp_path, doc)
    assert "params.count" in p and "expected an integer" in p


def test_dangling_ports_and_missing_port(tmp_path):
    doc = base()
    doc["edges"] = ["src.out -> work.in"]
    probs, _ = problems(tmp_path, doc)
    text = "\n".join(probs)
    assert "stage 'work': field 'output 'out''" in text or "output 'out'" in text
    assert "input 'in'" in text and "dangling" in text
    doc = base()
    doc["edges"][0] = "src.nope -> work.in"
    probs, _ = problems(tmp_path, doc)
    assert any("no output port 'nope'" in p and "its outputs: out" in p for p in probs)


def test_two_producers_for_one_input(tmp_path):
    doc = base()
    doc["stages"]["src2"] = {"type": "synthetic_source", "group": "a"}
    doc["edges"].append("src2.out -> sink.in")
    probs, _ = problems(tmp_path, doc)
    assert any("two producers feed one input" in p for p in probs)


def test_cycle_detected(tmp_path):
    doc = {
        "stages": {
            "src": {"type": "synthetic_source"},
            "m": {"type": "merge", "params": {"inputs": ["a", "b"]}},
            "x": {"type": "synthetic_router"},
            "sink": {"type": "synthetic_sink"},
        },
        "edges": ["src.out -> m.a", "m.out -> x.in", "x.main -> m.b", "x.bypass -> sink.in"],
    }
    probs, _ = problems(tmp_path, doc)
    assert any("cycle: " in p and "m" in p and "x" in p for p in probs)


def test_queue_size_below_one(tmp_path):
    doc = base()
    doc["edges"][0] = {"from": "src.out", "to": "work.in", "queue_size": 0}
    (p,), _ = problems(tmp_path, doc)
    assert "queue_size" in p and ">= 1" in p
    doc = base()
    doc["queue_size"] = -3
    probs, _ = problems(tmp_path, doc)
    assert any("queue_size" in p for p in probs)


def test_group_mixing_incompatible_stages(tmp_path):
    doc = base()
    doc["stages"]["work"]["workers"] = 2
    doc["stages"]["work"]["group"] = "a"         # replicated stage sharing a group
    probs, _ = problems(tmp_path, doc)
    assert any("replicated stage needs a group of its own" in p for p in probs)
    doc = base()
    doc["stages"]["sink"]["workers"] = 2
    doc["stages"]["sink"]["group"] = "c"         # stateful stage replicated
    probs, _ = problems(tmp_path, doc)
    assert any("cannot be replicated" in p for p in probs)


def test_cuda_stage_in_gpuless_group(tmp_path):
    from lipgraph.graph.registry import register
    register("cuda_dummy", "tests.test_engine_spec:CudaDummy")
    doc = base()
    doc["stages"]["work"] = {"type": "cuda_dummy", "group": "b", "params": {"device": "cuda:0"}}
    doc["groups"] = {"b": {"gpus": 0}}
    probs, _ = problems(tmp_path, doc)
    assert any("uses CUDA but its group 'b' declares gpus: 0" in p for p in probs)
    doc["groups"] = {"b": {"gpus": 1}}
    doc["stages"]["work2"] = {"type": "cuda_dummy", "group": "b", "params": {"device": "cuda:1"}}
    doc["edges"] = ["src.out -> work.in", "work.out -> work2.in", "work2.out -> sink.in"]
    probs, _ = problems(tmp_path, doc)
    assert any("mixes CUDA devices" in p for p in probs)


from lipgraph.graph.stage import Stage  # noqa: E402


class CudaDummy(Stage):
    params = {"device": "cuda"}

    def process(self, item, port):
        yield "out", item


def test_all_problems_reported_at_once(tmp_path):
    doc = base()
    doc["stages"]["src"]["params"]["cuont"] = 5
    doc["stages"]["work"]["type"] = "nope"
    doc["edges"].append({"from": "sink.x", "to": "src.y", "queue_size": 0})
    probs, _ = problems(tmp_path, doc)
    text = "\n".join(probs)
    assert "params.cuont" in text and "unknown stage type 'nope'" in text and "queue_size" in text


def test_set_overrides_and_their_errors(tmp_path):
    path = write_graph(tmp_path, base())
    g = load_graph(path, ["src.count=7", "work.delay_s=1", "work.workers=3"])
    assert g.stages["src"].params["count"] == 7
    assert g.stages["work"].params["delay_s"] == 1.0 and isinstance(g.stages["work"].params["delay_s"], float)
    assert g.stages["work"].workers == 3 and g.groups["b"].workers == 3
    with pytest.raises(GraphError) as ei:
        load_graph(path, ["src.count=abc"])
    assert "expected an integer" in str(ei.value)
    with pytest.raises(GraphError) as ei:
        load_graph(path, ["nosuch.count=1"])
    assert "unknown stage" in str(ei.value)
    with pytest.raises(GraphError):
        load_graph(path, ["src=1"])


def test_dry_run_prints_plan(tmp_path):
    path = write_graph(tmp_path, base())
    out = subprocess.run([sys.executable, "run_graph.py", path, "--dry-run", "--set", "work.workers=2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "groups:" in text and "edges:" in text
    assert "b            [2 processes]" in text
    assert "src.out -> work.in   queue 8 (holds up to 10)   cross-process a -> b" in text


def test_bad_graph_exits_2_with_message(tmp_path):
    doc = base()
    doc["stages"]["work"]["type"] = "nope"
    path = write_graph(tmp_path, doc)
    out = subprocess.run([sys.executable, "run_graph.py", path], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert "unknown stage type 'nope'" in out.stderr and path in out.stderr


def test_a_number_given_for_a_text_param_is_that_text(tmp_path):
    # `fps: 25` in a graph file or `--set detect.detect_every=5` on a text-typed param
    g = load_graph("configs/graphs/musetalk.yaml", ["video.path=a.mp4", "audio.path=b.wav",
                                                    "video.audio=b.wav", "mux.path=c.mp4",
                                                    "video.fps=25", "detect.detect_every=5"])
    assert g.stages["video"].params["fps"] == "25"
    assert g.stages["detect"].params["detect_every"] == "5"
    with pytest.raises(GraphError, match="detect_every"):
        load_graph("configs/graphs/musetalk.yaml", ["video.path=a.mp4", "audio.path=b.wav",
                                                    "video.audio=b.wav", "mux.path=c.mp4",
                                                    "detect.detect_every=0"])


def test_engine_imports_no_stage_module(tmp_path):
    """The engine knows stage types only by what registers itself: importing it and loading
    a graph of synthetic stages (registered through $LIPGRAPH_STAGE_MODULES) imports no
    module of the pipeline's stages."""
    code = ("import sys, lipgraph.graph.spec, lipgraph.graph.plan, lipgraph.runners.job, "
            "lipgraph.runners.scaleout, lipgraph.runners.process, lipgraph.runners.inline; "
            "lipgraph.graph.spec.load_graph(sys.argv[1]); "
            "print(*sorted(m for m in sys.modules if m.startswith('lipgraph.stages')))")
    out = subprocess.run([sys.executable, "-c", code, write_graph(tmp_path, base())], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["lipgraph.stages", "lipgraph.stages.synthetic"]


def test_shortcuts_set_their_params_and_name_the_output(tmp_path):
    from lipgraph.graph.spec import read_outline
    doc = base()
    doc["args"] = {"output": "sink.path", "count": ["src.count"]}
    path = write_graph(tmp_path, doc)
    outline = read_outline(path)
    assert outline.shortcuts == {"output": ["sink.path"], "count": ["src.count"]}
    assert outline.output_stage == "sink"
    g = load_graph(path, ["src.count=9"], shortcuts={"output": "o.jsonl", "count": "5"})
    assert g.output_path() == "o.jsonl" and g.output_stage().name == "sink"
    assert g.stages["src"].params["count"] == 9          # an explicit --set wins
    with pytest.raises(GraphError, match=r"no shortcut 'video' \(args: output, count\)"):
        load_graph(path, shortcuts={"video": "a.mp4"})
    assert read_outline("musetalk").shortcuts["output"] == ["mux.path"]   # a built-in graph by name


def test_renamed_params_name_their_new_name_and_choices_are_checked():
    """A graph using an old param name is told the new one (on the command line and in the
    file); a param outside its stage type's choices names them."""
    with pytest.raises(GraphError) as exc:
        load_graph("musetalk", ["unet.backend=latentsync", "detect.detector=nope",
                                "batch.mode=windows"])
    text = str(exc.value)
    assert "param 'backend' of type 'surgical_unet' is now 'model'" in text
    assert "param 'mode' of type 'batch_builder' is now 'model'" in text
    assert "expected auto, s3fd or haar, got 'nope'" in text
