import os
import re

import numpy as np
import pytest
import torch

from lipgraph.models.bisenet import (
    BiSeNet,
    BiSeNetWeightsError,
    FaceParser,
    load_bisenet,
)
from lipgraph.models.weight_finder import find_weights
from tests.spec_keys import check_rejects_bad_files, read_keys_tsv, state_dict_keys

N_BN_COUNTERS = 31


def random_state_dict(seed=0):
    """State dict of a BiSeNet with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = BiSeNet(19)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.normal_(1.0, 0.1)
            m.bias.data.normal_(0.0, 0.1)
            m.num_batches_tracked.fill_(7)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(path, state dict) of a saved random checkpoint in the 79999_iter.pth layout."""
    sd = random_state_dict()
    path = tmp_path_factory.mktemp("bisenet") / "79999_iter.pth"
    torch.save(sd, path)
    return str(path), sd


@pytest.fixture(scope="module")
def model(weights):
    return load_bisenet(weights[0])


def test_meta_state_dict_matches_upstream_spec(specs_dir):
    spec = read_keys_tsv(os.path.join(specs_dir, "bisenet_faceparsing.keys.tsv"))
    with torch.device("meta"):
        m = BiSeNet(n_classes=19)
    ours = state_dict_keys(m)
    assert ours == spec
    assert len(ours) == 191
    assert sum(p.numel() for p in m.parameters()) == 13300416


def test_from_config():
    m = BiSeNet.from_config({"n_classes": 5, "_class_name": "BiSeNet"})
    assert m.conv_out.conv_out.weight.shape[0] == 5
    with pytest.raises(ValueError, match="unknown"):
        BiSeNet.from_config({"n_classes": 19, "backbone": "resnet50"})


def test_strict_load_with_counters(weights, model):
    _, sd = weights
    loaded = model.state_dict()
    assert list(loaded) == list(sd)
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.conv_out.conv_out.weight.dtype == torch.float32


def test_strict_load_without_counters(tmp_path, weights):
    _, sd = weights
    trimmed = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert len(sd) - len(trimmed) == N_BN_COUNTERS
    path = tmp_path / "no_counters.pth"
    torch.save(trimmed, path)
    m = load_bisenet(path, dtype=torch.float64)
    loaded = m.state_dict()
    assert set(loaded) == set(sd)
    for k, v in trimmed.items():
        assert torch.equal(loaded[k], v.double()), k
    assert loaded["cp.resnet.bn1.num_batches_tracked"].dtype == torch.long
    assert m.ffm.conv1.weight.dtype == torch.float64


@pytest.mark.parametrize("case", ["shape", "extra", "missing"])
def test_rejects_bad_checkpoint(tmp_path, weights, case):
    _, sd = weights
    bad = dict(sd)
    if case == "shape":
        bad["conv_out.conv_out.weight"] = torch.zeros(18, 256, 1, 1)
        expect = "wrong shape 1: conv_out.conv_out.weight: file [18, 256, 1, 1] vs model [19, 256, 1, 1]"
    elif case == "extra":
        bad["sp.conv1.conv.weight"] = torch.zeros(64, 3, 7, 7)
        expect = "unexpected 1: sp.conv1.conv.weight"
    else:
        del bad["cp.arm16.bn_atten.running_var"]
        expect = "missing 1: cp.arm16.bn_atten.running_var"
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(BiSeNetWeightsError) as err:
        load_bisenet(path)
    assert expect in str(err.value)
    assert str(path) in str(err.value)


def test_rejects_non_state_dict(tmp_path):
    check_rejects_bad_files(load_bisenet, BiSeNetWeightsError, tmp_path, [torch.zeros(1)], "list.pth",
                            "state dict")


