"""Identity of an input file without reading all of it: its size and SHA-256 hashes of its
first and last MiB (a changed dub or a re-encoded video changes them)."""
from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20


def file_identity(path: str) -> dict:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(_CHUNK)).hexdigest()
        f.seek(max(0, size - _CHUNK))
        tail = hashlib.sha256(f.read(_CHUNK)).hexdigest()
    return {"path": os.path.abspath(path), "size": size, "head": head, "tail": tail}
