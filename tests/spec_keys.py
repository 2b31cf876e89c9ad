"""The upstream state-dict key lists in tests/specs/*.keys.tsv, and the same list for our models.

Each data line of a key list is `name<TAB>shape<TAB>kind`: shape is `AxBxC` (or `scalar`), kind is
`param` or `buffer`; lines starting with `#` are comments.
"""

from __future__ import annotations

import torch

KeyRow = tuple[str, tuple[int, ...], str]


def read_keys_tsv(path: str) -> list[KeyRow]:
    """Rows `(name, shape, kind)` of a spec key list, in file order, shapes as int tuples."""
    rows = []
    with open(path) as fh:
        for line in fh:
            if line.startswith("#") or not line.strip():
                continue
            name, shape, kind = line.rstrip("\n").split("\t")
            dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
            rows.append((name, dims, kind))
    return rows


def state_dict_keys(model: torch.nn.Module) -> list[KeyRow]:
    """`model`'s state dict in the key-list form: `(name, shape, "param" | "buffer")`."""
    params = {id(p) for p in model.parameters()}
    return [(name, tuple(t.shape), "param" if id(t) in params else "buffer")
            for name, t in model.state_dict(keep_vars=True).items()]


def check_rejects_bad_files(loader, error, folder, not_a_state_dict, name: str, match: str) -> None:
    """A loader refuses a file holding something other than a state dict (raising `error`
    matching `match`) and names a missing file."""
    import pytest
    path = folder / name
    torch.save(not_a_state_dict, path)
    with pytest.raises(error, match=match):
        loader(path)
    missing = folder / f"missing-{name}"
    with pytest.raises(FileNotFoundError, match=missing.name):
        loader(missing)
