"""The checkpoint loader: every accepted format, configuration inference, and one clear line
for every bad file (a malicious pickle must not run)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import checkpoint
import cli
import generator
import rbpn
from SRGAN.model import Discriminator
from tests.test_models import architectures, rbpn_fixture

TINY = dict(num_channels=3, base_filter=8, feat=4, num_stages=3, n_resblock=2, nFrames=3,
            scale_factor=4)


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return rbpn.Net(**TINY).state_dict()


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)  # safetensors stores the keys sorted
    for key in a:
        assert torch.equal(a[key], b[key]), key


def one_line_error(func, *args, match: str | None = None, **kwargs) -> str:
    """Run ``func`` expecting a CheckpointError: its single-line message."""
    with pytest.raises(checkpoint.CheckpointError, match=match) as err:
        func(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, cli.CLIError)
    return message


@pytest.mark.parametrize("name", ["w.pth", "w.safetensors"])
def test_save_weights_round_trip(tmp_path, tiny_state, name):
    checkpoint.save_weights(tiny_state, tmp_path / name)
    assert_same(checkpoint.load_state_dict(tmp_path / name), tiny_state)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_pth_weights_are_a_plain_dict_in_the_original_format(tmp_path, tiny_state):
    checkpoint.save_weights({f"module.{k}": v for k, v in tiny_state.items()}, tmp_path / "w.pth")
    raw = torch.load(tmp_path / "w.pth", weights_only=True)
    assert type(raw) is dict and list(raw) == list(tiny_state)


def test_dataparallel_and_legacy_checkpoints_load(tmp_path, tiny_state):
    torch.save({f"module.{k}": v for k, v in tiny_state.items()}, tmp_path / "dp.pth")
    assert_same(checkpoint.load_state_dict(tmp_path / "dp.pth"), tiny_state)
    # torch < 1.6 wrote the legacy (non-zip) format, as the original RBPN_4x.pth may be.
    torch.save(tiny_state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    net, config = generator.load_generator(tmp_path / "legacy.pth")
    assert config.net_kwargs() == TINY and not net.training


def test_training_state_gives_the_generator(tmp_path, tiny_state):
    state = {"format": checkpoint.TRAIN_STATE_FORMAT, "version": 1, "netG": tiny_state,
             "netD": {"net.0.weight": torch.zeros(1)}, "optimizerG": {}, "optimizerD": None,
             "schedulerG": {}, "schedulerD": None, "scaler": None, "epoch": 3, "iteration": 7,
             "rng": {"torch": torch.get_rng_state()}, "args": {"nFrames": 3}}
    checkpoint.atomic_torch_save(state, tmp_path / "train_state.pth")
    assert_same(checkpoint.load_state_dict(tmp_path / "train_state.pth"), tiny_state)
    loaded = checkpoint.load_training_state(tmp_path / "train_state.pth")
    assert loaded["epoch"] == 3 and loaded["args"] == {"nFrames": 3}
    one_line_error(checkpoint.load_training_state, tmp_path / "nothing.pth", match="no such file")
    checkpoint.save_weights(tiny_state, tmp_path / "w.pth")
    one_line_error(checkpoint.load_training_state, tmp_path / "w.pth",
                   match="not an iSeeBetter training state")
    checkpoint.atomic_torch_save({**state, "version": 2}, tmp_path / "future.pth")
    one_line_error(checkpoint.load_training_state, tmp_path / "future.pth", match="version 2")


@pytest.mark.parametrize("scale", (2, 4, 8))
def test_load_generator_infers_the_configuration_and_reproduces_the_original(
        tmp_path, shared_fixtures, scale):
    config, state, (x, neighbors, flows), expected = rbpn_fixture(shared_fixtures, scale)
    checkpoint.save_weights(state, tmp_path / "w.safetensors")
    net, inferred = generator.load_generator(tmp_path / "w.safetensors")
    assert inferred.net_kwargs() == config
    with torch.no_grad():
        out = net(x, neighbors, flows)
    torch.testing.assert_close(out, torch.from_numpy(expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", (2, 4, 8))
def test_full_size_configuration_is_inferred_from_shapes(shared_fixtures, scale):
    arch = architectures(shared_fixtures)
    # Shapes are all inference reads: meta tensors hold no memory.
    state = {k: torch.empty(shape, device="meta")
             for k, shape in arch[f"rbpn_x{scale}_full"]["state_dict"]}
    assert rbpn.infer_config(state) == {**arch["rbpn_x4_full"]["config"],
                                                   "scale_factor": scale}


def test_full_size_dataparallel_checkpoint_runs_without_flags(tmp_path):
    torch.manual_seed(0)
    state = rbpn.Net().state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "netG_epoch_4_1.pth")
    net, config = generator.load_generator(tmp_path / "netG_epoch_4_1.pth")
    assert config.net_kwargs() == dict(num_channels=3, base_filter=256, feat=64, num_stages=3,
                                       n_resblock=5, nFrames=7, scale_factor=4)
    assert torch.equal(net.output.conv.weight, state["output.conv.weight"])


def test_bad_files_give_one_clear_line(tmp_path):
    one_line_error(checkpoint.load_state_dict, tmp_path / "absent.pth", match="no such file")
    one_line_error(checkpoint.load_state_dict, tmp_path, match="is a directory")
    (tmp_path / "empty.pth").write_bytes(b"")
    one_line_error(checkpoint.load_state_dict, tmp_path / "empty.pth", match="empty")
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    one_line_error(checkpoint.load_state_dict, tmp_path / "notes.pth", match="not a readable")
    torch.save({"w": torch.zeros(10_000)}, tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:5000])
    message = one_line_error(checkpoint.load_state_dict, tmp_path / "cut.pth",
                             match="not a readable")
    assert "cut.pth" in message
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    one_line_error(checkpoint.load_state_dict, tmp_path / "bad.safetensors",
                   match="not a readable")


class Malicious:
    """Unpickling this would create a marker file: proof of code execution."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_a_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"feat0.conv.weight": torch.zeros(1), "x": Malicious(str(marker))}
    if writer == "pickle":  # a bare pickle, in torch.load's protocol
        path.write_bytes(pickle.dumps({"x": payload["x"]}, protocol=2))
    else:
        torch.save(payload, path)
    message = one_line_error(checkpoint.load_state_dict, path, match="refusing to load")
    assert "evil.pth" in message and "system" in message
    one_line_error(generator.load_generator, path, match="refusing to load")
    assert not marker.exists()


