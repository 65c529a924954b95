"""The networks against the original code: state_dict layouts, parameter counts and outputs of
the original implementation (../shared/fixtures/models), and the stable initialisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import dbpn
import rbpn
from backbones import VGG16Features
from base_networks import ConvBlock, ResnetBlock, init_weights, make_activation
from SRGAN.model import Discriminator, Generator

SCALES = (2, 4, 8)


def architectures(shared_fixtures: Path) -> dict:
    return json.loads((shared_fixtures / "models" / "architectures.json").read_text())


def rbpn_fixture(shared_fixtures: Path, scale: int) -> tuple[dict, dict, tuple, np.ndarray]:
    """(config, state_dict, (x, neighbours, flows), expected output) of a small original RBPN."""
    data = np.load(shared_fixtures / "models" / f"rbpn_x{scale}_small.npz")
    state = {k[len("state."):]: torch.from_numpy(data[k]) for k in data.files
             if k.startswith("state.")}
    neighbors, flows = torch.from_numpy(data["neighbors"]), torch.from_numpy(data["flows"])
    inputs = (torch.from_numpy(data["x"]), list(neighbors.unbind(1)), list(flows.unbind(1)))
    return json.loads(str(data["config"])), state, inputs, data["output"]


def layout(module: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape)] for k, v in module.state_dict().items()]


@pytest.mark.parametrize("scale", SCALES)
def test_full_rbpn_has_the_original_keys_shapes_and_parameter_count(shared_fixtures, scale):
    expected = architectures(shared_fixtures)[f"rbpn_x{scale}_full"]
    net = rbpn.Net(scale_factor=scale)  # the defaults are the paper's full size
    assert layout(net) == expected["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == expected["parameters"]


def test_parameter_counts_are_the_published_ones():
    counts = {s: sum(p.numel() for p in rbpn.Net(scale_factor=s).parameters()) for s in SCALES}
    assert counts == {2: 10_134_119, 4: 12_771_943, 8: 20_308_583}
    assert sum(p.numel() for p in Discriminator().parameters()) == 5_215_425


def test_discriminator_and_vgg_have_the_original_keys(shared_fixtures):
    arch = architectures(shared_fixtures)
    assert layout(Discriminator()) == arch["srgan_discriminator"]["state_dict"]
    vgg = VGG16Features()
    assert layout(vgg) == arch["vgg16_features_first31"]["state_dict"]
    assert [str(m) for m in vgg.features] == arch["vgg16_features_first31"]["modules"]


@pytest.mark.parametrize("scale", SCALES)
def test_small_rbpn_reproduces_the_original_output(shared_fixtures, scale):
    config, state, (x, neighbors, flows), expected = rbpn_fixture(shared_fixtures, scale)
    net = rbpn.Net(**config)
    checkpoint.load_into(net, state)  # strict: every key, every shape
    with torch.no_grad():
        out = net.eval()(x, neighbors, flows)
    assert out.shape == (x.shape[0], 3, x.shape[2] * scale, x.shape[3] * scale)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)
    assert np.abs(expected).max() > 1e-2  # the comparison is not between near-zero tensors


def test_channels_last_gives_the_same_output(shared_fixtures):
    config, state, (x, neighbors, flows), expected = rbpn_fixture(shared_fixtures, 4)
    net = rbpn.Net(**config)
    checkpoint.load_into(net, state)
    net = net.eval().to(memory_format=torch.channels_last)
    last = [t.contiguous(memory_format=torch.channels_last) for t in (x, *neighbors, *flows)]
    n = len(neighbors)
    with torch.no_grad():
        out = net(last[0], last[1:1 + n], last[1 + n:])
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)


def discriminator_state(shared_fixtures: Path) -> tuple[dict, np.lib.npyio.NpzFile]:
    """The fixture's weights, decoded: ``raw.k`` as is, or int8 ``q.k`` times ``scale.k``."""
    data = np.load(shared_fixtures / "models" / "srgan_discriminator.npz")
    state = {}
    for key in Discriminator().state_dict():
        if f"raw.{key}" in data.files:
            state[key] = torch.from_numpy(data[f"raw.{key}"])
        else:
            state[key] = torch.from_numpy(data[f"q.{key}"].astype(np.float32)
                                          * data[f"scale.{key}"])
    return state, data


