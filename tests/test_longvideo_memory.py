"""Flat memory: peak RSS (summed over every process) of a 5x longer clip stays within 10%
of the short one. A short version of bench/longvideo.py, using its code.

Batches of 4 keep the model stages' transient buffers small: with 16, the GPU group's
resident memory swings by a few hundred MiB with how the stage threads happen to overlap,
which is noise against the 10% bound. Holding one 160x120 frame per source frame would add
about 170 MiB to the long run (ratio > 1.15), so a leak per frame still fails."""

from bench.longvideo import run_length
from lipgraph.tools.synthetic import tiny_weights


def test_peak_rss_does_not_grow_with_video_length(tmp_path):
    weights = tiny_weights(str(tmp_path / "models"))
    sets = ["batch.batch_size=4"]
    short = run_length(str(tmp_path), 0.5, (160, 120), weights, sets)
    long = run_length(str(tmp_path), 2.5, (160, 120), weights, sets)
    assert long["frames"] == 5 * short["frames"] == 3750
    ratio = long["peak_rss_bytes"] / short["peak_rss_bytes"]
    assert ratio <= 1.10, (ratio, short["per_process"], long["per_process"])
