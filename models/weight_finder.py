"""Finding model files: the one lookup every model and stage uses.

A file (an entry of `WEIGHT_FILES`) is looked for at each of its places in the weights folder
(`--weights`), then in the Hugging Face hub cache (offline lookup), the torch hub cache and its
extra locations. Whatever is missing is reported in one message: each file, every place it was
looked for, and how to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from .weight_table import WEIGHT_FILES, WeightFile

DOWNLOAD_COMMAND = "python -m lipgraph.tools.download_weights --dest {dest} --set {set}"


class MissingWeightsError(FileNotFoundError):
    """Some model files were not found. `missing` names them, `looked` lists where we searched."""

    def __init__(self, message: str, missing: list[str], looked: dict[str, list[str]]):
        super().__init__(message)
        self.missing = missing
        self.looked = looked

    def __str__(self) -> str:  # FileNotFoundError would otherwise print the args tuple
        return self.args[0]


@dataclass
class WeightSearch:
    """Result of looking for one file: where it is (or None), every place tried, rejections."""

    found: Path | None = None
    looked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def take(self, wf: WeightFile, place: Path | None, check_size: bool, shown: str | None = None) -> bool:
        """Try `place` (its name may be a `*` pattern: the first match in name order)."""
        self.looked.append(shown or str(place))
        if place is None:
            return False
        hits = sorted(place.parent.glob(place.name)) if "*" in place.name else [place]
        for path in filter(Path.is_file, hits):
            expected, actual = wf.expected_size(path), path.stat().st_size
            if check_size and expected is not None and actual != expected:
                self.problems.append(
                    f"{path} is {actual} bytes, expected {expected} (incomplete download or another file?)")
                continue
            self.found = path
            return True
        return False


def _hub_cache_lookup(repo: str, filename: str, cache_dir: str | os.PathLike | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache
    hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    # Besides a path it may return None or a "known not to exist" sentinel object.
    return Path(hit) if isinstance(hit, str) else None


def find_weight(wf: WeightFile, weights_dir: str | os.PathLike | None, *, check_size: bool = True,
                search_caches: bool = True, hf_cache_dir: str | os.PathLike | None = None,
                torch_hub_dir: str | os.PathLike | None = None,
                registry: Mapping[str, WeightFile] | None = None) -> WeightSearch:
    """Look for one file; returns where it was found (or not) and every place tried.

    With `check_size`, a file whose published size is known must have exactly that size.
    """
    search = WeightSearch()
    if weights_dir is not None:
        root = Path(weights_dir)
        if any(search.take(wf, root / rel, check_size) for rel in wf.paths):
            return search
        for rel in wf.shared_paths:
            path = root / rel
            search.looked.append(f"{path} (unless it has another variant's size)")
            # A shared name (upstream's layout) is this variant's unless its size is another
            # variant's published size: a 1.6 file is never taken for 1.5, a fine-tune of
            # unpublished size is taken for the version asked for.
            others = {o.size for o in (WEIGHT_FILES if registry is None else registry).values()
                      if o.name != wf.name and rel in o.shared_paths and o.size is not None}
            if path.is_file() and path.stat().st_size not in others:
                search.found = path
                return search
    if not search_caches:
        return search
    if wf.hf_repo and wf.hf_filename:
        for repo, fname in ((wf.hf_repo, wf.hf_filename),) + wf.hub_alternates:
            if search.take(wf, _hub_cache_lookup(repo, fname, hf_cache_dir), check_size,
                           shown=f"Hugging Face cache ({repo}: {fname})"):
                return search
    places = [Path(os.path.expanduser(loc)) for loc in wf.extra_locations]
    if wf.torch_hub_names:
        import torch
        hub = torch_hub_dir if torch_hub_dir is not None else torch.hub.get_dir()
        places[:0] = [Path(hub) / "checkpoints" / name for name in wf.torch_hub_names]
    for place in places:
        if search.take(wf, place, check_size):
            break
    return search


def shared_variant(path: str | os.PathLike, registry: Mapping[str, WeightFile] | None = None) -> str | None:
    """Which registry file a file at a shared name is, judged by its published size."""
    size = os.path.getsize(path)
    return next((wf.name for wf in (WEIGHT_FILES if registry is None else registry).values()
                 if wf.shared_paths and wf.size == size), None)


def format_size(size: int | None) -> str:
    """'748 bytes', '3,400.1 MB' or 'size unknown'."""
    if size is None:
        return "size unknown"
    return f"{size} bytes" if size < 1_000_000 else f"{size / 1e6:,.1f} MB"


def _missing_message(searches: Mapping[str, WeightSearch], weights_dir: str | os.PathLike | None,
                     registry: Mapping[str, WeightFile]) -> str:
    where = f"under {weights_dir}" if weights_dir is not None else "(no weights folder given)"
    dest = weights_dir if weights_dir is not None else "<weights folder>"
    lines = [f"Missing {len(searches)} model file(s) {where}:"]
    for name, search in searches.items():
        wf = registry[name]
        size = f" ({format_size(wf.size)})" if wf.size else ""
        lines.append(f"  - {name}: {wf.purpose}{size}")
        lines.append("      looked in: " + "; ".join(search.looked))
        lines += [f"      found but rejected: {problem}" for problem in search.problems]
        if wf.source_url:
            lines.append(f"      get it: {wf.source_url} -> {Path(dest) / wf.paths[0]}")
        if wf.url and wf.url != wf.source_url:
            lines.append(f"      original source: {wf.url}")
    sets = dict.fromkeys(registry[n].download_sets()[0] for n in searches
                         if registry[n].hf_repo and registry[n].download_sets())
    lines += ["To download: " + DOWNLOAD_COMMAND.format(dest=dest, set=s) for s in sets]
    return "\n".join(lines)


def find_weights(weights_dir: str | os.PathLike | None, names: Iterable[str], *,
                 registry: Mapping[str, WeightFile] | None = None,
                 **options) -> tuple[dict[str, Path], MissingWeightsError | None]:
    """Paths of the `names` files that were found, and one error describing all the others
    (None when nothing is missing). `options` go to `find_weight`."""
    registry = WEIGHT_FILES if registry is None else registry
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown weight names {unknown}; known names: {', '.join(registry)}")
    searches = {n: find_weight(registry[n], weights_dir, registry=registry, **options) for n in names}
    found = {n: s.found for n, s in searches.items() if s.found is not None}
    missing = {n: s for n, s in searches.items() if s.found is None}
    if not missing:
        return found, None
    return found, MissingWeightsError(_missing_message(missing, weights_dir, registry), list(missing),
                                      {n: s.looked for n, s in missing.items()})


def resolve_weights(weights_dir: str | os.PathLike | None, needed: Iterable[str],
                    **options) -> dict[str, Path]:
    """Paths of the `needed` files (registry names), or one `MissingWeightsError` for all missing
    (`options` go to `find_weight`)."""
    found, missing = find_weights(weights_dir, needed, **options)
    if missing is not None:
        raise missing
    return found
