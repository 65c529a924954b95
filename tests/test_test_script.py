"""iSeeBetterTest.py end to end, through subprocess: dataset mode, video mode, clear errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoint
import frames
import rbpn
from metrics import score
from tests.conftest import ROOT
from tests.test_video import audio_packets, stream_summary, write_clip

SCRIPT = ROOT / "iSeeBetterTest.py"
# Tiny models: OpenMP threads only add contention on a busy 2-core machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=cwd or ROOT, timeout=300)


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("test_script")


@pytest.fixture(scope="module")
def tiny_model(work) -> Path:
    torch.manual_seed(0)
    net = rbpn.Net(base_filter=8, feat=8, n_resblock=1, nFrames=3, scale_factor=4)
    path = work / "tiny_x4.pth"
    checkpoint.save_weights(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def clip(work) -> Path:
    return write_clip(work / "clip.mp4", frames=6, width=40, height=32)


@pytest.fixture(scope="module")
def frames_dir(work) -> Path:
    """A Vid4-like folder: two clips of numbered 66x50 frames (not multiples of 4: modcrop)."""
    root = work / "frames"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (50, 66, 3), dtype=np.uint8)
    for clip_name, count in (("alpha", 3), ("beta", 2)):
        (root / clip_name).mkdir(parents=True)
        for i in range(1, count + 1):
            frame = np.roll(base, 2 * i, axis=1)
            Image.fromarray(frame).save(root / clip_name / f"{i:03d}.png")
    names = [f"alpha/{i:03d}.png" for i in (1, 2, 3)] + [f"beta/{i:03d}.png" for i in (1, 2)]
    (root / "all.txt").write_text("\n".join(names) + "\n")
    return root


def test_dataset_mode_scores_every_frame_and_writes_outputs(tiny_model, frames_dir, work):
    out = work / "dataset_out"
    result = run("--data_dir", frames_dir, "--file_list", "all.txt", "-m", tiny_model, "-o", out,
                 "--testBatchSize", 2, "--compare", "--compare_size", 40, "--no-gpu_mode")
    assert result.returncode == 0, result.stderr
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == ["alpha/001.png", "alpha/002.png", "alpha/003.png", "alpha_compare.png",
                    "beta/001.png", "beta/002.png", "beta_compare.png"]
    for name in ("alpha/002.png", "beta/001.png"):
        assert Image.open(out / name).size == (64, 48)  # modcrop(66x50, 4) = 64x48
    compare = Image.open(out / "alpha_compare.png")
    assert compare.size == (3 * 40 + 2 * 4, 40 + 14)  # bicubic | ours | ground truth

    report = json.loads((out / "metrics.json").read_text())
    assert [(r["clip"], r["frame"]) for r in report["frames"]] == [
        ("alpha", "001"), ("alpha", "002"), ("alpha", "003"), ("beta", "001"), ("beta", "002")]
    assert report["crop"] == 4 and report["clips"]["alpha"]["frames"] == 3
    # Every frame of every batch is scored, on what was saved, against the modcropped frame.
    for row in report["frames"]:
        saved = np.asarray(Image.open(out / row["clip"] / f"{row['frame']}.png"))
        hr = frames.modcrop(Image.open(frames_dir / row["clip"] / f"{row['frame']}.png"), 4)
        expected = score(saved, np.asarray(hr), crop=4)
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, abs=1e-9)
        bicubic = frames.upscale(frames.downscale(hr, 4), 4)
        assert row["bicubic_psnr_y"] == pytest.approx(
            score(np.asarray(bicubic), np.asarray(hr), crop=4)["psnr_y"], abs=1e-9)
    alpha_mean = np.mean([r["psnr_y"] for r in report["frames"] if r["clip"] == "alpha"])
    assert report["clips"]["alpha"]["psnr_y"] == pytest.approx(alpha_mean)
    assert report["average"]["psnr_y"] == pytest.approx(
        (report["clips"]["alpha"]["psnr_y"] + report["clips"]["beta"]["psnr_y"]) / 2)

    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["clip"], r["frame"]) for r in rows[-3:]] == [
        ("alpha", "mean"), ("beta", "mean"), ("average", "mean")]
    assert len(rows) == 5 + 3
    assert "bicubic Y" in result.stdout and "alpha" in result.stdout
    assert f"wrote 5 frames to {out}" in result.stdout


def test_dataset_upscale_only_is_four_times_the_input(tiny_model, frames_dir, work):
    out = work / "upscale_only"
    result = run("--data_dir", frames_dir, "--file_list", "all.txt", "-m", tiny_model, "-o", out,
                 "-u", "--no-gpu_mode")
    assert result.returncode == 0, result.stderr
    assert Image.open(out / "beta" / "002.png").size == (4 * 66, 4 * 50)
    assert not (out / "metrics.csv").exists()  # no ground truth, no scores


def test_self_ensemble_is_recorded_and_changes_the_output(tiny_model, frames_dir, work):
    outputs = {}
    for flag in ("--no-self_ensemble", "--self_ensemble"):
        out = work / flag.lstrip("-")
        result = run("--data_dir", frames_dir, "--file_list", "all.txt", "-m", tiny_model,
                     "-o", out, flag, "--no-gpu_mode")
        assert result.returncode == 0, result.stderr
        report = json.loads((out / "metrics.json").read_text())
        assert report["self_ensemble"] is (flag == "--self_ensemble")
        outputs[flag] = np.asarray(Image.open(out / "alpha" / "002.png"), dtype=np.int16)
    assert "self-ensemble x8" in result.stderr
    assert np.abs(outputs["--self_ensemble"] - outputs["--no-self_ensemble"]).mean() > 0.5


def test_video_mode_upscales_every_frame_keeping_rate_and_audio(tiny_model, clip, work):
    out = work / "video_out.mp4"
    result = run("--video", clip, "-m", tiny_model, "-o", out, "--no-gpu_mode")
    assert result.returncode == 0, result.stderr
    summary = stream_summary(out)
    assert summary["size"] == (160, 128)
    assert summary["fps"] == 10
    assert summary["times"] == pytest.approx([i / 10 for i in range(6)])
    assert audio_packets(out) == audio_packets(clip)
    assert result.stdout.strip().splitlines()[-1].startswith(f"wrote {out} (6 frames, 160x128")


def test_video_downscale_first_reports_metrics_for_a_trimmed_span(tiny_model, clip, work):
    out = work / "span.mkv"
    result = run("--video", clip, "-m", tiny_model, "-o", out, "--downscale_first",
                 "--start_time", 0.1, "--max_frames", 3, "--no-gpu_mode", "--tile", 16,
                 "--precision", "bf16")
    assert result.returncode == 0, result.stderr
    summary = stream_summary(out)
    assert summary["size"] == (40, 32)  # 40x32 -> 10x8 -> 40x32
    assert len(summary["times"]) == 3
    assert 0.3 - 0.07 <= summary["audio_seconds"] <= 0.3 + 0.07
    report = json.loads((work / "span_metrics.json").read_text())
    assert [r["frame"] for r in report["frames"]] == ["0", "1", "2"]
    assert all(r["psnr_y"] > 5 and 0 < r["bicubic_ssim_y"] <= 1 for r in report["frames"])
    assert (work / "span_metrics.csv").exists()


def test_help_shows_the_bundled_defaults():
    result = run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for fragment in ("weights/iSeeBetter_4x_compact.pth", "results/bigbuckbunny_x4.mp4",
                     "--max_frames 48", "--downscale_first", "bigbuckbunny.mp4",
                     "--chop_forward", "--tile_overlap", "--precision", "--upscale_only"):
        assert fragment in text


def test_no_arguments_without_the_bundled_weights_says_so(tmp_path):
    """A checkout without weights/ (e.g. weights deleted): one clear line, nothing written.
    The script is run from a copy in a folder without weights/, importing the project."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(SCRIPT, app / SCRIPT.name)
    env = {**ENV, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(app / SCRIPT.name)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert "bigbuckbunny.mp4 --downscale_first --max_frames 48" in result.stderr
    assert_one_error_line(result, "weights/iSeeBetter_4x_compact.pth", "-m/--model")
    assert not (tmp_path / "results").exists()


def test_clear_errors(tiny_model, clip, frames_dir, work, tmp_path):
    assert_one_error_line(run("--video", clip, "-m", tmp_path / "nope.pth"),
                          "model file not found", "nope.pth")
    assert_one_error_line(run("--video", clip, "-m", tiny_model, "-s", 2, "-o", tmp_path / "x.mp4"),
                          "-s/--upscale_factor 2", "x4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 50)
    assert_one_error_line(run("--video", bad, "-m", tiny_model), "cannot read video", "bad.mp4")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert_one_error_line(run("--video", clip, "-m", tiny_model, "-o", blocker / "out.mp4"),
                          "cannot write", "a_file/out.mp4")
    assert_one_error_line(run("--data_dir", frames_dir, "--file_list", "all.txt", "-m", tiny_model,
                              "-o", frames_dir / "results"), "inside --data_dir")
    assert not (frames_dir / "results").exists()
    assert_one_error_line(run("--video", clip, "--data_dir", frames_dir), "choose one")
    # A library error names its parameter (image_dir); the script shows the flag.
    missing = tmp_path / "no_frames"
    assert_one_error_line(run("--data_dir", missing, "-m", tiny_model, "-o", tmp_path / "r"),
                          f"--data_dir {missing}: folder not found")


@pytest.mark.shared_data
def test_vid4_frames_with_a_residual_only_model_score_exactly_bicubic(shared_data, tmp_path):
    """A generator whose output layer is zero plus --residual is bicubic upsampling: on real
    Vid4 frames its scores must equal the bicubic column, which must look like bicubic x4."""
    torch.manual_seed(0)
    net = rbpn.Net(base_filter=8, feat=8, n_resblock=1, nFrames=3, scale_factor=4)
    torch.nn.init.zeros_(net.output.conv.weight)
    torch.nn.init.zeros_(net.output.conv.bias)
    model = tmp_path / "residual_only.pth"
    checkpoint.save_weights(net.state_dict(), model)
    frames = tmp_path / "calendar3.txt"
    frames.write_text("calendar/001.png\ncalendar/020.png\ncalendar/041.png\n")
    out = tmp_path / "vid4"
    result = run("--data_dir", shared_data / "Vid4", "--file_list", frames, "-m", model, "-r",
                 "-o", out, "--no-gpu_mode")
    assert result.returncode == 0, result.stderr
    assert Image.open(out / "calendar" / "041.png").size == (720, 576)
    report = json.loads((out / "metrics.json").read_text())
    for key in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
        assert report["clips"]["calendar"][key] == report["clips"]["calendar"][f"bicubic_{key}"]
    assert 19.5 < report["clips"]["calendar"]["psnr_y"] < 21.5  # calendar is hard for bicubic


def test_model_card_decides_residual_unless_the_flag_is_given(frames_dir, tmp_path):
    """The bundled weights were trained with --residual; their model card says so, and the
    script must follow it (a zero-output model + residual is exactly bicubic)."""
    net = rbpn.Net(base_filter=8, feat=8, n_resblock=1, nFrames=3, scale_factor=4)
    torch.nn.init.zeros_(net.output.conv.weight)
    torch.nn.init.zeros_(net.output.conv.bias)
    model = tmp_path / "zero_x4.pth"
    checkpoint.save_weights(net.state_dict(), model)
    checkpoint.model_card_path(model).write_text(json.dumps({"residual": True}))

    def clip_scores(*flags: str) -> dict:
        out = tmp_path / f"out{len(flags)}"
        result = run("--data_dir", frames_dir, "--file_list", "all.txt", "-m", model, "-o", out,
                     "--no-gpu_mode", *flags)
        assert result.returncode == 0, result.stderr
        report = json.loads((out / "metrics.json").read_text())
        assert report["residual"] is (not flags)
        return report["clips"]["alpha"]

    from_card = clip_scores()
    assert from_card["psnr_y"] == from_card["bicubic_psnr_y"]
    overridden = clip_scores("--no-residual")
    assert overridden["psnr_y"] < overridden["bicubic_psnr_y"] - 5  # a black image


def test_original_command_lines_keep_their_meaning():
    """The original iSeeBetterTest.py's flags (../shared/docs/iseebetter-reference.md), written
    the way its users wrote them (type=bool flags as words)."""
    import iSeeBetterTest

    args = iSeeBetterTest.parse_args([
        "-m", "weights/netG_epoch_4_1.pth", "-o", "Results/", "-s", "4", "-r", "False",
        "-c", "True", "--testBatchSize", "1", "--chop_forward", "False", "--threads", "1",
        "--seed", "123", "--gpus", "1", "--data_dir", "./Vid4", "--file_list", "foliage.txt",
        "--other_dataset", "True", "--future_frame", "True", "--nFrames", "7",
        "--model_type", "RBPN", "-d", "-u", "False"])
    assert (args.model, args.output, args.upscale_factor, args.nFrames) == (
        "weights/netG_epoch_4_1.pth", "Results/", 4, 7)
    assert args.residual is False and args.gpu_mode is True and args.chop_forward is False
    assert args.other_dataset is True and args.future_frame is True and args.debug is True
    assert args.upscale_only is False and args.data_dir == "./Vid4"
    assert (args.file_list, args.testBatchSize, args.threads, args.gpus) == (
        "foliage.txt", 1, 1, 1)
