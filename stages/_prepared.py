"""The prepared-video store: per source frame, the video-side work of a run (face box, crop
boxes, VAE latents, blend mask; LatentSync's aligned face and affine) kept on disk, so dubbing
the same footage again skips it.

Layout of one entry, `<root>/<video>/<key>/`: `meta.json` (what it was made from), `data.bin`
(records appended as they are computed, each zlib-compressed and CRC-checked) and `index.bin`
(a fixed-size table, one slot per source frame: offset, length, crc; memory-mapped, so
nothing per frame is held in RAM). A record that fails its check is treated as missing:
the frame is computed again and its record rewritten. Entries of the same video with another
key (the video or the params changed) are stale and removed when a new entry is made.

A cache folder is just files (shared, on a network filesystem, copied from someone else), so
a record holds only plain data in a format that cannot run code: a JSON header naming each
field's kind (none, text, number, array with dtype and shape) followed by the arrays' raw
bytes; object dtypes are refused (`encode_record` / `decode_record`).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import zlib

import numpy as np

from .fields import CACHED     # the per-frame fields a record may hold

SLOT = np.dtype([("offset", "<u8"), ("length", "<u4"), ("crc", "<u4")])
FORMAT = 2          # 1 pickled records (entries of that format are rebuilt, never unpickled)


class PreparedStore:
    def __init__(self, root: str, video_id: str, key: str, frames: int, meta: dict):
        self.folder = os.path.join(root, video_id, key)
        self.lock = threading.Lock()
        self.damaged = 0                # records that failed their CRC (recomputed)
        parent = os.path.dirname(self.folder)
        if os.path.isdir(parent):
            for other in os.listdir(parent):          # stale: same video, other key
                if other != key:
                    shutil.rmtree(os.path.join(parent, other), ignore_errors=True)
        self.fresh = not self._valid(frames)
        if self.fresh:
            shutil.rmtree(self.folder, ignore_errors=True)
            os.makedirs(self.folder)
            with open(os.path.join(self.folder, "meta.json"), "w") as f:
                json.dump({**meta, "frames": frames, "key": key, "format": FORMAT}, f, indent=1)
            with open(os.path.join(self.folder, "index.bin"), "wb") as f:
                f.truncate(frames * SLOT.itemsize)
            open(os.path.join(self.folder, "data.bin"), "wb").close()
        self.index = np.memmap(os.path.join(self.folder, "index.bin"), SLOT, "r+", shape=(frames,))
        self.data = open(os.path.join(self.folder, "data.bin"), "r+b")
        self.data.seek(0, os.SEEK_END)

    def _valid(self, frames: int) -> bool:
        """A usable entry: meta, index of the right size, data long enough for the index."""
        try:
            with open(os.path.join(self.folder, "meta.json")) as f:
                meta = json.load(f)
            index = np.fromfile(os.path.join(self.folder, "index.bin"), SLOT)
            size = os.path.getsize(os.path.join(self.folder, "data.bin"))
        except (OSError, ValueError):
            return False
        if meta.get("frames") != frames or len(index) != frames or meta.get("format") != FORMAT:
            return False
        ends = index["offset"] + index["length"]
        return bool((ends <= size).all())

    def get(self, src: int) -> dict | None:
        if not 0 <= src < len(self.index):
            return None
        slot = self.index[src]
        if slot["length"] == 0:
            return None
        with self.lock:
            self.data.seek(int(slot["offset"]))
            blob = self.data.read(int(slot["length"]))
            self.data.seek(0, os.SEEK_END)
        try:
            if zlib.crc32(blob) == int(slot["crc"]):
                return decode_record(zlib.decompress(blob))
        except (ValueError, zlib.error):
            pass
        self.damaged += 1
        self.index[src]["length"] = 0
        return None

    def put(self, src: int, record: dict) -> None:
        if not 0 <= src < len(self.index):
            return
        blob = zlib.compress(encode_record(record), 1)
        with self.lock:
            offset = self.data.tell()
            self.data.write(blob)
            self.data.flush()
            self.index[src] = (offset, len(blob), zlib.crc32(blob))

    def size_bytes(self) -> int:
        return os.path.getsize(os.path.join(self.folder, "data.bin")) + self.index.nbytes

    def close(self) -> None:
        self.index.flush()
        self.data.close()


def encode_record(record: dict) -> bytes:
    """Plain values and arrays -> bytes: a length-prefixed JSON header, then array bytes."""
    fields, chunks, offset = [], [], 0
    for name, value in record.items():
        if value is None:
            fields.append({"name": name, "kind": "none"})
        elif isinstance(value, str):
            fields.append({"name": name, "kind": "text", "value": value})
        elif isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
            fields.append({"name": name, "kind": "number", "value": value})
        else:
            arr = np.ascontiguousarray(value)
            if arr.dtype.hasobject:
                raise TypeError(f"prepared cache: field {name!r} is an object array")
            fields.append({"name": name, "kind": "array", "dtype": arr.dtype.str,
                           "shape": list(arr.shape), "offset": offset, "nbytes": arr.nbytes})
            chunks.append(arr.tobytes())
            offset += arr.nbytes
    header = json.dumps({"fields": fields}).encode()
    return len(header).to_bytes(4, "little") + header + b"".join(chunks)


def decode_record(blob: bytes) -> dict:
    """The inverse of `encode_record`; anything malformed raises ValueError."""
    if len(blob) < 4:
        raise ValueError("record too short")
    size = int.from_bytes(blob[:4], "little")
    try:
        header = json.loads(blob[4:4 + size].decode())
        body = memoryview(blob)[4 + size:]
        record = {}
        for f in header["fields"]:
            kind, name = f["kind"], str(f["name"])
            if kind == "none":
                record[name] = None
            elif kind in ("text", "number"):
                value = f["value"]
                ok = isinstance(value, str) if kind == "text" else (
                    isinstance(value, (int, float)) and not isinstance(value, bool))
                if not ok:
                    raise ValueError(f"field {name!r}: bad {kind} value")
                record[name] = value
            elif kind == "array":
                dtype = np.dtype(f["dtype"])
                if dtype.hasobject:
                    raise ValueError(f"field {name!r}: object dtype refused")
                start, nbytes = int(f["offset"]), int(f["nbytes"])
                shape = tuple(int(n) for n in f["shape"])
                if start < 0 or start + nbytes > len(body) or nbytes != dtype.itemsize * int(np.prod(shape)):
                    raise ValueError(f"field {name!r}: bad extent")
                record[name] = np.frombuffer(body[start:start + nbytes], dtype).reshape(shape).copy()
            else:
                raise ValueError(f"field {name!r}: unknown kind {kind!r}")
    except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed record: {exc}") from None
    return record


def record_of(data: dict) -> dict:
    """The storable fields of a frame's data (masks as float16: within 1/2000 of the value)."""
    rec = {k: data[k] for k in CACHED if k in data}
    if rec.get("mask") is not None:
        rec["mask"] = np.asarray(rec["mask"], np.float16)
    return rec


def restore(data: dict, record: dict) -> None:
    data.update(record)
    if record.get("mask") is not None:
        data["mask"] = record["mask"].astype(np.float32)
