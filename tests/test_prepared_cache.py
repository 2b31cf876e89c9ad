"""The prepared-video cache: a re-dub reuses the video-side work and gives the same frames
as a run without the cache; a stale or damaged cache is detected, never used silently."""
import json
import os
import subprocess

import numpy as np
import pytest

from lipgraph.media.video import VideoReader
from lipgraph.tools.synthetic import graph_command, make_clip, model_sets, speech_like, tiny_weights, write_wav

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPH = os.path.join(ROOT, "configs", "graphs", "musetalk.yaml")
PATTERN = "F" * 24 + "C" * 6 + "F" * 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    weights = tiny_weights(str(folder / "models"), bisenet=True)   # parsing masks cached too
    video, dub1 = make_clip(str(folder), PATTERN)
    dub2 = str(folder / "dub2.wav")               # another dub of the same length
    write_wav(dub2, 0.7 * speech_like(len(PATTERN) / 25)[::-1].copy())
    sets = model_sets(weights) + ["mux.codec=ffv1", "mux.pix_fmt=bgr0", "parse.parse_every=2"]
    return folder, video, dub1, dub2, sets


def run(video, audio, out, sets, cache=None):
    cmd = graph_command(GRAPH, video, audio, out, sets, "--quiet", "--no-trace",
                        *(["--cache", cache] if cache else []))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.load(open(out + ".profile.json"))["stages"]


def frames(path):
    return [f.image for f in VideoReader(path)]


def entries(cache):
    return [os.path.join(cache, v, k) for v in os.listdir(cache) for k in os.listdir(os.path.join(cache, v))]


def test_redub_reuses_video_work_and_matches_uncached(setup):
    folder, video, dub1, dub2, sets = setup
    cache = str(folder / "cache")
    first = run(video, dub1, str(folder / "a.mkv"), sets, cache)
    n1 = len(PATTERN)
    assert first["cache_in"]["counters"] == {"cache_misses": n1}
    found = first["detect"]["counters"]
    assert found["faces"] + found["cutaways"] == n1 and found["faces"] >= 30
    assert first["cache_faces"]["counters"]["cache_written"] == found["faces"]
    assert first["cache_cuts"]["counters"]["cache_written"] == found["cutaways"]
    assert first["cache_faces"]["counters"]["cache_bytes"] > 0
    # a second dub: everything video-side comes from the cache
    second = run(video, dub2, str(folder / "b.mkv"), sets, cache)
    assert second["cache_in"]["counters"] == {"cache_hits": n1}
    assert "cache_written" not in second["cache_faces"]["counters"]
    assert second["parse"]["counters"].get("parsed", 0) == 0          # masks came from the cache
    assert second["encode"]["busy_s"] < 0.2 * first["encode"]["busy_s"]
    assert second["detect"]["busy_s"] < 0.2 * first["detect"]["busy_s"]
    plain = str(folder / "plain.mkv")
    run(video, dub2, plain, sets)                                       # no cache at all
    got, want = frames(str(folder / "b.mkv")), frames(plain)
    assert len(got) == len(want) == n1
    worst = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(got, want))
    assert worst <= 1            # masks are stored as float16: at most one level apart
    # a dub longer than the video plays it backwards past the end: still all from the cache
    longer = str(folder / "dub3.wav")
    write_wav(longer, 0.5 * speech_like(len(PATTERN) / 25 + 0.6))
    third = run(video, longer, str(folder / "c.mkv"), sets, cache)
    n3 = int((len(PATTERN) / 25 + 0.6) * 25)
    assert third["cache_in"]["counters"] == {"cache_hits": n3}
    assert len(frames(str(folder / "c.mkv"))) == n3


@pytest.mark.slow      # 50 s; the identity tests below cover a changed video in CI
def test_changed_video_gets_a_new_entry_and_the_stale_one_goes(setup, tmp_path):
    folder, video, dub1, dub2, sets = setup
    cache = str(tmp_path / "cache")
    run(video, dub1, str(tmp_path / "a.mkv"), sets, cache)
    old = entries(cache)
    assert len(old) == 1
    run(video, dub1, str(tmp_path / "b.mkv"), sets + ["crop.extra_margin=20"], cache)
    new = entries(cache)
    assert len(new) == 1 and new != old                 # other params: a new key, old removed
    # the video itself changes in place (same path, other content): the entry is rebuilt,
    # never used for the new content
    import shutil
    v2 = str(tmp_path / "clip.mp4")
    shutil.copy(video, v2)
    assert run(v2, dub1, str(tmp_path / "c.mkv"), sets, cache)["cache_in"]["counters"] == {
        "cache_misses": len(PATTERN)}
    v2_entries = [e for e in entries(cache) if e not in new]
    assert len(v2_entries) == 1
    assert run(v2, dub1, str(tmp_path / "d.mkv"), sets, cache)["cache_in"]["counters"] == {
        "cache_hits": len(PATTERN)}
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(make_clip(str(other), PATTERN[::-1])[0], v2)
    stages = run(v2, dub1, str(tmp_path / "e.mkv"), sets, cache)
    assert stages["cache_in"]["counters"] == {"cache_misses": len(PATTERN)}
    # the entry made from the old content is gone; the video keeps exactly one
    now = [e for e in entries(cache) if e not in new]
    assert len(now) == 1 and now != v2_entries

