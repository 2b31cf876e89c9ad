"""Identity of an input file: its size and the SHA-256 of its whole content (a changed
dub, a re-encoded or edited video changes it, wherever the change is). Reading the file
once costs about a second per 1-2 GB, small against lip-syncing it; the hash is kept per
process for a file unchanged since (several stages and the job ask for the same video)."""
from __future__ import annotations

import hashlib
import os
import time

_BLOCK = 8 << 20
_SETTLED_S = 2.0
_known: dict[tuple, dict] = {}


def settled_stamp(path: str) -> tuple | None:
    """This version of a file (path, size, times, inode), or None for one modified in the last
    2 s: it may still change unseen within its timestamp's granularity (git's "racily clean")."""
    path = os.path.abspath(path)
    st = os.stat(path)
    if time.time() - st.st_mtime <= _SETTLED_S:
        return None
    return path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def file_identity(path: str) -> dict:
    path = os.path.abspath(path)
    stamp = settled_stamp(path)
    if stamp in _known:
        return dict(_known[stamp])
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            size += len(block)
    ident = {"path": path, "size": size, "sha256": h.hexdigest()}
    if stamp is not None:
        _known[stamp] = ident
    return dict(ident)


def same_content(a: dict, b: dict) -> bool:
    return (a.get("size"), a.get("sha256")) == (b.get("size"), b.get("sha256"))
