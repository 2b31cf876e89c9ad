"""Flat memory: peak RSS (summed over every process) of a 5x longer clip stays within 10%
of the short one. A short version of bench/longvideo.py, using its code."""

from bench.longvideo import run_length
from tools.synthetic import tiny_weights


def test_peak_rss_does_not_grow_with_video_length(tmp_path):
    weights = tiny_weights(str(tmp_path / "models"))
    short = run_length(str(tmp_path), 0.5, (160, 120), weights, [])
    long = run_length(str(tmp_path), 2.5, (160, 120), weights, [])
    assert long["frames"] == 5 * short["frames"] == 3750
    ratio = long["peak_rss_bytes"] / short["peak_rss_bytes"]
    assert ratio <= 1.10, (ratio, short["per_process"], long["per_process"])