def torchvision_resnet18_dict(sd, scale=3.0):
    """The backbone in torchvision's naming, old-file style (no counters, with fc)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("cp.resnet.") and not k.endswith("num_batches_tracked"):
            out[k[len("cp.resnet."):]] = v * scale
    out["fc.weight"] = torch.zeros(1000, 512)
    out["fc.bias"] = torch.zeros(1000)
    return out


def test_resnet_file_is_validated_then_overridden(tmp_path, weights):
    path, sd = weights
    rpath = tmp_path / "resnet18-5c106cde.pth"
    torch.save(torchvision_resnet18_dict(sd), rpath)
    m = load_bisenet(path, resnet_path=rpath)
    # The main checkpoint covers the backbone, so the resnet file leaves no trace.
    assert torch.equal(m.cp.resnet.conv1.weight, sd["cp.resnet.conv1.weight"])
    assert torch.equal(m.cp.resnet.layer4[1].bn2.running_var, sd["cp.resnet.layer4.1.bn2.running_var"])

    bad = torchvision_resnet18_dict(sd)
    bad["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(bad, rpath)
    shape_msg = re.escape("layer1.0.conv1.weight: file [64, 64, 1, 1] vs model [64, 64, 3, 3]")
    with pytest.raises(BiSeNetWeightsError, match=shape_msg):
        load_bisenet(path, resnet_path=rpath)

    extra = torchvision_resnet18_dict(sd)
    extra["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(extra, rpath)
    with pytest.raises(BiSeNetWeightsError, match="unexpected 1: layer5.0.conv1.weight"):
        load_bisenet(path, resnet_path=rpath)

    with pytest.raises(FileNotFoundError):
        load_bisenet(path, resnet_path=tmp_path / "missing_resnet.pth")


def find_bisenet_weights(folder):
    """(79999_iter.pth, resnet18 file or None) as the face_parse stage finds them, or None."""
    found, _ = find_weights(folder, ["face_parse", "face_parse_resnet"], check_size=False,
                            search_caches=False)
    main, resnet = found.get("face_parse"), found.get("face_parse_resnet")
    return None if main is None else (str(main), resnet and str(resnet))


def test_find_bisenet_weights(tmp_path):
    assert find_bisenet_weights(tmp_path) is None
    folder = tmp_path / "face-parse-bisent"
    folder.mkdir()
    (folder / "resnet18-5c106cde.pth").write_bytes(b"x")
    assert find_bisenet_weights(tmp_path) is None  # the resnet file alone is not enough
    (folder / "79999_iter.pth").write_bytes(b"x")
    assert find_bisenet_weights(tmp_path) == (str(folder / "79999_iter.pth"),
                                              str(folder / "resnet18-5c106cde.pth"))
    os.remove(folder / "resnet18-5c106cde.pth")
    assert find_bisenet_weights(tmp_path) == (str(folder / "79999_iter.pth"), None)
    assert find_bisenet_weights(folder) == (str(folder / "79999_iter.pth"), None)  # the folder itself


def test_forward_shapes(model):
    x = torch.randn(1, 3, 96, 130)
    with torch.inference_mode():
        out = model(x)
        aux = model(x, aux=True)
    assert out.shape == (1, 19, 96, 130)
    assert len(aux) == 3 and all(a.shape == (1, 19, 96, 130) for a in aux)
    assert torch.equal(aux[0], out)
    # Upstream upsamples the 1/8 logits with align_corners=True bilinear interpolation.
    with torch.inference_mode():
        feat8, feat_cp8, _ = model.cp(x)
        low = model.conv_out(model.ffm(feat8, feat_cp8))
    assert low.shape[2:] == (12, 17)
    up = torch.nn.functional.interpolate(low, size=(96, 130), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, up)


def test_face_parser_outputs(model):
    from skimage import data

    img = data.astronaut()
    parser = FaceParser(model, "cpu", torch.float32, batch_size=2)
    images = [img, img[40:250, 150:330], np.ascontiguousarray(img[:77, :301])]
    maps = parser.parse(images)
    assert len(maps) == 3
    for m in maps:
        assert m.shape == (512, 512) and m.dtype == np.uint8
        assert m.max() < 19
    # A 512 x 512 input skips the resize: the map is the argmax of normalised RGB input.
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = model((x - mean) / std).argmax(1)[0].numpy()
    np.testing.assert_array_equal(maps[0], expected)
    # Batching does not change results; colour order matters (the model sees RGB).
    np.testing.assert_array_equal(parser.parse([images[1]])[0], maps[1])
    assert (parser.parse([np.ascontiguousarray(img[:, :, ::-1])])[0] != maps[0]).any()
    assert parser.parse([]) == []


def test_face_parser_preprocessing_matches_pil_bilinear(model):
    # Upstream: PIL resize to 512 x 512 (BILINEAR), ToTensor, ImageNet Normalize.
    Image = pytest.importorskip("PIL.Image")
    from skimage import data

    img = data.astronaut()
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    parser = FaceParser(model)
    wide = np.ascontiguousarray(np.concatenate([img[100:200], img[300:400, :300]], axis=1))
    for crop in (img[40:250, 150:330], img[60:140, 170:260], wide):  # smaller, larger, 1.6x shrink
        ref = np.asarray(Image.fromarray(crop).resize((512, 512), Image.BILINEAR), np.float32)
        ref = ((ref / 255.0 - mean) / std).transpose(2, 0, 1)
        ours = parser.preprocess([crop])[0].numpy()
        assert ours.shape == (3, 512, 512)
        # PIL works in 8-bit fixed point: at most one grey level apart, rarely.
        levels = np.abs(ours - ref) * std[:, None, None] * 255.0
        assert levels.max() < 1.01
        assert (levels > 0.01).mean() < 0.005


def test_face_parser_rejects_bad_images(model):
    parser = FaceParser(model)
    with pytest.raises(ValueError, match="image 1"):
        parser.parse([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        parser.parse([np.zeros((8, 8, 3), np.float32)])
