"""Weights layout: resolution in a weights folder and the caches, the single missing-files
error, the strictness helpers, and the download planner with an injected downloader."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from lipgraph.models.checkpoint import StateDictMismatchError, check_state_dict, load_checkpoint, read_state_dict
from lipgraph.models.weight_finder import MissingWeightsError, find_weights, resolve_weights
from lipgraph.models.weight_table import MODELS, WEIGHT_FILES, WeightFile, files_in_set
from lipgraph.tools import download_weights as D


@pytest.fixture
def caches(tmp_path):
    """Empty, private Hugging Face and torch hub caches, so the user's real caches never leak in."""
    return {"hf_cache_dir": tmp_path / "hf-cache", "torch_hub_dir": tmp_path / "torch-hub"}


def touch(path: Path, size: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


# ---------------------------------------------------------------- registry


def test_registry_is_consistent():
    for name, wf in WEIGHT_FILES.items():
        assert wf.name == name
        assert wf.paths and len(set(wf.paths)) == len(wf.paths)
        assert "*" not in wf.paths[0]  # the download target
        assert (wf.hf_repo is None) == (wf.hf_filename is None)
        assert wf.source_url, f"{name} has no source"
        basenames = {os.path.basename(p) for p in wf.paths + wf.shared_paths}
        for fname, size in wf.sizes:
            assert fname in basenames and size > 0
        if wf.sha256 is not None:
            assert len(wf.sha256) == 64
        for backend in wf.required_for + wf.optional_for:
            assert backend in MODELS


def test_published_sizes_of_key_files():
    assert WEIGHT_FILES["musetalk_unet"].size == 3_400_074_924
    assert WEIGHT_FILES["musetalk_unet_config"].size == 748
    assert WEIGHT_FILES["sd_vae_weights"].expected_size("x/diffusion_pytorch_model.bin") == 334_707_217
    assert WEIGHT_FILES["latentsync16_unet"].size == 5_072_222_488
    assert WEIGHT_FILES["s3fd"].size == 89_843_225


def test_spec_config_has_the_published_size(specs_dir):
    # tests/specs/musetalk_unet.config.json is written exactly like the published musetalk.json.
    path = os.path.join(specs_dir, "musetalk_unet.config.json")
    assert os.path.getsize(path) == WEIGHT_FILES["musetalk_unet_config"].size


def required_for(backend):
    return [name for name, wf in WEIGHT_FILES.items() if backend in wf.required_for]


def test_backend_and_set_membership():
    assert {"musetalk_unet", "musetalk_unet_config", "sd_vae_config", "sd_vae_weights",
            "whisper_config", "whisper_weights"} == set(required_for("musetalk"))
    assert "face_parse" in WEIGHT_FILES and "musetalk" in WEIGHT_FILES["face_parse"].optional_for
    assert set(required_for("latentsync-1.6")) == {
        "sd_vae_config", "sd_vae_weights", "whisper_tiny_openai", "latentsync16_unet"}
    assert "latentsync16_unet" in files_in_set("latentsync")
    assert "latentsync15_unet" not in files_in_set("latentsync")
    assert "musetalk_unet" not in files_in_set("latentsync-1.5")
    assert set(files_in_set("all")) >= set(files_in_set("musetalk")) | set(files_in_set("latentsync-1.5"))
    with pytest.raises(ValueError, match="unknown set"):
        files_in_set("nope")


# ---------------------------------------------------------------- resolution


def test_fake_layout_of_empty_files_resolves(tmp_path, caches):
    root = tmp_path / "models"
    names = required_for("musetalk") + required_for("latentsync-1.5") + ["s3fd", "face_parse"]
    for name in set(names):
        touch(root / WEIGHT_FILES[name].paths[0])
    got = resolve_weights(root, names, check_size=False, **caches)
    assert set(got) == set(names)
    for name in names:
        assert got[name] == root / WEIGHT_FILES[name].paths[0]
    assert got["musetalk_unet"] == root / "musetalkV15" / "unet.pth"
    assert got["sd_vae_weights"].name == "diffusion_pytorch_model.safetensors"


def test_alternative_and_preferred_candidates(tmp_path, caches):
    touch(tmp_path / "sd-vae" / "diffusion_pytorch_model.bin")
    got = resolve_weights(tmp_path, ["sd_vae_weights"], check_size=False, **caches)
    assert got["sd_vae_weights"] == tmp_path / "sd-vae" / "diffusion_pytorch_model.bin"
    touch(tmp_path / "sd-vae" / "diffusion_pytorch_model.safetensors")
    got = resolve_weights(tmp_path, ["sd_vae_weights"], check_size=False, **caches)
    assert got["sd_vae_weights"].name == "diffusion_pytorch_model.safetensors"


def test_missing_files_raise_one_error_listing_all(tmp_path, caches):
    needed = required_for("musetalk") + ["latentsync16_unet"]
    touch(tmp_path / "musetalkV15" / "musetalk.json")
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights(tmp_path, needed, check_size=False, **caches)
    e = err.value
    assert isinstance(e, FileNotFoundError)
    assert set(e.missing) == set(needed) - {"musetalk_unet_config"}
    msg = str(e)
    for name in e.missing:
        assert f"- {name}:" in msg
        assert str(tmp_path / WEIGHT_FILES[name].paths[0]) in msg  # where it looked
        assert WEIGHT_FILES[name].source_url in msg  # how to get it
    assert "Hugging Face cache (TMElyralab/MuseTalk: musetalkV15/unet.pth)" in msg
    assert f"python -m lipgraph.tools.download_weights --dest {tmp_path} --set musetalk" in msg
    assert f"python -m lipgraph.tools.download_weights --dest {tmp_path} --set latentsync" in msg
    assert e.looked["musetalk_unet"][0] == str(tmp_path / "musetalkV15" / "unet.pth")


def test_wrong_size_is_rejected_with_a_reason(tmp_path, caches):
    touch(tmp_path / "musetalkV15" / "unet.pth", size=10)
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights(tmp_path, ["musetalk_unet"], **caches)
    assert "10 bytes, expected 3400074924" in str(err.value)
    # Without the size check the same file is accepted.
    assert resolve_weights(tmp_path, ["musetalk_unet"], check_size=False, **caches)


def tiny_registry(**extra):
    files = {
        "v1": WeightFile("v1", "variant one", ("v1/model.pt",), shared_paths=("model.pt",),
                         sizes=(("model.pt", 10),), hf_repo="org/v1", hf_filename="model.pt"),
        "v2": WeightFile("v2", "variant two", ("v2/model.pt",), shared_paths=("model.pt",),
                         sizes=(("model.pt", 12),), hf_repo="org/v2", hf_filename="model.pt"),
    }
    files.update(extra)
    return files


def test_shared_path_is_used_only_by_the_variant_of_that_size(tmp_path, caches):
    reg = tiny_registry()
    touch(tmp_path / "model.pt", size=12)
    assert resolve_weights(tmp_path, ["v2"], registry=reg, **caches)["v2"] == tmp_path / "model.pt"
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights(tmp_path, ["v1", "v2"], registry=reg, check_size=False, **caches)
    assert err.value.missing == ["v1"]
    assert "unless it has another variant's size" in str(err.value)
    # a file of neither published size (a fine-tune, a custom build) is taken for the version asked
    touch(tmp_path / "model.pt", size=11)
    for name in ("v1", "v2"):
        assert resolve_weights(tmp_path, [name], registry=reg, **caches)[name] == tmp_path / "model.pt"


def test_hugging_face_cache_is_searched(tmp_path, caches, specs_dir):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(caches["hf_cache_dir"]) / "models--TMElyralab--MuseTalk"
    target = repo / "snapshots" / commit / "musetalkV15" / "musetalk.json"
    target.parent.mkdir(parents=True)
    shutil.copy(os.path.join(specs_dir, "musetalk_unet.config.json"), target)  # 748 bytes
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    got = resolve_weights(tmp_path / "empty", ["musetalk_unet_config"], **caches)
    assert got["musetalk_unet_config"] == target
    # The weights folder wins over the cache.
    local = touch(tmp_path / "w" / "musetalkV15" / "musetalk.json", size=748)
    got = resolve_weights(tmp_path / "w", ["musetalk_unet_config"], **caches)
    assert got["musetalk_unet_config"] == local
    with pytest.raises(MissingWeightsError):
        resolve_weights(tmp_path / "empty", ["musetalk_unet_config"], search_caches=False, **caches)


def test_torch_hub_cache_is_searched(tmp_path, caches):
    hub = touch(Path(caches["torch_hub_dir"]) / "checkpoints" / "s3fd-619a316812.pth")
    got = resolve_weights(None, ["s3fd"], check_size=False, **caches)
    assert got["s3fd"] == hub


def test_find_weights_returns_what_it_found_and_one_error_for_the_rest(tmp_path, caches):
    present = touch(tmp_path / "musetalkV15" / "musetalk.json")
    found, missing = find_weights(tmp_path, ["musetalk_unet_config", "s3fd"], check_size=False, **caches)
    assert found == {"musetalk_unet_config": present}
    assert missing.missing == ["s3fd"] and str(missing).startswith(f"Missing 1 model file(s) under {tmp_path}:")
    assert str(tmp_path / "face_detection" / "s3fd.pth") in missing.looked["s3fd"]
    assert find_weights(tmp_path, ["musetalk_unet_config"], check_size=False, **caches)[1] is None


def test_unknown_name_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown weight names"):
        resolve_weights(tmp_path, ["musetalk_unet", "nope"], search_caches=False)


# ---------------------------------------------------------------- strictness helpers


def test_check_state_dict_lists_everything():
    expected = {f"layer{i}.weight": (4, 4) for i in range(30)}
    state = {k: torch.zeros(v) for k, v in expected.items()}
    state.pop("layer3.weight")
    state["layer7.weight"] = torch.zeros(4, 5)
    for i in range(25):
        state[f"extra{i}"] = torch.zeros(1)
    with pytest.raises(StateDictMismatchError) as err:
        check_state_dict(expected, state, "/x/model.pt", "test model")
    msg = str(err.value)
    assert msg.startswith("/x/model.pt does not match the test model")
    assert "missing 1: layer3.weight" in msg
    assert "unexpected 25:" in msg and "(5 more)" in msg
    assert "layer7.weight: file [4, 5] vs model [4, 4]" in msg
    check_state_dict(expected, {k: torch.zeros(v) for k, v in expected.items()}, "ok.pt")


def test_load_checkpoint_formats(tmp_path):
    from safetensors.torch import save_file

    state = {"a": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, tmp_path / "new.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("new.pt", "legacy.pt", "w.safetensors"):
        assert torch.equal(load_checkpoint(tmp_path / name)["a"], state["a"]), name
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_read_state_dict_unwraps_and_names_the_file(tmp_path):
    state = {"a": torch.ones(2)}
    for name, obj in (("plain.pt", state), ("wrapped.pt", {"state_dict": state, "epoch": 3}),
                      ("dp.pt", {"module.a": torch.ones(2)})):
        torch.save(obj, tmp_path / name)
        assert list(read_state_dict(tmp_path / name)) == ["a"], name
    torch.save({"a": torch.ones(2), "step": 7}, tmp_path / "mixed.pt")
    with pytest.raises(StateDictMismatchError, match=r"mixed.pt: test model state dict entries that are not tensors: \['step'\]"):
        read_state_dict(tmp_path / "mixed.pt", "test model")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(StateDictMismatchError, match="junk.pt: cannot read test model weights"):
        read_state_dict(tmp_path / "junk.pt", "test model")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        read_state_dict(tmp_path / "absent.pt")


# ---------------------------------------------------------------- download planning


def dl_registry():
    def wf(name, path, size, hf=True, sha=None):
        return WeightFile(
            name, f"file {name}", (path,), sizes=((os.path.basename(path), size),) if size else (),
            hf_repo="org/repo" if hf else None, hf_filename=f"sub/{os.path.basename(path)}" if hf else None,
            url=None if hf else "https://example.org/" + name, sha256=sha, required_for=("musetalk",),
        )
    return {
        "present": wf("present", "a/present.bin", 5),
        "partial": wf("partial", "b/partial.bin", 7),
        "absent": wf("absent", "c/absent.bin", 3),
        "nosize": wf("nosize", "d/nosize.json", None),
        "manual": wf("manual", "e/manual.bin", 4, hf=False),
        "other": WeightFile("other", "not in the set", ("z.bin",), hf_repo="o/r", hf_filename="z.bin",
                            required_for=("latentsync-1.6",)),
    }


class FakeFetcher:
    """Writes the published number of bytes (or `sizes[name]`) where the hub client would."""

    def __init__(self, sizes=None, fail=None):
        self.calls = []
        self.sizes = sizes or {}
        self.fail = fail

    def __call__(self, wf, staging):
        self.calls.append(wf.name)
        if self.fail:
            raise self.fail
        size = self.sizes.get(wf.name, wf.size or 2)
        return touch(Path(staging) / wf.hf_filename, size)


def test_plan_skips_present_files_and_refetches_wrong_sizes(tmp_path):
    reg = dl_registry()
    touch(tmp_path / "a" / "present.bin", 5)
    touch(tmp_path / "b" / "partial.bin", 2)
    plan = {p.weight.name: p for p in D.plan_downloads(tmp_path, "musetalk", registry=reg)}
    assert set(plan) == {"present", "partial", "absent", "nosize", "manual"}
    assert plan["present"].action == "skip"
    assert plan["partial"].action == "download" and "2 bytes, expected 7" in plan["partial"].reason
    assert plan["absent"].action == "download" and plan["absent"].reason == "missing"
    assert plan["nosize"].action == "download"
    assert plan["manual"].action == "manual" and "https://example.org/manual" in plan["manual"].reason
    assert plan["absent"].target == tmp_path / "c" / "absent.bin"


def test_run_plan_downloads_only_what_is_needed(tmp_path):
    reg = dl_registry()
    touch(tmp_path / "a" / "present.bin", 5)
    touch(tmp_path / "b" / "partial.bin", 2)
    fetch, log = FakeFetcher(), []
    manual = D.run_plan(D.plan_downloads(tmp_path, "musetalk", registry=reg), tmp_path,
                        fetch=fetch, log=log.append)
    assert fetch.calls == ["partial", "absent", "nosize"]
    assert [m.weight.name for m in manual] == ["manual"]
    assert (tmp_path / "b" / "partial.bin").stat().st_size == 7
    assert (tmp_path / "c" / "absent.bin").stat().st_size == 3
    assert (tmp_path / "d" / "nosize.json").exists()
    assert not (tmp_path / D.STAGING).exists()
    assert any("present: skip" in line or "skip, present" in line for line in log)
    assert any(line.startswith("[3/5] absent: downloading") for line in log)
    # A second run has nothing left to fetch.
    again = D.plan_downloads(tmp_path, "musetalk", registry=reg)
    assert [p.action for p in again if p.weight.name != "manual"] == ["skip"] * 4


def test_run_plan_rejects_a_download_of_the_wrong_size(tmp_path):
    reg = dl_registry()
    fetch = FakeFetcher(sizes={"present": 4})
    plan = D.plan_downloads(tmp_path, "musetalk", registry=reg)
    with pytest.raises(D.DownloadError, match="downloaded 4 bytes.*expected 5"):
        D.run_plan(plan, tmp_path, fetch=fetch, log=lambda s: None)
    assert not (tmp_path / "a" / "present.bin").exists()
    assert not (tmp_path / D.STAGING / "sub" / "present.bin").exists()


def test_run_plan_checks_sha256_when_asked(tmp_path):
    good = hashlib.sha256(b"\0" * 3).hexdigest()
    reg = {"f": WeightFile("f", "f", ("f.bin",), hf_repo="o/r", hf_filename="f.bin",
                           sizes=(("f.bin", 3),), sha256=good, required_for=("musetalk",))}
    D.run_plan(D.plan_downloads(tmp_path, "musetalk", registry=reg), tmp_path,
               fetch=FakeFetcher(), verify_sha256=True, log=lambda s: None)
    assert (tmp_path / "f.bin").exists()
    bad = {"g": WeightFile("g", "g", ("g.bin",), hf_repo="o/r", hf_filename="g.bin",
                           sha256="0" * 64, required_for=("musetalk",))}
    with pytest.raises(D.DownloadError, match="sha256"):
        D.run_plan(D.plan_downloads(tmp_path, "musetalk", registry=bad), tmp_path,
                   fetch=FakeFetcher(), verify_sha256=True, log=lambda s: None)
    assert not (tmp_path / "g.bin").exists()


def test_offline_gives_a_clear_error(tmp_path):
    reg = dl_registry()
    fetch = FakeFetcher(fail=ConnectionError("Name or service not known"))
    plan = D.plan_downloads(tmp_path, "musetalk", registry=reg)
    with pytest.raises(D.DownloadError) as err:
        D.run_plan(plan, tmp_path, fetch=fetch, log=lambda s: None)
    msg = str(err.value)
    assert "could not download present (org/repo: sub/present.bin)" in msg
    assert "ConnectionError" in msg and "network" in msg
    assert "https://huggingface.co/org/repo/resolve/main/sub/present.bin" in msg
    assert fetch.calls == ["present"]  # stops at the first failure


def test_main_dry_run_and_failure_exit_codes(tmp_path, capsys, monkeypatch):
    assert D.main(["--dest", str(tmp_path), "--set", "latentsync", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "latentsync16_unet" in out and "musetalk_unet" not in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing

    monkeypatch.setattr(D.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 50, 0, 1 << 50))
    rc = D.main(["--dest", str(tmp_path), "--set", "musetalk"], fetch=FakeFetcher(fail=OSError("offline")))
    err = capsys.readouterr().err
    assert rc == 1
    assert "error: could not download musetalk_unet" in err
