"""Download model weights from the Hugging Face hub into a weights folder.

    python -m lipgraph.tools.download_weights --dest models --set musetalk
    python -m lipgraph.tools.download_weights --dest models --set latentsync --dry-run
    python -m lipgraph.tools.download_weights --dest ~/LatentSync/checkpoints --set latentsync-1.5 --layout hub

`--layout ours` (the default) keeps MuseTalk's `models/` layout and puts each LatentSync
version in its own folder (`latentsync-1.6/latentsync_unet.pt`), so every set fits in one
folder. `--layout hub` lays the LatentSync files out as their Hugging Face repo does
(`latentsync_unet.pt`, `whisper/tiny.pt`, `auxiliary/...`), i.e. upstream's `checkpoints/`
folder: one LatentSync version per folder. Either folder works as `--weights`.

Files already present with their published size are skipped; a file of the wrong size (an
interrupted download) is fetched again. Downloads are staged in DEST/.download-staging and moved
into place only after their size checks out, so a partial file never sits where loaders look.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from lipgraph.models.weight_finder import find_weight, format_size, shared_variant
from lipgraph.models.weight_table import DOWNLOAD_SETS, WEIGHT_FILES, WeightFile, files_in_set

STAGING = ".download-staging"

# fetch(weight_file, staging_dir) -> path of the downloaded file (somewhere under staging_dir)
Fetcher = Callable[[WeightFile, Path], Path]


class DownloadError(RuntimeError):
    """A file could not be downloaded or failed its checks."""


@dataclass
class PlannedFile:
    weight: WeightFile
    target: Path
    action: str  # "skip", "download" or "manual"
    reason: str


LAYOUTS = ("ours", "hub")
HUB_LAID_OUT = "ByteDance/LatentSync"   # repos whose own layout `--layout hub` keeps


def target_path(wf: WeightFile, dest: Path, layout: str) -> Path:
    """Where a file goes: our layout's first place, or its path in a LatentSync repo."""
    if layout == "hub" and wf.hf_repo and wf.hf_repo.startswith(HUB_LAID_OUT) and wf.hf_filename:
        return dest / wf.hf_filename
    return dest / wf.paths[0]


def plan_downloads(dest: str | os.PathLike, set_name: str = "musetalk",
                   registry: Mapping[str, WeightFile] | None = None,
                   layout: str = "ours") -> list[PlannedFile]:
    """What to do for each file of `set_name`: skip it (present), download it, or tell the user."""
    registry = WEIGHT_FILES if registry is None else registry
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "hub" and sum(b.startswith("latentsync") for b in DOWNLOAD_SETS[set_name]) > 1:
        raise DownloadError("--layout hub holds one LatentSync version per folder (both name their "
                            "UNet latentsync_unet.pt): choose --set latentsync-1.5 or latentsync-1.6")
    dest = Path(dest)
    plan = []
    for name in files_in_set(set_name, registry):
        wf = registry[name]
        target = target_path(wf, dest, layout)
        search = find_weight(wf, dest, check_size=True, search_caches=False, registry=registry)
        if search.found is None and target.is_file() and shared_variant(target, registry) not in (None, name):
            raise DownloadError(f"{target} is {shared_variant(target, registry)}, not {name}: "
                                "use another folder for this LatentSync version")
        if search.found is not None:
            known = wf.expected_size(search.found) is not None
            plan.append(PlannedFile(wf, search.found, "skip",
                                    "present, size ok" if known else "present (size not published)"))
        elif not (wf.hf_repo and wf.hf_filename):
            plan.append(PlannedFile(wf, target, "manual", f"not on the hub; get it from {wf.url}"))
        else:
            plan.append(PlannedFile(wf, target, "download", "; ".join(search.problems) or "missing"))
    return plan


