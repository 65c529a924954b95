"""generator.py: the one generator call, the precision table, and loading a generator with the
configuration of its model card."""

from __future__ import annotations

import json

import pytest
import torch

import checkpoint
import generator
import rbpn
from cli import ParameterError
from frames import Sample

TINY = rbpn.ModelConfig(base_filter=8, feat=8, n_resblock=1, nFrames=3)


def tiny_sample(batch: int = 1, h: int = 6, w: int = 5) -> Sample:
    g = torch.Generator().manual_seed(0)
    return Sample(input=torch.rand(batch, 3, h, w, generator=g), target=None,
                  neighbor=[torch.rand(batch, 3, h, w, generator=g) for _ in range(2)],
                  flow=[torch.randn(batch, 2, h, w, generator=g) for _ in range(2)],
                  bicubic=torch.rand(batch, 3, 4 * h, 4 * w, generator=g))


def test_run_generator_adds_the_residual_and_returns_float32():
    torch.manual_seed(0)
    net = TINY.build().eval()
    sample = tiny_sample()
    with torch.no_grad():
        plain = generator.run_generator(net, sample)
        torch.testing.assert_close(plain, net(sample.input, sample.neighbor, sample.flow))
        residual = generator.run_generator(net, sample, residual=True)
        half = generator.run_generator(net, sample, precision="bf16")
    assert torch.equal(residual, plain + sample.bicubic)
    assert half.dtype == torch.float32 and 0 < (half - plain).abs().mean() < 0.05
    with pytest.raises(ParameterError, match="precision='fp8'"):
        generator.run_generator(net, sample, precision="fp8")
    with pytest.raises(ValueError, match="bicubic"):
        generator.run_generator(net, sample._replace(bicubic=None), residual=True)


def test_model_config_round_trips_and_refuses_bad_entries():
    assert rbpn.ModelConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown model configuration entries: colour"):
        rbpn.ModelConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="'residual' must be bool"):
        rbpn.ModelConfig.from_dict({"residual": "yes"})
    with pytest.raises(ParameterError, match="model_type='SRCNN'"):
        generator.architecture("SRCNN")


def test_load_generator_reads_the_whole_configuration_from_the_card(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "g.pth"
    checkpoint.save_weights(TINY.build().state_dict(), weights)
    _, from_shapes = generator.load_generator(weights)
    assert from_shapes == TINY  # no card: residual off, future frames on
    card = {"config": {**TINY.to_dict(), "residual": True, "future_frame": False}}
    checkpoint.write_model_card(weights, card)
    _, config = generator.load_generator(weights)
    assert (config.residual, config.future_frame, config.nFrames) == (True, False, 3)
    # Cards written before the config held residual keep it at the top level.
    checkpoint.model_card_path(weights).write_text(json.dumps({"residual": True}))
    assert generator.load_generator(weights)[1].residual is True
    # A card that describes other weights is refused, naming the card.
    checkpoint.write_model_card(weights, {"config": {**TINY.to_dict(), "feat": 16}})
    with pytest.raises(checkpoint.CheckpointError, match=r"g.json: the model card does not "
                       r"describe g.pth \(card vs weights: feat 16 vs 8\)"):
        generator.load_generator(weights)


def fake_cpu(monkeypatch, *features):
    """Make the capability probe report exactly ``features`` for the CPU."""
    monkeypatch.setattr(generator, "_cpu_has", lambda feature: feature in features)


@pytest.mark.parametrize(("features", "picked", "because"), [
    (("amx_tile", "avx512_bf16"), "bf16", "AMX"),
    (("avx512_bf16",), "bf16", "AVX512-BF16"),
    ((), "fp32", "emulate bf16"),
])
def test_auto_picks_bf16_only_where_the_cpu_computes_it(monkeypatch, features, picked, because):
    fake_cpu(monkeypatch, *features)
    choice = generator.choose_precision("auto", "cpu")
    assert choice.precision == picked and because in choice.reason and not choice.emulated
    assert choice.describe().startswith(f"precision {picked} (auto: ")


def test_auto_on_cuda_follows_the_gpus_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    for supported, picked in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True, s=supported: s)
        assert generator.choose_precision("auto", torch.device("cuda")).precision == picked
    assert generator.choose_precision("fp16", torch.device("cuda")).reason == "as asked"


def test_emulated_fp16_on_a_cpu_is_refused_and_emulated_bf16_flagged(monkeypatch):
    fake_cpu(monkeypatch)
    with pytest.raises(ParameterError, match="precision='fp16'.*emulates fp16"):
        generator.choose_precision("fp16", "cpu")
    bf16 = generator.choose_precision("bf16", "cpu")
    assert bf16.precision == "bf16" and bf16.emulated
    assert bf16.describe().startswith("warning: precision bf16")
    assert generator.choose_precision("fp32", "cpu") == ("fp32", "as asked", False)
    fake_cpu(monkeypatch, "amx_fp16")
    assert generator.choose_precision("fp16", "cpu") == ("fp16", "as asked", False)
    with pytest.raises(ParameterError, match="choose one of auto, fp32, bf16, fp16"):
        generator.choose_precision("fp8", "cpu")
