"""The web app: `lipgraph app [--host --port --weights DIR --share]` (or `lipgraph-app`).

Upload a video and a dub (or use a generated sample), choose MuseTalk or LatentSync, run,
watch the engine's progress and per-stage table, get the video, profile and trace; an A/B tab
compares both graphs. Jobs run one at a time. Needs the `app` extra (`pip install -e ".[app]"`).
The logic is in `handlers` and `jobs` (plain functions), the page in `layout`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lipgraph app", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="weights folder offered by default (without one, runs use random weights)")
    p.add_argument("--share", action="store_true", help="also serve through a public Gradio link")
    p.add_argument("--jobs-dir", default=os.path.join(tempfile.gettempdir(), "lipgraph-app"),
                   help="where each job's folder goes")
    p.add_argument("--keep", type=float, default=3600.0, metavar="SECONDS",
                   help="remove a job's files this long after it ends (default 3600)")
    p.add_argument("--max-upload-mb", type=float, default=500.0, help="refuse larger uploads (default 500)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from .layout import build
    except ImportError as exc:
        print(f"lipgraph app: needs the app extra (pip install 'lipgraph[app]'): {exc}", file=sys.stderr)
        return 2
    from .handlers import AppConfig
    config = AppConfig(os.path.abspath(args.jobs_dir), args.weights, args.keep, args.max_upload_mb)
    os.makedirs(config.jobs_dir, exist_ok=True)
    page = build(config)
    page.launch(server_name=args.host, server_port=args.port, share=args.share,
                allowed_paths=page.allowed, max_file_size=f"{args.max_upload_mb:g}mb")
    return 0
