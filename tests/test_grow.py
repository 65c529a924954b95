"""grow.py: a grown generator computes what the small one did, and its copies can grow apart."""

import pytest
import torch

import checkpoint
import cli
import grow
import rbpn

SMALL = rbpn.ModelConfig(base_filter=8, feat=4, n_resblock=1, nFrames=3, residual=True)


def trained_small(seed: int = 0) -> rbpn.Net:
    """A small generator whose biases and PReLU slopes are not the init's zeros and 0.25s."""
    torch.manual_seed(seed)
    net = SMALL.build()
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return net.eval()


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 12, 10, generator=g)
    neighbours = [torch.rand(2, 3, 12, 10, generator=g) for _ in range(2)]
    flows = [torch.randn(2, 2, 12, 10, generator=g) for _ in range(2)]
    return x, neighbours, flows


def grown_net(state_dict, config) -> rbpn.Net:
    net = config.build()
    net.load_state_dict(state_dict)  # strict: every parameter has its grown value
    return net.eval()


@pytest.mark.parametrize("sizes", [(12, 6, 1), (8, 4, 3), (13, 7, 2)])
def test_the_grown_model_computes_the_same(sizes):
    small = trained_small()
    state, config = grow.grow(small.state_dict(), SMALL, *sizes, seed=3)
    assert (config.base_filter, config.feat, config.n_resblock) == sizes
    assert config.nFrames == SMALL.nFrames and config.residual
    big = grown_net(state, config)
    with torch.no_grad():
        want, got = small(*inputs()), big(*inputs())
    assert want.abs().mean() > 0.1  # a real signal, not a model outputting zeros
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_new_blocks_start_as_the_identity():
    state, _ = grow.grow(trained_small().state_dict(), SMALL, 8, 4, 2)
    for stack in ("res_feat1", "res_feat2", "res_feat3"):
        assert not state[f"{stack}.1.conv2.weight"].any()
        assert state[f"{stack}.1.act.weight"].item() == 1.0
        assert state[f"{stack}.1.conv1.weight"].std() > 0  # trainable from the first step on
    # the stacks' closing layers moved behind the new block, unchanged
    small = trained_small().state_dict()
    assert torch.equal(state["res_feat1.2.deconv.weight"], small["res_feat1.1.deconv.weight"])


def copy_gradients(noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of feat0's first new output channel and of the old one it copies."""
    state, config = grow.grow(trained_small().state_dict(), SMALL, 12, 4, 1, noise=noise,
                              seed=2)
    weight = state["feat0.conv.weight"]
    source = next(j for j in range(8) if torch.equal(weight[8], weight[j]))
    big = grown_net(state, config).train()
    big(*inputs()).square().mean().backward()
    grad = big.feat0.conv.weight.grad
    return grad[source], grad[8]


def test_copied_channels_get_different_gradients():
    source, copy = copy_gradients(noise=0.3)
    assert not torch.allclose(source, copy, rtol=1e-3, atol=1e-7)
    # with equal shares the copies would stay copies forever: the noise is what separates them
    source, copy = copy_gradients(noise=0.0)
    torch.testing.assert_close(source, copy)


def test_a_smaller_size_is_refused_by_name():
    with pytest.raises(cli.ParameterError, match=r"feat=2: must be at least the model's 4"):
        grow.grow(trained_small().state_dict(), SMALL, 8, 2, 1)
    with pytest.raises(cli.ParameterError, match="noise"):
        grow.grow(trained_small().state_dict(), SMALL, 8, 4, 1, noise=-1)


def test_the_script_writes_weights_of_the_grown_sizes(tmp_path, capsys):
    small = tmp_path / "small.pth"
    checkpoint.save_weights(trained_small().state_dict(), small)
    out = tmp_path / "grown.pth"
    with pytest.raises(SystemExit) as done:
        cli.run_cli(grow.main, [str(small), "--base_filter", "12", "--feat", "6",
                                "--n_resblock", "2", "-o", str(out)])
    assert done.value.code == 0
    assert rbpn.infer_config(checkpoint.load_state_dict(out)) == {
        "num_channels": 3, "base_filter": 12, "feat": 6, "num_stages": 3, "n_resblock": 2,
        "nFrames": 3, "scale_factor": 4}
    with pytest.raises(SystemExit) as done:
        cli.run_cli(grow.main, [str(small), "--base_filter", "4", "--feat", "6",
                                "--n_resblock", "2", "-o", str(tmp_path / "no.pth")])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --base_filter 4: must be at least the model's 8")
    assert not (tmp_path / "no.pth").exists()
