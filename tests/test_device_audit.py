"""Device placement checked without a GPU: a deliberately misplaced tensor is caught, and the
model stages (MuseTalk's encode, UNet and decode stages, LatentSync's sampler and UNet, S3FD's
detector) run clean."""
import numpy as np
import pytest
import torch

from lipgraph.graph.items import Item
from lipgraph.graph.stage import StageContext
from lipgraph.tools.device_audit import DeviceAudit, DevicePlacementError


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x, bug=None):
        y = self.lin(x)
        if bug == "implicit":
            y = y + torch.ones(4)              # made without a device: CPU on a CUDA run
        elif bug == "cat":
            y = torch.cat([y, torch.zeros(2, 4)])
        return y


@torch.inference_mode()
def stage_step(model, bug=None, to_numpy="cpu"):
    device = torch.device("cpu")               # the stage's device param
    x = torch.from_numpy(np.ones((2, 4), np.float32)).to(device)
    y = model(x, bug) * 2 + torch.tensor(1.0)  # a 0-dim host tensor is fine on CUDA too
    scale = torch.full((4,), 0.5, device=device)
    y = y * scale
    return (y.cpu() if to_numpy == "cpu" else y).numpy()


def test_a_misplaced_tensor_is_caught():
    model = Toy()
    with DeviceAudit(model):
        assert stage_step(model).shape == (2, 4)          # the correct code passes
    for bug in ("implicit", "cat"):
        with pytest.raises(DevicePlacementError, match="mixes host and device"):
            with DeviceAudit(model):
                stage_step(model, bug)
    with pytest.raises(DevicePlacementError, match="numpy"):
        with DeviceAudit(model):
            stage_step(model, to_numpy="direct")
    # without the audit the same mistakes pass silently on a CPU
    assert stage_step(model, "implicit").shape == (2, 4)


class Ctx(StageContext):
    def warn(self, message):
        pass


def _audited(makers, batch):
    with DeviceAudit() as audit:             # the models are loaded inside: tracked from the start
        for make in makers:                  # one audit: encode and decode share the VAE
            stage = make()
            stage.open()
            [(_, batch)] = list(stage.process(batch, "in"))
    assert audit.ops > 50                    # the stages really ran under the audit
    return batch


def test_musetalk_model_stages_place_every_tensor(tiny_models):
    from lipgraph.stages.batch_builder import stack_batch
    from lipgraph.stages.surgical_unet import SurgicalUNet
    from lipgraph.stages.vae_decode import VAEDecode
    from lipgraph.stages.vae_encode import VAEEncode
    w = tiny_models
    rng = np.random.default_rng(0)
    items = [Item(i, {"frame": rng.integers(0, 255, (120, 160, 3), np.uint8),
                      "face_box": np.array([40, 20, 120, 100], np.int32),
                      "crop": rng.integers(0, 255, (256, 256, 3), np.uint8),
                      "audio": rng.standard_normal((50, 32)).astype(np.float32)}) for i in range(2)]
    batch = stack_batch(items)
    batch = _audited((lambda: VAEEncode("encode", {"vae": w["vae"], "model": "musetalk", "device": "cpu"}, Ctx()),
                 lambda: SurgicalUNet("unet", {"model": "musetalk", "unet": w["unet"], "unet_config": w["unet_config"],
                                        "vae": w["vae"], "device": "cpu"}, Ctx()),
                      lambda: VAEDecode("decode", {"vae": w["vae"], "device": "cpu"}, Ctx())), batch)
    assert batch.items[0].data["face"].shape == (256, 256, 3)


def test_latentsync_unet_places_every_tensor(tmp_path):
    from lipgraph.models.latentsync_unet3d import load_latentsync_unet
    from lipgraph.models.latentsync_sampler import LatentSyncSampler
    from lipgraph.models.random_weights import tiny_latentsync
    ls = tiny_latentsync(str(tmp_path))
    g = torch.Generator().manual_seed(0)
    # as the backend hands them over: made on the host, moved to the stage's device
    noise, mask, masked, ref, audio = (t.to("cpu") for t in (
        torch.randn(4, 8, 8, generator=g), torch.ones(4, 1, 8, 8), torch.randn(4, 4, 8, 8, generator=g),
        torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 5, 32, generator=g)))
    with DeviceAudit() as audit:
        unet = load_latentsync_unet(ls["unet3d"], ls["unet3d_config"], device="cpu")
        sampler = LatentSyncSampler(unet, steps=2, guidance=1.5, cache_interval=3)
        out = sampler.sample(noise, mask, masked, ref, audio)
    assert audit.ops > 100 and audit.where(out) == "device"


def test_s3fd_detector_places_every_tensor():
    from lipgraph.models.s3fd import S3FD, S3FDDetector
    torch.manual_seed(0)
    frame = np.random.default_rng(1).integers(0, 255, (64, 96, 3), np.uint8)
    with DeviceAudit() as audit:            # built inside: what it makes at set-up is tracked too
        det = S3FDDetector(S3FD().eval(), device="cpu", score_threshold=0.0)
        boxes = det.detect([frame])
    assert audit.ops > 50 and boxes[0].ndim == 2
