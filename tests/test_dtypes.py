"""The graphs in float16 and bfloat16 (the CUDA dtypes) on the CPU, end to end with tiny
random models, so dtype mistakes fail here before a GPU ever sees them: each run finishes,
cutaways stay untouched, and the faces stay close to the float32 run's."""
import os
import subprocess

import numpy as np
import pytest

from lipgraph.media.video import VideoReader
from media_fixtures import psnr
from lipgraph.models.random_weights import tiny_latentsync
from lipgraph.tools.synthetic import graph_command, make_clip, model_sets, read_id

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATTERN = "FFFFCCFFFF"
LOSSLESS = ["mux.codec=ffv1", "mux.pix_fmt=bgr0"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dtypes")
    return folder, *make_clip(str(folder), PATTERN)


def run(graph, clip, sets, dtype, name):
    folder, video, audio = clip
    out = str(folder / f"{name}-{dtype}.mkv")
    cmd = graph_command(os.path.join(ROOT, "configs", "graphs", graph), video, audio, out,
                        sets + LOSSLESS, "--quiet", "--no-trace", "--dtype", dtype, "--device", "cpu")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [f.image for f in VideoReader(out)]


def check(frames, ref, src, min_psnr):
    assert len(frames) == len(ref) == len(PATTERN)
    differs = 0
    for a, b in zip(frames, ref):
        i = read_id(a)
        if PATTERN[i] == "C":
            assert np.array_equal(a, src[i])        # cutaways: never touched
        else:
            assert psnr(a, b) > min_psnr, (i, psnr(a, b))
            differs += not np.array_equal(a, b)
    assert differs, "the faces equal float32's: the dtype was not applied"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_musetalk_graph_in_half_precision(clip, tiny_models, dtype):
    sets = model_sets(tiny_models)
    ref = run("musetalk.yaml", clip, sets, "float32", "mt")
    src = [f.image for f in VideoReader(clip[1])]
    check(run("musetalk.yaml", clip, sets, dtype, "mt"), ref, src, 30)


def test_latentsync_graph_in_bfloat16(clip, tiny_models, tmp_path_factory):
    ls = tiny_latentsync(str(tmp_path_factory.mktemp("ls")))
    sets = model_sets(tiny_models, latentsync=ls, steps=2) + ["unet.cache_interval=0"]
    ref = run("surgical.yaml", clip, sets + ["video.fps=source"], "float32", "ls")
    src = [f.image for f in VideoReader(clip[1])]
    check(run("surgical.yaml", clip, sets + ["video.fps=source"], "bfloat16", "ls"), ref, src, 25)
