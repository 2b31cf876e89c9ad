"""LatentSync users' own folders work as --weights with no renaming: upstream's checkpoints/
folder (as its Hugging Face repo lays it out) and a whole checkout (which also holds the
official mask and, after a first run, InsightFace's buffalo_l). Published files are recognised
by size, so the checkpoints here are sparse files of the published sizes."""
import os
import shutil

import pytest

from lipgraph.graph.spec import load_graph
from lipgraph.models.weight_finder import find_weights, resolve_weights
from lipgraph.models.weight_table import WEIGHT_FILES
from lipgraph.tools import download_weights as D

SURGICAL = "configs/graphs/surgical.yaml"
MASK_PNG = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "specs", "latentsync_mask.png")


def sparse(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def checkout(root, version="1.6"):
    """~/LatentSync after upstream's setup: checkpoints from the hub, the mask in the source."""
    ckpt = root / "checkpoints"
    unet = WEIGHT_FILES["latentsync16_unet" if version == "1.6" else "latentsync15_unet"]
    sparse(ckpt / "latentsync_unet.pt", unet.size)
    sparse(ckpt / "whisper" / "tiny.pt", WEIGHT_FILES["whisper_tiny_openai"].size)
    for name in ("det_10g.onnx", "2d106det.onnx"):
        sparse(ckpt / "auxiliary" / "models" / "buffalo_l" / name, 16)
    (root / "latentsync" / "utils").mkdir(parents=True)
    shutil.copy(MASK_PNG, root / "latentsync" / "utils" / "mask.png")
    return ckpt


@pytest.mark.parametrize("version", ["1.5", "1.6"])
@pytest.mark.parametrize("where", ["checkout", "checkpoints"])
def test_upstream_folders_run_the_surgical_graph_without_renaming(tmp_path, monkeypatch, version, where):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ckpt = checkout(tmp_path / "LatentSync", version)
    weights = ckpt.parent if where == "checkout" else ckpt
    g = load_graph(SURGICAL, {"video.path": "a.mp4", "video.audio": "b.wav", "audio.path": "b.wav",
                              "mux.path": "c.mp4", **{f"{s}.weights": str(weights) for s in
                                                      ("detect", "landmarks", "align", "whisper",
                                                       "encode", "unet", "decode", "parse")}})
    p = {name: s.params for name, s in g.stages.items()}
    assert p["unet"]["model"] == "latentsync" and not g.notes       # its UNet was found
    assert p["unet"]["version"] == version                           # told apart by size
    assert p["align"]["resolution"] == (512 if version == "1.6" else 256)
    assert os.path.samefile(p["align"]["mask"], tmp_path / "LatentSync" / "latentsync" / "utils" / "mask.png")
    assert p["landmarks"]["alignment"] == ("insightface" if version == "1.6" else "fan")
    found = resolve_weights(str(weights), ["whisper_tiny_openai", f"latentsync{version.replace('.', '')}_unet"],
                            search_caches=False)
    assert all(str(path).startswith(str(ckpt)) for path in found.values())
    assert find_weights(str(weights), ["insightface_detector", "insightface_landmarks"],
                        check_size=False)[1] is None


def test_a_16_checkpoint_is_never_taken_for_15(tmp_path):
    ckpt = checkout(tmp_path / "LatentSync", "1.6")
    g = load_graph(SURGICAL, {"video.path": "a.mp4", "video.audio": "b.wav", "audio.path": "b.wav",
                              "mux.path": "c.mp4", "unet.weights": str(ckpt), "unet.version": "1.5"})
    assert g.stages["unet"].params["model"] == "musetalk"          # 1.5 missing: fallback
    assert any("latentsync15_unet" in n for n in g.notes)


def test_download_plan_in_the_hubs_layout(tmp_path):
    plan = {p.weight.name: p for p in D.plan_downloads(tmp_path, "latentsync-1.6", layout="hub")}
    assert plan["latentsync16_unet"].target == tmp_path / "latentsync_unet.pt"
    assert plan["whisper_tiny_openai"].target == tmp_path / "whisper" / "tiny.pt"
    assert plan["insightface_detector"].action == "manual"
    plan = {p.weight.name: p for p in D.plan_downloads(tmp_path, "latentsync-1.5", layout="hub")}
    assert plan["latentsync15_unet"].target == tmp_path / "latentsync_unet.pt"
    assert plan["s3fd"].target == tmp_path / "auxiliary" / "s3fd-619a316812.pth"
    assert plan["fan_landmarks"].target == tmp_path / "auxiliary" / "2DFAN4-cd938726ad.zip"
    ours = {p.weight.name: p for p in D.plan_downloads(tmp_path, "latentsync-1.5")}
    assert ours["latentsync15_unet"].target == tmp_path / "latentsync-1.5" / "latentsync_unet.pt"
    with pytest.raises(D.DownloadError, match="one LatentSync version per folder"):
        D.plan_downloads(tmp_path, "all", layout="hub")
    # a folder already holding 1.6 in the hub's layout is not overwritten by 1.5
    sparse(tmp_path / "latentsync_unet.pt", WEIGHT_FILES["latentsync16_unet"].size)
    plan = {p.weight.name: p for p in D.plan_downloads(tmp_path, "latentsync-1.6", layout="hub")}
    assert plan["latentsync16_unet"].action == "skip"
    with pytest.raises(D.DownloadError, match="latentsync16_unet, not latentsync15_unet"):
        D.plan_downloads(tmp_path, "latentsync-1.5", layout="hub")
