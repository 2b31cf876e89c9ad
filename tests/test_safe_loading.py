"""Files read from disk never run code: checkpoints load with weights_only, graph and jobs
files are safe-loaded YAML (the prepared cache's records: tests/test_prepared_cache.py)."""
import pytest
import torch

from lipgraph.graph.spec import GraphError, load_graph


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("loader", ["checkpoint", "s3fd", "bisenet", "fan"])
def test_a_checkpoint_with_code_in_it_is_refused(tmp_path, loader):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit(str(marker))}, path)
    if loader == "checkpoint":
        from lipgraph.models.checkpoint import load_checkpoint
        call = lambda: load_checkpoint(path)  # noqa: E731
    elif loader == "s3fd":
        from lipgraph.models.s3fd import load_s3fd
        call = lambda: load_s3fd(path)  # noqa: E731
    elif loader == "bisenet":
        from lipgraph.models.bisenet import load_bisenet
        call = lambda: load_bisenet(path)  # noqa: E731
    else:
        from lipgraph.models.landmarks import load_fan
        evil = tmp_path / "2DFAN4-evil.pth.tar"
        path.rename(evil)
        call = lambda: load_fan(str(evil))  # noqa: E731
    with pytest.raises(Exception):
        call()
    assert not marker.exists()


def test_graph_files_are_safe_yaml(tmp_path):
    marker = tmp_path / "ran"
    graph = tmp_path / "evil.yaml"
    graph.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nstages: {{}}\n")
    with pytest.raises(GraphError, match="not valid YAML"):
        load_graph(str(graph))
    assert not marker.exists()


def test_jobs_files_are_safe_yaml(tmp_path):
    from lipgraph.runners.scaleout import read_jobs
    marker = tmp_path / "ran"
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"jobs: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(Exception):
        read_jobs(str(jobs))
    assert not marker.exists()