def test_discriminator_reproduces_train_and_eval_outputs(shared_fixtures):
    state, data = discriminator_state(shared_fixtures)
    net = Discriminator()
    checkpoint.load_into(net, state, what="discriminator")
    x = torch.from_numpy(data["x"])
    with torch.no_grad():
        train_out = net.train()(x)  # batch statistics; updates the running ones
        eval_out = net.eval()(x)  # the running statistics after that step
    np.testing.assert_allclose(train_out.numpy(), data["output_train"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(eval_out.numpy(), data["output_eval_after_train_step"],
                               rtol=0, atol=1e-5)
    assert int(net.net[3].num_batches_tracked) == int(state["net.3.num_batches_tracked"]) + 1


def test_dbpn_maps_lr_features_to_hr_features():
    net = dbpn.Net(base_filter=8, feat=4, num_stages=3, scale_factor=4)
    assert net(torch.rand(2, 8, 5, 6)).shape == (2, 4, 20, 24)
    with pytest.raises(ValueError, match="num_stages must be 3"):
        dbpn.Net(base_filter=8, feat=4, num_stages=2)


def test_bad_constructor_arguments_and_inputs_are_refused():
    with pytest.raises(ValueError, match="scale_factor must be one of"):
        rbpn.Net(base_filter=8, feat=4, n_resblock=1, nFrames=3, scale_factor=3)
    with pytest.raises(ValueError, match="init must be one of"):
        rbpn.Net(base_filter=8, feat=4, n_resblock=1, nFrames=3, init="xavier")
    with pytest.raises(ValueError, match="activation must be"):
        make_activation("swish")
    net = rbpn.Net(base_filter=8, feat=4, n_resblock=1, nFrames=3)
    x = torch.rand(1, 3, 6, 6)
    with pytest.raises(ValueError, match="expected 2 neighbours"):
        net(x, [x], [torch.rand(1, 2, 6, 6)])


def test_blocks_keep_the_original_options():
    assert "bn.weight" in ResnetBlock(4).state_dict()  # the original's default: batch norm
    assert set(ConvBlock(3, 4, activation=None).state_dict()) == {"conv.weight", "conv.bias"}
    block = ResnetBlock(4, norm=None)
    x = torch.randn(1, 4, 5, 5)
    conv2 = block.conv2(block.act(block.conv1(x)))
    torch.testing.assert_close(block(x), block.act(conv2 + x))  # ONE PReLU, used twice


def test_srgan_generator_upscales_into_unit_range():
    out = Generator(4).eval()(torch.rand(1, 3, 8, 6))
    assert out.shape == (1, 3, 32, 24)
    assert 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="power of two"):
        Generator(3)


def rms_output(init: str, seed: int = 0) -> float:
    """RMS output of an untrained RBPN that is representative of the full one in depth
    (5 residual blocks per stack, 7 frames, x4), with narrower layers to stay fast."""
    torch.manual_seed(seed)
    net = rbpn.Net(base_filter=32, feat=16, n_resblock=5, nFrames=7, scale_factor=4, init=init)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        out = net.eval()(x, [torch.rand_like(x) for _ in range(6)],
                         [torch.randn(1, 2, 8, 8) for _ in range(6)])
    return out.pow(2).mean().sqrt().item()


def test_stable_init_tames_the_exploding_original_init():
    kaiming, stable = rms_output("kaiming"), rms_output("stable")
    # Measured here: kaiming ~8e4, stable ~0.07. The full-size x4 model at 16x16 (seed 0):
    # kaiming 3.4e8 (a first MSE of 1e17), stable 0.067.
    assert kaiming > 1e3
    assert 1e-3 < stable < 1.0


def test_stable_init_keeps_names_and_shapes_and_only_scales_residual_ends():
    kwargs = dict(base_filter=8, feat=4, n_resblock=2, nFrames=3, scale_factor=2)
    torch.manual_seed(0)
    kaiming = rbpn.Net(**kwargs, init="kaiming").state_dict()
    torch.manual_seed(0)
    stable = rbpn.Net(**kwargs, init="stable").state_dict()
    assert [(k, v.shape) for k, v in kaiming.items()] == [(k, v.shape) for k, v in stable.items()]
    scaled = {k for k in kaiming if not torch.equal(kaiming[k], stable[k])}
    assert "res_feat1.0.conv2.weight" in scaled and "DBPN.up1.up_conv3.deconv.weight" in scaled
    assert "res_feat2.2.conv.weight" in scaled  # closes h = h0 + res_feat2(h0 - h1)
    for key in scaled:
        torch.testing.assert_close(stable[key], kaiming[key] * 0.1)
    assert "feat0.conv.weight" not in scaled and "output.conv.weight" not in scaled


def test_init_zeroes_biases():
    net = ConvBlock(3, 4)
    torch.nn.init.ones_(net.conv.bias)
    init_weights(net, "kaiming")
    assert torch.count_nonzero(net.conv.bias) == 0
