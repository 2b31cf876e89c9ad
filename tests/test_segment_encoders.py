"""Several segment encoders at once write what one writes (with a deterministic codec, the
same bytes), record segments in order, and report an encoder's failure to the caller without
leaving files behind."""
import os

import numpy as np
import pytest

from lipgraph.media.segments import Manifest, SegmentWriter


def frames(n, w=160, h=96):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(n):
        f = np.roll(base, 3 * i, axis=1)
        f[:8, :8] = i
        yield f


def write(folder, encoders, n=37, per=8, fail_at=None):
    m = Manifest.create(str(folder), {"job": "t"})
    w = SegmentWriter(m, 160, 96, 25.0, per, encoders=encoders, codec="ffv1", pix_fmt="bgr0")
    try:
        for i, f in enumerate(frames(n)):
            if i == fail_at:
                f = np.zeros((10, 10, 3), np.uint8)          # the wrong size: the encoder fails
            w.write(i, f, i / 25.0, f'{{"i": {i}}}')
        w.close()
    except Exception:
        w.abort()
        raise
    return m


def digest(folder, m):
    return [(s["file"], s["first"], s["last"], s["frames"], packets(os.path.join(folder, s["file"]), ("video",)))
            for s in m.segments]


def test_parallel_encoders_write_the_same_segments(tmp_path):
    one = write(tmp_path / "one", 1)
    three = write(tmp_path / "three", 3)
    assert digest(tmp_path / "one", one) == digest(tmp_path / "three", three)
    assert [s["first"] for s in three.segments] == [0, 8, 16, 24, 32] and three.next_frame() == 37
    assert open(tmp_path / "three" / "seg-000004.jsonl").read().splitlines()[-1] == '{"i": 36}'


@pytest.mark.parametrize("encoders", [1, 3])
def test_an_encoder_failure_reaches_the_caller_and_leaves_no_partial_file(tmp_path, encoders):
    with pytest.raises(Exception):
        write(tmp_path, encoders, fail_at=20)
    left = sorted(os.listdir(tmp_path))
    assert not [f for f in left if f.endswith(".partial")], left
    m = Manifest.load(str(tmp_path))
    # the segments completed before the failing one stay recorded, for --resume
    assert [s["first"] for s in m.segments] == [0, 8]


def test_the_graph_output_is_the_same_bytes_with_several_encoders(tmp_path, tiny_models):
    import subprocess
    from lipgraph.tools.synthetic import clip_pattern, graph_command, make_clip, model_sets
    video, audio = make_clip(str(tmp_path), clip_pattern(60, face_run=20, cutaway_run=10))
    outs = []
    for n in (1, 3):
        out = str(tmp_path / f"out{n}.mkv")
        cmd = graph_command("musetalk", video, audio, out, model_sets(tiny_models) + [
            "mux.segment_s=0.4", f"mux.encoders={n}", "detect.detector=haar",
            "mux.codec=ffv1", "mux.pix_fmt=bgr0"], "--quiet")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(packets(out))
    # the same packets, byte for byte (the container's header holds its creation time)
    assert outs[0] == outs[1] and len(outs[0]["video"]) == 60


def packets(path, kinds=("video", "audio")):
    import av
    out = {}
    for kind in kinds:
        with av.open(path) as c:
            out[kind] = [(p.pts, p.dts, bytes(p)) for p in c.demux(getattr(c.streams, kind)[0]) if p.size]
    return out