def test_identity_sees_a_same_size_edit_anywhere(tmp_path):
    from lipgraph.media.identity import file_identity, same_content
    path = tmp_path / "v.bin"
    data = bytearray(os.urandom(5 << 20))
    path.write_bytes(bytes(data))
    a = file_identity(str(path))
    data[len(data) // 2] ^= 0xFF                    # one byte in the middle, same size
    path.write_bytes(bytes(data))
    b = file_identity(str(path))
    assert a["size"] == b["size"] and not same_content(a, b)
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "w.bin").write_bytes(bytes(data))
    assert same_content(a, file_identity(str(tmp_path / "w.bin")))      # content, not name


@pytest.mark.slow      # 30 s (CI time)
def test_damaged_records_are_recomputed_and_counted(setup, tmp_path):
    folder, video, dub1, dub2, sets = setup
    cache = str(tmp_path / "cache")
    run(video, dub1, str(tmp_path / "a.mkv"), sets, cache)
    from lipgraph.stages._prepared import SLOT
    (entry,) = entries(cache)
    data = os.path.join(entry, "data.bin")
    index = np.fromfile(os.path.join(entry, "index.bin"), SLOT)
    size = os.path.getsize(data)
    hit = set()
    with open(data, "r+b") as f:                        # flip bytes in the middle of records
        for pos in (size // 3, size // 2, 2 * size // 3):
            f.seek(pos)
            b = f.read(1)
            f.seek(pos)
            f.write(bytes([b[0] ^ 0xFF]))
            hit |= {int(i) for i in np.nonzero((index["offset"] <= pos) &
                                                (pos < index["offset"] + index["length"]))[0]}
    stages = run(video, dub1, str(tmp_path / "b.mkv"), sets, cache)
    c = stages["cache_in"]["counters"]
    assert c["cache_damaged"] == c["cache_misses"] == len(hit) >= 1
    assert stages["cache_in"]["reasons"]["cache_damaged"]
    assert stages["cache_faces"]["counters"].get("cache_written", 0) + \
        stages["cache_cuts"]["counters"].get("cache_written", 0) == len(hit)     # rewritten
    got, want = frames(str(tmp_path / "b.mkv")), frames(str(tmp_path / "a.mkv"))
    for i, (a, b) in enumerate(zip(got, want)):
        if i not in hit:             # recomputed frames may differ (e.g. a reused mask)
            assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1, i
    # a truncated store is not trusted at all: rebuilt from scratch
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    stages = run(video, dub1, str(tmp_path / "c.mkv"), sets, cache)
    assert stages["cache_in"]["counters"] == {"cache_misses": len(PATTERN)}


def test_identity_is_hashed_once_for_a_settled_file(tmp_path, monkeypatch):
    """Several stages and the job ask for the video's identity: a file left alone is read
    once; a just-written one, or one changed since, is read again."""
    import time
    import lipgraph.media.identity as identity
    reads = []
    sha = identity.hashlib.sha256
    monkeypatch.setattr(identity.hashlib, "sha256", lambda: (reads.append(1), sha())[1])
    path = tmp_path / "v.bin"
    path.write_bytes(os.urandom(1 << 20))
    identity.file_identity(str(path))
    identity.file_identity(str(path))
    assert len(reads) == 2                          # just written: not trusted yet
    old = time.time() - 60
    os.utime(path, (old, old))
    a = identity.file_identity(str(path))
    b = identity.file_identity(str(path))
    assert len(reads) == 3 and a == b                # settled: read once
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, (old, old))                       # same size, same mtime: ctime moved
    assert not identity.same_content(a, identity.file_identity(str(path))) and len(reads) == 4


def test_records_are_plain_data_and_a_crafted_pickle_never_runs(tmp_path):
    """A cache folder may come from anyone: records hold arrays and plain values only, and a
    pickle written into a record's place is refused as damaged, not loaded."""
    import pickle
    import zlib

    from lipgraph.stages._prepared import PreparedStore, decode_record, encode_record

    record = {"box": np.array([1, 2, 30, 40, 0.9], np.float32), "face_box": np.array([1, 2, 30, 40], np.int32),
              "mask": np.linspace(0, 1, 12, dtype=np.float16).reshape(3, 4), "align": "insightface",
              "affine": np.eye(2, 3), "latents": None}
    back = decode_record(encode_record(record))
    assert list(back) == list(record)
    for k, v in record.items():
        if v is None or isinstance(v, str):
            assert back[k] == v
        else:
            assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
    with pytest.raises(TypeError, match="object"):
        encode_record({"x": np.array([object()], dtype=object)})

    store = PreparedStore(str(tmp_path), "vid", "key", 4, {})
    store.put(0, record)
    assert np.array_equal(store.get(0)["face_box"], record["face_box"])
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    blob = zlib.compress(pickle.dumps({"box": Exploit()}), 1)
    with store.lock:
        offset = store.data.tell()
        store.data.write(blob)
        store.data.flush()
        store.index[1] = (offset, len(blob), zlib.crc32(blob))   # a valid CRC: only the format stops it
    assert store.get(1) is None and store.damaged == 1 and not marker.exists()
    store.close()

    # an entry of the old (pickled) format is rebuilt, never read
    meta = tmp_path / "vid" / "key" / "meta.json"
    m = json.loads(meta.read_text())
    del m["format"]
    meta.write_text(json.dumps(m))
    again = PreparedStore(str(tmp_path), "vid", "key", 4, {})
    assert again.fresh and again.get(0) is None
    again.close()
