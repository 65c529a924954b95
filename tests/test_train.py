"""iSeeBetterTrain.py: GAN training end to end on tiny models and frames made here.

Every run uses a tiny RBPN (8 filters, one residual block, 3 frames), a random VGG and
Vimeo-layout septuplets of 96x64 pixels written by the test, so no ../shared data is needed.
"""

from __future__ import annotations

import csv
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import backbones
import checkpoint
import cli
import generator
import iSeeBetterTrain
import loss
import rbpn
import training
from tests.conftest import ROOT

TINY = ["--upscale_factor", "4", "--nFrames", "3", "--patch_size", "12", "--base_filter", "8",
        "--feat", "8", "--n_resblock", "1", "--batchSize", "1", "--threads", "0",
        "--random_vgg", "--no-tensorboard", "--val_max_samples", "1", "--seed", "7"]
CSV_NAME = "iSeeBetter_4_Train_Results.csv"


def make_septuplets(root: Path, train: int, test: int = 1) -> Path:
    """Vimeo-90K layout: root/sequences/00001/NNNN/im1..im7.png (96x64, a texture moving by
    (2, 1) pixels per frame), with sep_trainlist.txt / sep_testlist.txt beside sequences/."""
    rng = np.random.default_rng(0)
    names = []
    for s in range(train + test):
        noise = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
        texture = np.asarray(Image.fromarray(noise).resize((112, 80), Image.BICUBIC))
        name = f"00001/{s + 1:04d}"
        folder = root / "sequences" / name
        folder.mkdir(parents=True)
        for f in range(7):
            Image.fromarray(texture[f:f + 64, 2 * f:2 * f + 96]).save(folder / f"im{f + 1}.png")
        names.append(name)
    (root / "sep_trainlist.txt").write_text("\n".join(names[:train]) + "\n")
    (root / "sep_testlist.txt").write_text("\n".join(names[train:]) + "\n")
    return root / "sequences"


def run(data_dir: Path, out: Path, *extra: str) -> int:
    return iSeeBetterTrain.main([*TINY, "--data_dir", str(data_dir), "--save_folder", str(out),
                              *extra])


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "statistics" / CSV_NAME, newline="") as f:
        return list(csv.DictReader(f))