def hf_fetch(wf: WeightFile, staging: Path) -> Path:
    """Fetch one file with huggingface_hub (resumable; progress bars from the hub client)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(wf.hf_repo, wf.hf_filename, local_dir=staging))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_failed(wf: WeightFile, err: Exception) -> DownloadError:
    hint = ("HF_HUB_OFFLINE is set, so the hub client will not connect; unset it"
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
            else "check the network connection: huggingface.co (or the mirror in HF_ENDPOINT) "
                 "must be reachable")
    return DownloadError(
        f"could not download {wf.name} ({wf.hf_repo}: {wf.hf_filename}): "
        f"{type(err).__name__}: {err}\n  {hint}; or fetch {wf.source_url} by hand to the path above"
    )


def run_plan(plan: list[PlannedFile], dest: str | os.PathLike, fetch: Fetcher = hf_fetch,
             verify_sha256: bool = False, log: Callable[[str], None] = print) -> list[PlannedFile]:
    """Carry out a plan; returns the items left for the user to fetch by hand.

    Stops at the first failed download with a `DownloadError`; files finished so far stay, and
    a re-run skips them.
    """
    dest = Path(dest)
    staging = dest / STAGING
    todo = [p for p in plan if p.action == "download"]
    need = sum(p.weight.size or 0 for p in todo)
    dest.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest).free
    if need > free:
        raise DownloadError(f"{dest} has {format_size(free)} free, the downloads need {format_size(need)}")
    for i, item in enumerate(plan, 1):
        wf = item.weight
        head = f"[{i}/{len(plan)}] {wf.name}"
        if item.action == "skip":
            log(f"{head}: skip, {item.reason}: {item.target}")
            continue
        if item.action == "manual":
            log(f"{head}: {item.reason} -> {item.target}")
            continue
        log(f"{head}: downloading {wf.source_url} ({format_size(wf.size)}) -> {item.target}"
            + ("" if item.reason == "missing" else f" [{item.reason}]"))
        try:
            got = Path(fetch(wf, staging))
        except Exception as err:  # the hub client raises many kinds; all mean "not fetched"
            raise _fetch_failed(wf, err) from err
        size = got.stat().st_size
        if wf.size is not None and size != wf.size:
            got.unlink()
            raise DownloadError(
                f"{wf.name}: downloaded {size} bytes from {wf.source_url}, expected {wf.size}; "
                "removed it, run again to retry"
            )
        if verify_sha256 and wf.sha256:
            digest = _sha256(got)
            if digest != wf.sha256:
                got.unlink()
                raise DownloadError(f"{wf.name}: sha256 {digest} != published {wf.sha256}; removed it")
        item.target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got, item.target)
        log(f"{head}: done")
    # Everything fetched: the staging folder only holds the hub client's bookkeeping now.
    if staging.exists():
        shutil.rmtree(staging)
    return [p for p in plan if p.action == "manual"]


def main(argv: list[str] | None = None, fetch: Fetcher = hf_fetch) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lipgraph.tools.download_weights",
        description="Download model weights into a MuseTalk-style weights folder.",
    )
    parser.add_argument("--dest", required=True, help="weights folder (e.g. a MuseTalk models/ folder)")
    parser.add_argument("--set", default="musetalk", choices=list(DOWNLOAD_SETS),
                        help="which model's files (latentsync = LatentSync 1.6)")
    parser.add_argument("--layout", default="ours", choices=LAYOUTS,
                        help="ours: MuseTalk's models/ layout, LatentSync versions side by side; "
                             "hub: LatentSync's checkpoints/ layout, as its Hugging Face repo has it")
    parser.add_argument("--dry-run", action="store_true", help="only print what would be done")
    parser.add_argument("--verify-sha256", action="store_true",
                        help="also check published SHA-256 digests (reads every downloaded file)")
    args = parser.parse_args(argv)

    try:
        plan = plan_downloads(args.dest, args.set, layout=args.layout)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for item in plan:
            print(f"{item.action:8s} {item.weight.name:22s} {format_size(item.weight.size):>12s}  "
                  f"{item.target}  ({item.reason})")
        return 0
    try:
        manual = run_plan(plan, args.dest, fetch=fetch, verify_sha256=args.verify_sha256)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if manual:
        print(f"{len(manual)} file(s) must be fetched by hand (see above).", file=sys.stderr)
        return 2
    print(f"all files of set '{args.set}' are in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