def test_a_state_dict_of_the_wrong_model_is_refused(tmp_path):
    checkpoint.save_weights(Discriminator().state_dict(), tmp_path / "netD.pth")
    one_line_error(generator.load_generator, tmp_path / "netD.pth",
                   match=r"netD.pth: not an RBPN generator: no 'feat0.conv.weight'")
    message = one_line_error(checkpoint.load_into, rbpn.Net(**TINY),
                             checkpoint.load_state_dict(tmp_path / "netD.pth"), what="generator")
    assert "not an RBPN generator's" in message
    assert f"missing {len(rbpn.Net(**TINY).state_dict())} keys: feat0.conv.weight" in message
    assert "unexpected 55 keys: net.0.weight" in message


def test_a_checkpoint_of_another_scale_names_the_mismatch(tiny_state):
    net = rbpn.Net(**{**TINY, "scale_factor": 2})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    message = one_line_error(checkpoint.load_into, net, tiny_state, what="generator from x.pth")
    assert message.startswith("generator from x.pth: the weights do not fit the model")
    assert "scale_factor=4" in message and "shapes differ" in message
    assert "DBPN.up1.up_conv1.deconv.weight (4, 4, 8, 8) vs (4, 4, 6, 6)" in message
    assert_same(net.state_dict(), before)  # nothing was half-loaded


def test_shapes_that_fit_no_rbpn_are_caught(tiny_state, tmp_path):
    bad = dict(tiny_state)
    for key, value in tiny_state.items():  # a 10x10 projection kernel: no scale has one
        if value.dim() == 4 and value.shape[-1] == 8:
            bad[key] = torch.zeros(*value.shape[:2], 10, 10)
    checkpoint.save_weights(bad, tmp_path / "kernel.pth")
    one_line_error(generator.load_generator, tmp_path / "kernel.pth",
                   match="kernel.pth: not a valid RBPN: projection kernel 10x10 fits no scale")
    bad = {**tiny_state, "output.conv.weight": torch.zeros(3, 7, 3, 3)}
    with pytest.raises(ValueError, match="inconsistent shapes"):
        rbpn.infer_config(bad)