def tiny_generator() -> rbpn.Net:
    return rbpn.Net(base_filter=8, feat=8, n_resblock=1, nFrames=3, scale_factor=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data2(tmp_path_factory) -> Path:
    return make_septuplets(tmp_path_factory.mktemp("vimeo2"), train=2)


@pytest.fixture(scope="module")
def trained(data2, tmp_path_factory) -> Path:
    """A finished 2-iteration run (one epoch of two samples)."""
    out = tmp_path_factory.mktemp("run")
    assert run(data2, out, "--nEpochs", "1") == 0
    return out


# ----------------------------------------------------------------------------- end to end

def test_two_iterations_write_checkpoints_statistics_and_plot(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"netG_epoch_4_1.pth", "netD_epoch_4_1.pth", "train_state.pth", "statistics"} <= names
    assert not [n for n in names if n.endswith(".tmp")]

    (row,) = rows(trained)
    assert (row["Epoch"], row["Iteration"], row["Samples"], row["Skipped"]) == ("1", "2", "2", "0")
    for column in ("DLoss", "GLoss", "DScore", "GScore", "ImageLoss", "AdversarialLoss",
                   "PerceptualLoss", "TVLoss", "PSNR", "SSIM", "PSNR_RGB", "SSIM_RGB"):
        assert math.isfinite(float(row[column])), column
    assert 0 < float(row["DScore"]) < 1 and 0 < float(row["SSIM"]) <= 1
    assert float(row["LR_G"]) == float(row["LR_D"]) == 1e-4
    with open(trained / "statistics" / "iSeeBetter_4_Train_Results.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # Plain state_dicts with the model's own keys (what the original test script loads) ...
    weights = torch.load(trained / "netG_epoch_4_1.pth", weights_only=True)
    cli.seed_everything(7)
    initial = tiny_generator().state_dict()
    assert list(weights) == list(initial)
    # ... that training changed.
    assert any(not torch.equal(weights[k], initial[k]) for k in initial)
    net, config = generator.load_generator(trained / "netG_epoch_4_1.pth")
    assert (config.base_filter, config.nFrames, config.scale_factor) == (8, 3, 4)

    state = checkpoint.load_training_state(trained / "train_state.pth")
    assert (state["format"], state["epoch"], state["epoch_iteration"], state["iteration"]) == (
        "iseebetter-train-state", 2, 0, 2)
    for key, value in checkpoint.load_state_dict(trained / "train_state.pth").items():
        assert torch.equal(value, weights[key])


def test_resume_mid_epoch_gives_bit_identical_weights(tmp_path, capsys):
    # Three samples at batch 2: two iterations per epoch, the second with one sample.
    data_dir = make_septuplets(tmp_path / "data", train=3)
    common = ("--nEpochs", "2", "--batchSize", "2", "--lr_step", "1")
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run(data_dir, whole, *common) == 0
    assert run(data_dir, split, *common, "--max_iters", "3", "--save_every_iters", "2") == 0
    state = checkpoint.load_training_state(split / "train_state.pth")
    assert (state["epoch"], state["epoch_iteration"], state["iteration"]) == (2, 1, 3)
    assert not (split / "netG_epoch_4_2.pth").exists()
    # Samples do not depend on the number of loader workers either.
    assert run(data_dir, split, *common, "--resume", "--threads", "2") == 0

    for name in ("netG_epoch_4_1.pth", "netG_epoch_4_2.pth", "netD_epoch_4_2.pth"):
        a = torch.load(whole / name, weights_only=True)
        b = torch.load(split / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    history_whole, history_split = rows(whole), rows(split)
    assert [r["Epoch"] for r in history_split] == ["1", "2"]  # kept, not duplicated
    for a, b in zip(history_whole, history_split, strict=True):
        assert {k: v for k, v in a.items() if k != "Seconds"} == {
            k: v for k, v in b.items() if k != "Seconds"}
    assert [r["Samples"] for r in history_whole] == ["3", "3"]
    # --lr_step 1: the second epoch runs at lr / 10, resumed run or not.
    assert [float(r["LR_G"]) for r in history_whole] == [1e-4, 1e-5]
    # Resuming a finished run trains nothing.
    capsys.readouterr()
    assert run(data_dir, split, *common, "--resume") == 0
    assert "nothing to train: the state is at epoch 3" in capsys.readouterr().err


def test_signals_leave_loadable_files_and_resume_continues(tmp_path):
    data_dir = make_septuplets(tmp_path / "data", train=2)
    out = tmp_path / "out"
    argv = [*TINY, "--data_dir", str(data_dir), "--save_folder", str(out), "--nEpochs", "1000",
            "--save_every_iters", "1", "--threads", "1", "--val_file_list", "none"]
    rng = random.Random(0)
    # SIGTERM (a scheduler's stop) finishes the iteration and saves; SIGKILL at a random moment
    # may hit a write in progress. Each round resumes the previous one.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        resume = ["--resume"] if (out / "train_state.pth").exists() else []
        proc = subprocess.Popen([sys.executable, "iSeeBetterTrain.py", *argv, *resume],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=subprocess_env(), text=True)
        before = _saved_iteration(out)
        deadline = time.monotonic() + 120
        while _saved_iteration(out) < before + 3:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no training state was written"
            time.sleep(0.2)
        time.sleep(rng.uniform(0, 0.5))
        proc.send_signal(sig)
        stderr = proc.communicate(timeout=60)[1]
        if sig == signal.SIGTERM:
            assert proc.returncode == 128 + signal.SIGTERM, stderr
            stopped = int(stderr.split("stopped by a signal at iteration ")[1].split(";")[0])
            assert _saved_iteration(out) == stopped
        for path in out.rglob("*.pth"):  # every checkpoint file is whole
            if path.name == "train_state.pth":
                checkpoint.load_training_state(path)
            else:
                checkpoint.load_state_dict(path)
        if (out / "statistics" / CSV_NAME).exists():  # whole, one row per finished epoch
            epochs = [int(r["Epoch"]) for r in rows(out)]
            assert epochs == list(range(1, len(epochs) + 1))

    saved = _saved_iteration(out)
    assert iSeeBetterTrain.main([*argv, "--resume", "--max_iters", str(saved + 2)]) == 0
    state = checkpoint.load_training_state(out / "train_state.pth")
    assert state["iteration"] == saved + 2
    # Two iterations per epoch; stopping at an epoch's last one leaves its end to the next run.
    assert (state["epoch"] - 1) * 2 + state["epoch_iteration"] == saved + 2


def _saved_iteration(out: Path) -> int:
    try:
        return checkpoint.load_training_state(out / "train_state.pth")["iteration"]
    except cli.CLIError:  # not written yet
        return -1


def test_torchrun_two_processes_with_gloo(tmp_path):
    data_dir = make_septuplets(tmp_path / "data", train=4)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "iSeeBetterTrain.py", *TINY, "--data_dir", str(data_dir), "--save_folder", str(out),
         "--nEpochs", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env=subprocess_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("parameters: G") == 1  # only rank 0 reports
    assert sorted(p.name for p in out.iterdir()) == [
        "netD_epoch_4_1.pth", "netD_epoch_4_2.pth", "netG_epoch_4_1.json", "netG_epoch_4_1.pth",
        "netG_epoch_4_2.json", "netG_epoch_4_2.pth", "statistics", "train_state.pth"]
    assert sorted(p.name for p in (out / "statistics").iterdir()) == [
        CSV_NAME, "iSeeBetter_4_Train_Results.png"]
    history = rows(out)
    # 4 samples over 2 processes at batch 1: 2 iterations a process, 4 samples an epoch.
    assert [(r["Epoch"], r["Iteration"], r["Samples"]) for r in history] == [
        ("1", "2", "4"), ("2", "4", "4")]
    assert all(math.isfinite(float(r["GLoss"])) and math.isfinite(float(r["PSNR"]))
               for r in history)
    state = checkpoint.load_training_state(out / "train_state.pth")
    assert state["world_size"] == 2
    checkpoint.load_into(tiny_generator(), checkpoint.load_state_dict(out / "netG_epoch_4_2.pth"))


# ----------------------------------------------------------------------------- options

def test_pretrained_initialises_the_generator(trained, data2, tmp_path):
    # A DataParallel-style file ("module." keys), as the original's RBPN_4x.pth, with weights
    # far from the initialisation of seed 7.
    pretrained = {k: v + 0.01 * torch.randn_like(v)
                  for k, v in torch.load(trained / "netG_epoch_4_1.pth", weights_only=True).items()}
    torch.save({f"module.{k}": v for k, v in pretrained.items()}, tmp_path / "RBPN_tiny.pth")
    out = tmp_path / "out"
    assert run(data2, out, "--pretrained", "--pretrained_sr", str(tmp_path / "RBPN_tiny.pth"),
               "--max_iters", "1", "--lr", "1e-6") == 0
    after = checkpoint.load_state_dict(out / "train_state.pth")
    # One Adam step moves each weight by at most the learning rate (plus float32 rounding);
    # the random initialisation is far from it.
    cli.seed_everything(7)
    initial = tiny_generator().state_dict()
    for key, value in pretrained.items():
        if value.is_floating_point():
            assert (after[key] - value).abs().max() <= 2e-6, key
    assert max((initial[k] - v).abs().max() for k, v in pretrained.items()) > 1e-2
    with pytest.raises(cli.CLIError, match="--pretrained_sr"):
        run(data2, out, "--pretrained", "--pretrained_sr", str(tmp_path / "missing.pth"))


def test_no_gan_l1_trains_the_generator_alone(data2, tmp_path):
    assert run(data2, tmp_path, "--nEpochs", "1", "--loss", "l1", "--no-gan", "--residual") == 0
    (row,) = rows(tmp_path)
    assert math.isfinite(float(row["GLoss"])) and row["GLoss"] == row["ImageLoss"]
    assert row["DLoss"] == row["LR_D"] == row["AdversarialLoss"] == ""
    assert not (tmp_path / "netD_epoch_4_1.pth").exists()
    assert (tmp_path / "netG_epoch_4_1.pth").exists()
    # The snapshot's model card tells iSeeBetterTest.py that it predicts a residual.
    card = checkpoint.read_model_card(tmp_path / "netG_epoch_4_1.pth")
    assert card["config"]["residual"] is True and card["training"]["args"]["loss"] == "l1"
    assert card["validation"]["PSNR"] == pytest.approx(float(row["PSNR"]))
    # --amp auto (the default) is recorded as what it chose on this machine.
    assert card["training"]["precision"] == generator.choose_precision("auto", "cpu").precision


@pytest.mark.skipif(not backbones.have_imagenet_weights("vgg16"),
                    reason="the ImageNet VGG16 is not installed (make setup installs it)")
@pytest.mark.parametrize("loss_flags", [[], ["--loss", "perceptual", "--no-gan"]],
                         ids=["fourfold", "perceptual"])
def test_vgg_losses_train_offline_with_the_imagenet_vgg(data2, tmp_path, capsys, loss_flags):
    imagenet = [a for a in TINY if a != "--random_vgg"]  # no VGG flag at all
    assert iSeeBetterTrain.main([*imagenet, "--data_dir", str(data2), "--save_folder",
                                 str(tmp_path), "--nEpochs", "1", *loss_flags]) == 0
    assert "perceptual loss: ImageNet VGG16 from " in capsys.readouterr().err
    (row,) = rows(tmp_path)
    assert float(row["PerceptualLoss"]) > 0
    adversarial = not loss_flags
    assert (row["AdversarialLoss"] != "") is adversarial and (row["DLoss"] != "") is adversarial
    assert (tmp_path / "netD_epoch_4_1.pth").exists() is adversarial
    if not adversarial:  # MSE + 0.006 VGG, nothing else
        expected = float(row["ImageLoss"]) + 0.006 * float(row["PerceptualLoss"])
        assert float(row["GLoss"]) == pytest.approx(expected, rel=1e-5)
        assert row["TVLoss"] == ""


def test_snapshot_model_card_records_config_and_training(trained):
    card = checkpoint.read_model_card(trained / "netG_epoch_4_1.pth")
    assert card["file"] == "netG_epoch_4_1.pth" and card["config"]["residual"] is False
    assert card["config"] == {"num_channels": 3, "base_filter": 8, "feat": 8, "num_stages": 3,
                              "n_resblock": 1, "nFrames": 3, "scale_factor": 4,
                              "residual": False, "future_frame": True}
    assert (card["training"]["epoch"], card["training"]["iterations"]) == (1, 2)
    assert card["training"]["args"]["save_folder"] == str(trained)
    assert not checkpoint.model_card_path(trained / "netD_epoch_4_1.pth").exists()


def test_bf16_channels_last_on_the_cpu(data2, tmp_path):
    assert run(data2, tmp_path, "--nEpochs", "1", "--amp", "bf16", "--channels_last") == 0
    (row,) = rows(tmp_path)
    assert checkpoint.read_model_card(tmp_path / "netG_epoch_4_1.pth")["training"][
        "precision"] == "bf16"
    assert all(math.isfinite(float(row[c])) for c in ("DLoss", "GLoss", "PerceptualLoss", "PSNR"))
    weights = torch.load(tmp_path / "netG_epoch_4_1.pth", weights_only=True)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in weights.values())
    with pytest.raises(cli.CLIError, match="--amp fp16 needs CUDA"):
        run(data2, tmp_path, "--amp", "fp16")


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_loss_stops_after_saving_or_skips(data2, tmp_path, monkeypatch, policy):
    forward, calls = loss.GeneratorLoss.forward, []

    def poisoned(self, *args, **kwargs):
        total, terms = forward(self, *args, **kwargs)
        calls.append(1)
        return (total * math.nan if len(calls) == 2 else total), terms

    monkeypatch.setattr(loss.GeneratorLoss, "forward", poisoned)
    argv = ("--nEpochs", "1", "--nan_policy", policy)
    if policy == "stop":
        with pytest.raises(cli.CLIError, match="generator loss is nan.*iteration 2"):
            run(data2, tmp_path, *argv)
        state = checkpoint.load_training_state(tmp_path / "train_state.pth")
        assert (state["iteration"], state["epoch_iteration"]) == (1, 1)
        assert all(torch.isfinite(v).all() for v in state["netG"].values()
                   if v.is_floating_point())
        assert not (tmp_path / "netG_epoch_4_1.pth").exists()
    else:
        assert run(data2, tmp_path, *argv) == 0
        (row,) = rows(tmp_path)
        assert (row["Iteration"], row["Samples"], row["Skipped"]) == ("2", "1", "1")
        assert math.isfinite(float(row["GLoss"]))


def test_amp_resolves_per_device_and_a_resume_says_when_the_precision_changes(
        data2, tmp_path, capsys):
    cpu = torch.device("cpu")
    assert iSeeBetterTrain.training_precision("none", cpu) == ("fp32", "--amp none", False)
    with pytest.raises(cli.CLIError, match="--amp fp16 needs CUDA"):
        iSeeBetterTrain.training_precision("fp16", cpu)
    assert run(data2, tmp_path, "--nEpochs", "1", "--amp", "none") == 0
    assert checkpoint.load_training_state(tmp_path / "train_state.pth")["precision"] == "fp32"
    capsys.readouterr()
    assert run(data2, tmp_path, "--nEpochs", "2", "--amp", "bf16", "--resume") == 0
    err = capsys.readouterr().err
    assert "amp bf16 (as asked" in err or "warning: amp bf16" in err
    assert "was trained in fp32 so far; it continues in bf16 (--amp bf16" in err
    assert checkpoint.load_training_state(tmp_path / "train_state.pth")["precision"] == "bf16"


def test_bad_checkpoints_and_mismatched_resume_are_clear_errors(trained, data2, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(cli.CLIError, match="corrupt.pth"):
        run(data2, tmp_path, "--resume", str(corrupt))
    with pytest.raises(cli.CLIError, match="--base_filter"):
        run(data2, tmp_path, "--resume", str(trained / "train_state.pth"), "--base_filter", "16")
    with pytest.raises(cli.CLIError, match="not an iSeeBetter training state|training state"):
        run(data2, tmp_path, "--resume", str(trained / "netG_epoch_4_1.pth"))


def test_bad_flags_give_one_line_errors(tmp_path):
    result = subprocess.run([sys.executable, "iSeeBetterTrain.py", "--data_dir",
                             str(tmp_path / "missing")], cwd=ROOT, capture_output=True, text=True,
                            env=subprocess_env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --data_dir {tmp_path / 'missing'}: no such folder"]
    result = subprocess.run([sys.executable, "iSeeBetterTrain.py", "--data_dir", str(tmp_path),
                             "--nEpocks", "2"], cwd=ROOT, capture_output=True, text=True,
                            env=subprocess_env())
    assert result.returncode == 2  # one line, not the usage first
    assert result.stderr.splitlines() == [
        "error: unrecognized argument --nEpocks (did you mean --nEpochs?)"]

    def parse(*argv: str):
        return iSeeBetterTrain.parse_args(["--data_dir", str(tmp_path), *argv])

    assert parse().future_frame is True and parse().loss == "fourfold"
    assert parse("--future_frame", "False").future_frame is False
    assert parse("--no-future_frame").future_frame is False
    assert parse("--future_frame").future_frame is True
    assert parse("--APITLoss").loss == "fourfold"
    assert parse("--nEpochs", "10").lr_step == 5
    with pytest.raises(SystemExit):
        parse("--future_frame", "maybe")
    with pytest.raises(cli.CLIError, match="--APITLoss"):
        parse("--APITLoss", "--loss", "l1")
    with pytest.raises(cli.CLIError, match="--no-gan"):
        parse("--no-gan")
    assert parse("--loss", "perceptual", "--no-gan").loss == "perceptual"
    with pytest.raises(cli.CLIError, match="--batchSize"):
        parse("--batchSize", "0")
    with pytest.raises(cli.CLIError, match="--lr"):
        parse("--lr", "nan")


def test_help_explains_every_flag():
    parser = iSeeBetterTrain.build_parser()
    text = parser.format_help()
    for flag in ("--upscale_factor", "--batchSize", "--nEpochs", "--snapshots", "--start_epoch",
                 "--lr", "--gpu_mode", "--threads", "--seed", "--gpus", "--data_dir",
                 "--file_list", "--other_dataset", "--future_frame", "--nFrames", "--patch_size",
                 "--data_augmentation", "--model_type", "--residual", "--pretrained_sr",
                 "--pretrained", "--save_folder", "--prefix", "--APITLoss", "--debug",
                 "--useDataParallel", "--loss", "--base_filter", "--feat", "--n_resblock",
                 "--resume", "--save_every_iters", "--val_file_list", "--val_data_dir",
                 "--val_max_samples", "--amp", "--channels_last", "--nan_policy", "--flow_cache",
                 "--skip_bad_samples", "--vgg_weights", "--random_vgg", "--imagenet_norm",
                 "--max_iters", "--statistics_dir", "--tensorboard", "--gan"):
        assert flag in text, flag
    for action in parser._actions:
        if action.help != "==SUPPRESS==":
            assert action.help and len(action.help) > 10, action.option_strings


# ----------------------------------------------------------------------------- building blocks

def test_epoch_sampler_shards_shuffles_and_skips():
    def order(epoch, rank=0, world=1, start=0):
        sampler = training.EpochSampler(5, seed=3, rank=rank, world_size=world)
        sampler.set_epoch(epoch, start)
        assert len(sampler) == len(list(sampler))
        return list(sampler)

    assert sorted(order(1)) == [0, 1, 2, 3, 4] and order(1) == order(1)
    assert order(1) != order(2)
    assert order(1, start=2) == order(1)[2:]
    shards = [order(1, rank, 2) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 3  # padded to 6
    assert set(shards[0] + shards[1]) == set(range(5))


def test_seeded_samples_depend_only_on_seed_epoch_and_index():
    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return random.random(), float(np.random.rand()), float(torch.rand(()))

    samples = training.SeededSamples(Draws(), seed=5)
    first = samples[1]
    cli.seed_everything(99)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    assert samples[1] == first  # whatever the global state ...
    assert random.getstate() == states[0]  # ... which is left as it was
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    samples.epoch = 2
    assert samples[1] != first and samples[0] != samples[1]


def test_weights_are_never_saved_non_finite():
    net = torch.nn.Linear(2, 2)
    training.check_finite_weights(net)
    with torch.no_grad():
        net.weight[0, 0] = math.inf
    with pytest.raises(cli.CLIError, match="non-finite"):
        training.check_finite_weights(net)


def test_statistics_history_is_kept(tmp_path):
    log = training.TrainLog(tmp_path, "stats", tensorboard=False)
    for epoch in (1, 2, 3):
        log.add_epoch({"Epoch": epoch, "GLoss": 1.0 / epoch, "PSNR": 20.0 + epoch})
    log.add_epoch({"Epoch": 2, "GLoss": 0.25})  # a resumed run redoes epoch 2
    assert [(r["Epoch"], r["GLoss"]) for r in training.read_rows(log.csv_path)] == [
        ("1", "1"), ("2", "0.25")]
    log.start(3, resumed=False)  # a fresh run from epoch 3 keeps epochs 1-2
    assert len(training.read_rows(log.csv_path)) == 2
    log.start(1, resumed=False)  # a fresh run from epoch 1 moves the old file aside
    assert not log.csv_path.exists()
    (backup,) = tmp_path.glob("stats.*.csv")
    assert len(training.read_rows(backup)) == 2


def test_bench_smoke():
    result = subprocess.run(
        [sys.executable, "bench/bench_train.py", "--tiny", "--iters", "1", "--warmup", "0",
         "--batch_sizes", "1", "--patch_size", "16", "--precisions", "bf16", "--device", "cpu",
         "--losses", "fourfold", "l1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("| cpu")]
    assert [line.split("|")[5].strip() for line in lines] == ["fourfold", "l1"]
    for line in lines:
        assert line.startswith("| cpu | bf16 | 1 | 16 |")
        seconds, peak = (float(c) for c in line.strip("|").split("|")[5:7])
        assert seconds > 0 and peak > 0


# ----------------------------------------------------------------------------- a new user's run

# The original iSeeBetterTrain.py's flags, as its users typed them (type=bool flags as words).
ORIGINAL_TRAIN_LINE = [
    "--upscale_factor", "4", "--batchSize", "2", "--testBatchSize", "5", "--start_epoch", "1",
    "--nEpochs", "150", "--snapshots", "1", "--lr", "1e-4", "--gpu_mode", "True",
    "--threads", "8", "--seed", "123", "--gpus", "8", "--file_list", "sep_trainlist.txt",
    "--other_dataset", "False", "--future_frame", "True", "--nFrames", "7",
    "--patch_size", "64", "--data_augmentation", "True", "--model_type", "RBPN",
    "--residual", "False", "--pretrained_sr", "RBPN_4x.pth", "--pretrained",
    "--save_folder", "weights/", "--prefix", "F7", "--APITLoss", "--useDataParallel", "-v"]


def test_original_command_lines_keep_their_meaning(tmp_path):
    args = iSeeBetterTrain.parse_args(["--data_dir", str(tmp_path), *ORIGINAL_TRAIN_LINE])
    assert (args.upscale_factor, args.batchSize, args.testBatchSize, args.nEpochs) == (4, 2, 5, 150)
    assert args.gpu_mode is True and args.other_dataset is False and args.residual is False
    assert args.pretrained and args.useDataParallel and args.debug and args.prefix == "F7"
    assert args.loss == "fourfold" and args.model_type == "RBPN" and args.lr_step == 75
    assert iSeeBetterTrain.parse_args(["--data_dir", str(tmp_path)]).testBatchSize == 1


def test_short_runs_do_not_decay_the_learning_rate_by_default(tmp_path):
    def lr_step(*argv: str) -> int:
        return iSeeBetterTrain.parse_args(["--data_dir", str(tmp_path), *argv]).lr_step

    assert lr_step("--nEpochs", "2") == 0 and lr_step("--nEpochs", "9") == 0
    assert lr_step("--nEpochs", "10") == 5 and lr_step("--nEpochs", "150") == 75  # original's
    assert lr_step("--nEpochs", "2", "--lr_step", "1") == 1


def test_a_model_below_bicubic_is_reported_with_advice(data2, tmp_path, capsys):
    assert run(data2, tmp_path, "--nEpochs", "1", "--loss", "l1", "--no-gan") == 0
    (row,) = rows(tmp_path)
    assert float(row["PSNR"]) < float(row["PSNR_Bicubic"])  # an untrained tiny model
    err = capsys.readouterr().err
    assert err.count("is below bicubic's") == 1
    assert "--residual" in err and "--pretrained" in err
    card = checkpoint.read_model_card(tmp_path / "netG_epoch_4_1.pth")
    assert card["validation"]["PSNR_Bicubic"] == pytest.approx(float(row["PSNR_Bicubic"]))


def test_more_loader_workers_than_cores_are_capped_with_one_note(data2, tmp_path, monkeypatch,
                                                                 capfd):
    monkeypatch.setattr(cli, "available_cores", lambda: 1)
    assert run(data2, tmp_path / "asked", "--nEpochs", "1", "--loss", "l1", "--no-gan",
               "--threads", "3") == 0
    err = capfd.readouterr().err
    assert err.count("note: using 1 data loader worker (one per CPU core; --threads asks for "
                     "3)\n") == 1
    assert "worker processes in total" not in err  # PyTorch's own three-line warning
    # No --threads at all: the note does not quote the flag as if it had been given.
    at = TINY.index("--threads")
    assert iSeeBetterTrain.main([*TINY[:at], *TINY[at + 2:], "--data_dir", str(data2),
                                 "--save_folder", str(tmp_path / "default"), "--nEpochs", "1",
                                 "--loss", "l1", "--no-gan"]) == 0
    err = capfd.readouterr().err
    assert err.count("note: using 1 data loader worker (one per CPU core; --threads defaults "
                     "to 8)\n") == 1


def readme_train_commands() -> list[list[str]]:
    """The commands of the first code block of README.md's "## Train" section."""
    import shlex

    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Train\n"):]
    block = section[section.index("```bash\n") + 8:section.index("\n```", section.index("```bash"))]
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines()
            if line.startswith("python ")]


def test_readme_train_section_opens_with_commands_that_train_offline(tmp_path):
    """README's first Train commands, on a clip made here, with tiny settings appended: they
    make septuplets, train, and upscale with the snapshot, with nothing downloaded."""
    from tests.test_video import write_clip

    prepare, train, upscale_cmd = readme_train_commands()
    assert [c[1] for c in (prepare, train, upscale_cmd)] == [
        "prepare_septuplets.py", "iSeeBetterTrain.py", "iSeeBetterTest.py"]
    clip = write_clip(tmp_path / "clip.mp4", frames=21, width=480, height=272)
    env = subprocess_env()

    def call(argv: list[str], *extra: str) -> None:
        argv = [str(clip) if a.endswith(".mp4") else a for a in argv]
        result = subprocess.run([sys.executable, *argv[1:], *extra], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]

    call([str(ROOT / a) if a.endswith(".py") else a for a in prepare],
         "--scene_cut", "0", "--test_fraction", "0.34")
    assert (tmp_path / "my_data" / "sep_testlist.txt").read_text().strip()
    call([str(ROOT / a) if a.endswith(".py") else a for a in train], *TINY, "--nEpochs", "1")
    snapshot = tmp_path / "my_weights" / "netG_epoch_4_1.pth"
    card = checkpoint.read_model_card(snapshot)
    assert card["config"]["residual"] is True and "PSNR" in card["validation"]
    model = upscale_cmd.index("-m") + 1
    call([str(ROOT / a) if a.endswith(".py") else a for a in upscale_cmd[:model]]
         + [str(snapshot)] + upscale_cmd[model + 1:], "--max_frames", "2", "-o", "out.mp4",
         "--no-gpu_mode")
    assert (tmp_path / "out.mp4").stat().st_size > 0
