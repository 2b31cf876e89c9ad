"""Make a sample clip to try lipgraph on: a talking-head stand-in (the astronaut photograph
shipped with scikit-image, moving and scaling) cut with cutaway shots (photographs without
a face), and a speech-like synthetic dub.

    python -m lipgraph.tools.sample sample/            # sample/sample.mp4 + sample/dub.wav
    lipgraph musetalk --video sample/sample.mp4 \\
        --audio sample/dub.wav --output sample/out.mp4 --random-weights

The dub runs `--extra` seconds longer than the video, so the output shows the video
playing forward then backward to follow the audio.
"""
from __future__ import annotations

import argparse
import os
import sys


def make_sample(folder: str, seconds: float = 8.0, fps: float = 25.0, width: int = 640,
                height: int = 360, extra_s: float = 2.0) -> tuple[str, str]:
    from lipgraph.tools.synthetic import clip_pattern, make_clip
    os.makedirs(folder, exist_ok=True)
    frames = max(1, int(round(seconds * fps)))
    video, wav = make_clip(folder, clip_pattern(frames, face_run=60, cutaway_run=20), fps=fps,
                           audio_s=frames / fps + extra_s, name="sample", width=width, height=height, crf=18)
    audio = os.path.join(folder, "dub.wav")
    os.replace(wav, audio)
    return video, audio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lipgraph.tools.sample", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="where to write sample.mp4 and dub.wav")
    ap.add_argument("--seconds", type=float, default=8.0, help="video length (default 8)")
    ap.add_argument("--size", default="640x360", help="WIDTHxHEIGHT (default 640x360)")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--extra", type=float, default=2.0, help="seconds of dub beyond the video")
    a = ap.parse_args(argv)
    try:
        w, h = (int(v) for v in a.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size: expected WIDTHxHEIGHT, got {a.size!r}")
    try:
        import skimage  # noqa: F401
    except ImportError:
        print("lipgraph.tools.sample needs scikit-image (pip install scikit-image)", file=sys.stderr)
        return 2
    video, audio = make_sample(a.folder, a.seconds, a.fps, w, h, a.extra)
    out = os.path.join(a.folder, "out.mp4")
    print(f"wrote {video} and {audio}\nnow run:\n  lipgraph musetalk "
          f"--video {video} --audio {audio} --output {out} --random-weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