def test_objects_that_are_not_state_dicts_are_refused(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    one_line_error(checkpoint.load_state_dict, tmp_path / "list.pth",
                   match="not a state_dict \\(found list\\)")
    torch.save({"epoch": 3, "w": torch.zeros(1)}, tmp_path / "mixed.pth")
    one_line_error(checkpoint.load_state_dict, tmp_path / "mixed.pth",
                   match="entry 'epoch' is int")


def test_a_failed_save_keeps_the_previous_file(tmp_path, tiny_state, monkeypatch):
    path = tmp_path / "netG.pth"
    checkpoint.save_weights(tiny_state, path)
    before = path.read_bytes()

    def disk_full(obj, f):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    one_line_error(checkpoint.save_weights, tiny_state, path, match="No space left")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["netG.pth"]


def test_an_unwritable_destination_is_one_clear_line(tmp_path, tiny_state):
    (tmp_path / "file").write_text("x")
    one_line_error(checkpoint.save_weights, tiny_state, tmp_path / "file" / "w.pth",
                   match="cannot write .*w.pth: .*file is not a folder")


def test_cli_prints_the_error_as_one_line(tmp_path, capsys):
    def main(argv):
        generator.load_generator(tmp_path / "missing.pth")

    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(main, [])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "missing.pth" in err


def test_model_card_is_read_beside_the_weights(tmp_path):
    weights = tmp_path / "model.pth"
    assert checkpoint.read_model_card(weights) == {}
    card = checkpoint.model_card_path(weights)
    assert card == tmp_path / "model.json"
    card.write_text('{"residual": true, "name": "x"}')
    assert checkpoint.read_model_card(weights) == {"residual": True, "name": "x"}
    for bad, message in (("{not json", "unreadable model card"),
                         ("[1, 2]", "must be a JSON object"),
                         ('{"residual": "yes"}', '"residual" must be true or false')):
        card.write_text(bad)
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.read_model_card(weights)


def test_a_model_card_given_as_the_weights_names_the_weights_beside_it(tmp_path, tiny_state):
    checkpoint.save_weights(tiny_state, tmp_path / "x.pth")
    card = tmp_path / "x.json"
    card.write_text('{"residual": true}')
    message = one_line_error(checkpoint.load_state_dict, card)
    assert message == (f"{card}: a model card (JSON), not weights; the weights beside it: "
                       f"{tmp_path / 'x.pth'}")
    (tmp_path / "x.pth").unlink()
    checkpoint.save_weights(tiny_state, tmp_path / "x.safetensors")
    assert one_line_error(checkpoint.load_state_dict, card).endswith(
        f"the weights beside it: {tmp_path / 'x.safetensors'}")
    lone = tmp_path / "lone.json"
    lone.write_text("{}")
    assert one_line_error(generator.load_generator, lone).endswith(
        f"the weights beside it: {tmp_path / 'lone.pth'} (not there)")


def test_a_missing_weights_file_lists_the_snapshots_in_its_folder(tmp_path, tiny_state):
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    checkpoint.save_weights(tiny_state, run / "netG_epoch_4_3.pth")
    message = one_line_error(checkpoint.load_state_dict, run / "netG_epoch_4_20.pth")
    assert message == (f"{run / 'netG_epoch_4_20.pth'}: no such file ({run} has 1 weights "
                       "file: netG_epoch_4_3.pth)")
    for epoch in (1, 2, 10, 20):  # highest first, numbers as numbers
        (run / f"netG_epoch_4_{epoch}.pth").write_bytes(b"x")
    (run / "notes.txt").write_text("not weights")
    assert checkpoint.snapshots_beside(run / "netG_epoch_4_30.pth") == (
        f"{run} has 5 weights files: netG_epoch_4_20.pth, netG_epoch_4_10.pth, "
        "netG_epoch_4_3.pth, netG_epoch_4_2.pth, ... 1 more")
    assert one_line_error(checkpoint.load_state_dict, tmp_path / "runs" / "y" / "w.pth") == (
        f"{tmp_path / 'runs' / 'y' / 'w.pth'}: no such file ({tmp_path / 'runs' / 'y'} does not "
        "exist)")
    assert checkpoint.snapshots_beside(tmp_path / "runs" / "w.pth") == (
        f"{tmp_path / 'runs'} has no weights files (.pth, .safetensors, .pt)")
