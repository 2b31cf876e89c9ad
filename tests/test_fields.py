"""Frame fields: one table (stages/fields.py), stages declaring what they read and write, and
validation (so --dry-run) rejecting a graph where a field read has no writer upstream."""
import copy
import os

import pytest
import yaml

import lipgraph.stages  # noqa: F401  (registers the pipeline's stage types)
from lipgraph.cli import main
from lipgraph.graph.fields import check_fields
from lipgraph.graph.items import Info
from lipgraph.graph.registry import resolve
from lipgraph.graph.spec import GraphError, build_graph, load_graph
from lipgraph.stages import STAGE_TYPES, fields, standins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ["video.path=a.mp4", "video.audio=b.wav", "audio.path=b.wav", "mux.path=c.mp4"]


@pytest.mark.parametrize("name", ["musetalk", "surgical"])
def test_shipped_graphs_pass(name):
    g = load_graph(os.path.join(ROOT, "configs", "graphs", f"{name}.yaml"), PATHS)
    assert check_fields(g.stages, g.edges, g.path) == []


def _graph(stages: dict, edges: list) -> dict:
    return {"name": "t", "stages": stages, "edges": edges}


# blend reads the decoded face, and no stage before it decodes one
NO_DECODE = _graph(
    {"video": {"type": "video_source", "params": {"path": "a.mp4", "length": "video"}},
     "detect": {"type": "face_detect"}, "batch": {"type": "batch_builder"},
     "blend": {"type": "blend"}, "mux": {"type": "mux", "params": {"path": "c.mp4"}}},
    ["video.out -> detect.in", "detect.out -> batch.in", "batch.main -> blend.in",
     "blend.out -> mux.main", "batch.bypass -> mux.bypass"])


def test_a_field_without_writer_fails_the_dry_run(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(NO_DECODE, sort_keys=False))
    assert main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert ("stage 'blend': reads field 'face' that no upstream stage writes "
            "(upstream: video, detect, batch)") in err


def test_each_input_port_is_checked_on_its_own():
    video = {"type": "video_source", "params": {"path": "a", "length": "video"}}
    raw = _graph({"video": video, "other": video, "more": video,
                  "detect": {"type": "face_detect"}, "whisper": {"type": "whisper_features"},
                  "mux": {"type": "mux", "params": {"path": "o.mp4"}}},
                 ["video.out -> detect.in", "detect.out -> whisper.frames",
                  "other.out -> whisper.audio", "whisper.out -> mux.main", "more.out -> mux.bypass"])
    with pytest.raises(GraphError) as exc:
        build_graph(raw, "g.yaml")
    assert exc.value.problems == ["g.yaml: stage 'whisper': reads field 'pcm' on input 'audio' "
                                  "that no upstream stage writes (upstream: other)"]


def test_undeclared_stages_pass_through():
    """A stage that declares nothing (a user's module:Class) may write anything."""
    raw = copy.deepcopy(NO_DECODE)
    raw["stages"]["model"] = {"type": "lipgraph.stages.synthetic:SyntheticMap"}
    raw["edges"][2:3] = ["batch.main -> model.in", "model.out -> blend.in"]
    g = build_graph(raw, "g.yaml")
    assert "model" in g.stages


def test_derived_lists_are_the_ones_the_stages_kept():
    assert set(fields.CACHED) == {"box", "face_id", "face_box", "crop_box", "mask", "latents", "aligned",
                                  "affine", "align", "ls_latents"}
    assert fields.STACKED == {"crop": "crops", "audio": "audio", "latents": "cached_latents",
                              "aligned": "aligned", "audio_ls": "audio_ls",
                              "ls_latents": "cached_ls_latents"}
    assert set(fields.WITH_CONTEXT) == {"aligned", "audio_ls", "ls_latents"}
    assert fields.STACKED_FLOAT32 == {"audio", "audio_ls"}
    assert set(fields.WORKING) == {"crop", "face", "mask", "audio", "audio_ls", "crop_box",
                                   "aligned", "affine", "latents", "ls_latents", "cached", "lm68",
                                   "lm106", "align"}
    assert set(fields.unet_inputs("latentsync")) == {"ls_masked", "ls_ref", "ls_mask"}


def test_every_declared_field_is_in_the_table_and_the_docs():
    docs = open(os.path.join(ROOT, "docs", "params.md")).read()
    for f in fields.TABLE:
        assert f"| `{f.name}` |" in docs, f.name
    with pytest.raises(KeyError, match="lm69"):
        fields.names("box", "lm69")
    classes = [resolve(t) for t in STAGE_TYPES]
    classes += [standins.PatternFaces, standins.ZeroTokens, standins.CopyFace]
    for cls in classes:
        assert cls.reads is not None and cls.writes is not None, cls
        reads = cls.reads.values() if isinstance(cls.reads, dict) else [cls.reads]
        assert {f for r in reads for f in r} | set(cls.writes) <= set(fields.FIELDS), cls


def test_face_align_sends_a_new_info():
    from lipgraph.stages.face_align import FaceAlign
    stage = FaceAlign("align", {"enabled": "yes", "mask": "m.png", "smooth": False})
    stage.open()
    info = Info(fps=25.0)
    [(port, sent)] = list(stage.on_info(info, "in"))
    assert info.data == {"fps": 25.0} and sent.data == {"fps": 25.0, "ls_mask": "m.png"}
