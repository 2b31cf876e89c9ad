"""Shared-memory transport: arrays and tensors travel as handles, not pickled pixels."""
import os
import pickle

import numpy as np
import pytest
import torch

from lipgraph.graph import shm
from lipgraph.graph.items import EOS, Batch, Flush, Info, Item


def test_large_array_goes_through_shared_memory():
    run = shm.new_run_id()
    frame = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    data = shm.dumps(Item(7, {"frame": frame, "box": (1, 2, 3, 4)}), run)
    assert len(data) < 2000                       # metadata only: the pixels are not in the pipe
    assert len(shm.segments(run)) == 1
    item = shm.loads(data)
    assert shm.segments(run) == []                # unlinked on receipt
    assert item.index == 7 and item.data["box"] == (1, 2, 3, 4)
    np.testing.assert_array_equal(item.data["frame"], frame)
    item.data["frame"][0, 0, 0] ^= 1              # writable, private to the receiver
    assert item.data["frame"][0, 0, 0] != frame[0, 0, 0]


def test_small_arrays_inline_and_non_contiguous_views():
    run = shm.new_run_id()
    small = np.arange(10, dtype=np.float32)
    big = np.arange(200_000, dtype=np.int32).reshape(400, 500)[:, ::2]   # a strided view
    out = shm.loads(shm.dumps({"small": small, "big": big}, run))
    np.testing.assert_array_equal(out["small"], small)
    np.testing.assert_array_equal(out["big"], big)
    assert shm.segments(run) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_torch_tensors_round_trip(dtype):
    run = shm.new_run_id()
    big = torch.randn(64, 4, 32, 32).to(dtype)
    small = torch.arange(6).to(dtype)
    out = shm.loads(shm.dumps([big, small], run))
    assert out[0].dtype == dtype and out[1].dtype == dtype
    assert torch.equal(out[0], big) and torch.equal(out[1], small)
    assert shm.segments(run) == []


def test_batches_and_control_messages():
    run = shm.new_run_id()
    b = Batch([Item(i, {"crop": np.full((256, 256, 3), i, np.uint8)}) for i in range(3, 7)],
              {"stack": np.zeros((4, 256, 256, 3), np.uint8)})
    out = shm.loads(shm.dumps(b, run))
    assert [m.index for m in out.items] == [3, 4, 5, 6]
    assert int(out.items[2].data["crop"][0, 0, 0]) == 5
    assert shm.loads(shm.dumps(EOS, run)) is EOS
    assert shm.loads(shm.dumps(Flush(9), run)).before == 9
    assert shm.loads(shm.dumps(Info(fps=25.0), run)).data == {"fps": 25.0}


def test_failed_dump_leaves_no_segment():
    run = shm.new_run_id()

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("no")
    with pytest.raises(TypeError):
        shm.dumps([np.zeros(100_000), Unpicklable()], run)
    assert shm.segments(run) == []


def test_sweep_and_stale_sweep():
    run = shm.new_run_id()
    shm.dumps(np.zeros(100_000), run)
    shm.dumps(np.zeros(100_000), run)
    assert len(shm.segments(run)) == 2
    assert shm.sweep(run) == 2 and shm.segments(run) == []
    # a segment of a run whose main process no longer exists
    dead = f"{2**22 + 12345}x{os.urandom(4).hex()}"
    shm.dumps(np.zeros(100_000), dead)
    assert shm.segments(dead)
    shm.sweep_stale()
    assert shm.segments(dead) == []


def test_message_is_pickle_compatible_metadata():
    run = shm.new_run_id()
    data = shm.dumps(Item(1, {"a": 1}), run)
    assert pickle.loads(data).data == {"a": 1}    # no array: plain pickle
