"""iSeeBetterTest.py end to end, through subprocess: dataset mode, video mode, clear errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import checkpoint
import cli
import frames
import rbpn
from metrics import LPIPS, score, tof_crop
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
    # Temporal metrics from each clip's second frame on, for ours and bicubic.
    temporal = ("tof", "warp_error", "bicubic_tof", "bicubic_warp_error")
    assert [all(k in r for k in temporal) for r in report["frames"]] == [
        False, True, True, False, True]
    assert report["clips"]["beta"]["tof"] == report["frames"][4]["tof"]
    # LPIPS for every frame, tLP from each clip's second frame, for ours and bicubic.
    assert all("lpips" in r and "bicubic_lpips" in r for r in report["frames"])
    assert [("tlp" in r and "bicubic_tlp" in r) for r in report["frames"]] == [
        False, True, True, False, True]
    assert "LPIPS-alex v0.1 from " in result.stderr and "tLPx100" in result.stdout
    lpips = LPIPS("alex")
    for row in report["frames"][:2]:
        saved = np.asarray(Image.open(out / row["clip"] / f"{row['frame']}.png"))
        hr = frames.modcrop(Image.open(frames_dir / row["clip"] / f"{row['frame']}.png"), 4)
        assert row["lpips"] == pytest.approx(lpips(tof_crop(saved), tof_crop(np.asarray(hr))),
                                             rel=1e-6)
    assert any(line.startswith("precision ") and "(auto: " in line  # what ran, and why
               for line in result.stderr.splitlines())
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


def test_no_temporal_metrics_scores_frames_alone(tiny_model, frames_dir, work):
    out = work / "no_temporal"
    result = run("--data_dir", frames_dir, "--file_list", "all.txt", "-m", tiny_model, "-o", out,
                 "--no-temporal_metrics", "--no-gpu_mode")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert len(report["frames"]) == 5 and "psnr_y" in report["frames"][1]
    assert not any("warp_error" in row or "tlp" in row for row in report["frames"])
    assert "lpips" in report["frames"][0]  # LPIPS is not temporal: still there
    assert "tOF" not in result.stdout


def test_no_lpips_scores_without_the_network(tiny_model, frames_dir, work):
    out = work / "no_lpips"
    result = run("--data_dir", frames_dir, "--file_list", "all.txt", "-m", tiny_model,
                 "-o", out, "--no-lpips", "--no-gpu_mode")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert "psnr_y" in report["frames"][0] and "lpips" not in report["frames"][0]
    assert "LPIPS" not in result.stderr + result.stdout


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
    # 40x32 frames are too small for tOF's crop; the warping error is still there.
    assert "warp_error" in report["frames"][1] and "tof" not in report["frames"][1]
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
                          "model file not found", "nope.pth", f"({tmp_path} has no weights files")
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
def test_a_misspelled_flag_is_one_line_naming_the_flag_meant(capsys):
    import iSeeBetterTest

    with pytest.raises(SystemExit) as exc:
        iSeeBetterTest.parse_args(["--vidoe", "x.mp4"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "error: unrecognized argument --vidoe (did you mean --video?)\n")
    assert iSeeBetterTest.parse_args(["--vid", "x.mp4"]).video == ["x.mp4"]  # as the original


def test_a_missing_or_wrong_model_file_says_what_to_pass(tiny_model, tmp_path):
    import iSeeBetterTest

    run_folder = tmp_path / "runs" / "x"
    run_folder.mkdir(parents=True)
    shutil.copy(tiny_model, run_folder / "netG_epoch_4_3.pth")
    cpu = torch.device("cpu")
    with pytest.raises(cli.CLIError) as err:
        iSeeBetterTest.read_model(str(run_folder / "netG_epoch_4_20.pth"), cpu)
    assert str(err.value) == (f"model file not found: {run_folder / 'netG_epoch_4_20.pth'} "
                              f"({run_folder} has 1 weights file: netG_epoch_4_3.pth)")
    card = run_folder / "netG_epoch_4_3.json"
    card.write_text("{}")
    with pytest.raises(cli.CLIError) as err:
        iSeeBetterTest.read_model(str(card), cpu)
    assert str(err.value) == (f"-m/--model {card}: a model card (JSON), not weights; the "
                              f"weights beside it: {run_folder / 'netG_epoch_4_3.pth'}")
    card.write_text('{"residual": "yes"}')  # about the card, not -m's file: named as it is
    with pytest.raises(cli.CLIError) as err:
        iSeeBetterTest.read_model(str(run_folder / "netG_epoch_4_3.pth"), cpu)
    assert str(err.value).startswith(f"{card}: ")


def test_bars_end_on_the_summary_s_means_and_the_last_line_names_the_metrics_files(
        tiny_model, clip, frames_dir, work):
    out = work / "means"
    result = run("--data_dir", frames_dir, "--file_list", "all.txt", "-m", tiny_model, "-o", out,
                 "--no-lpips", "--no-temporal_metrics", "--no-gpu_mode")
    assert result.returncode == 0, result.stderr
    beta = json.loads((out / "metrics.json").read_text())["clips"]["beta"]
    assert (f"beta mean PSNR-Y {beta['psnr_y']:.2f} (bicubic {beta['bicubic_psnr_y']:.2f})"
            in result.stderr)
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"wrote 5 frames to {out}/ in ")
    assert last.endswith(f" s; metrics in {out / 'metrics.csv'} and {out / 'metrics.json'}")
    result = run("--video", clip, "-m", tiny_model, "-o", work / "means.mp4", "--downscale_first",
                 "--no-lpips", "--no-temporal_metrics", "--segment_frames", 2, "--no-gpu_mode")
    assert result.returncode == 0, result.stderr
    means = json.loads((work / "means_metrics.json").read_text())["clips"]["means"]
    assert (f"mean PSNR-Y {means['psnr_y']:.2f} (bicubic {means['bicubic_psnr_y']:.2f})"
            in result.stderr)


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


# ---------------------------------------------------------------------------------------------
# Segmented video: resume, refusals, several inputs, torchrun (issue 16)

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def clip23(work) -> Path:
    return write_clip(work / "clip23.mp4", frames=23, width=40, height=32)


def decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def same_video(a: Path, b: Path) -> bool:
    """Frames, timestamps, frame rate and audio alike."""
    first, second = decoded_frames(a), decoded_frames(b)
    return (len(first) == len(second)
            and all((x == y).all() for x, y in zip(first, second, strict=True))
            and stream_summary(a) == stream_summary(b) and audio_packets(a) == audio_packets(b))


@pytest.fixture(scope="module")
def lossless_pair(tiny_model, clip23, work) -> tuple[Path, Path]:
    """The clip upscaled losslessly in one segment and in 5-frame segments."""
    outputs = []
    for size in (100, 5):
        out = work / f"lossless_{size}.mp4"
        result = run("--video", clip23, "-m", tiny_model, "-o", out, "--crf", 0,
                     "--segment_frames", size, "--no-gpu_mode")
        assert result.returncode == 0, result.stderr
        outputs.append(out)
    return outputs[0], outputs[1]


def test_segments_give_the_frames_timestamps_and_audio_of_one_segment(lossless_pair, clip23):
    one, five = lossless_pair
    assert len(decoded_frames(five)) == 23
    assert same_video(one, five)
    summary = stream_summary(five)
    assert summary["times"] == pytest.approx([i / 10 for i in range(23)])
    assert summary["audio_seconds"] == stream_summary(clip23)["audio_seconds"]
    assert not Path(f"{five}.parts").exists()  # the work folder goes once joined


def test_segments_keep_the_scores_of_one_segment(tiny_model, clip, work):
    """--downscale_first across segments: every score, the temporal ones of each segment's
    first frame included, is that of one pass."""
    reports = []
    for size in (6, 2):
        out = work / f"scored_{size}.mp4"
        result = run("--video", clip, "-m", tiny_model, "-o", out, "--downscale_first",
                     "--segment_frames", size, "--no-gpu_mode")
        assert result.returncode == 0, result.stderr
        report = json.loads((work / f"scored_{size}_metrics.json").read_text())
        reports.append([{**row, "clip": "-"} for row in without_seconds(report["frames"])])
    assert reports[0] == reports[1]
    assert "warp_error" in reports[1][2]  # frame 2 opens the second segment


@pytest.mark.slow
def test_a_run_killed_with_sigkill_redoes_only_the_unfinished_segments(tiny_model, clip23,
                                                                      work):
    out = work / "killed.mp4"
    folder = Path(f"{out}.parts")
    # Self-ensemble makes each frame slow enough (8 model runs) to stop the run midway.
    args = ["--video", clip23, "-m", tiny_model, "-o", out, "--crf", 0, "--segment_frames", 5,
            "--self_ensemble", "--keep_segments", "--no-gpu_mode"]
    process = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], env=ENV,
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if len(json.loads((folder / "manifest.json").read_text())["done"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    finished = sorted(p.with_suffix(".mp4") for p in folder.glob("0*.json"))
    assert 2 <= len(finished) < 5 and not out.exists()
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}

    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert (f"resuming from {folder}: {len(finished)} of 5 segments done "
            f"({5 * len(finished)} of 23 frames), {5 - len(finished)} to do") in result.stderr
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == kept
    assert f"{len(finished)} of 5 segments were done before" in result.stdout
    assert json.loads((folder / "manifest.json").read_text())["done"] == [0, 1, 2, 3, 4]
    assert not list(folder.glob(".*.tmp"))  # what the killed run was writing is gone

    reference = work / "uninterrupted.mp4"
    result = run(*args[:5], reference, *args[6:])
    assert result.returncode == 0, result.stderr
    assert same_video(out, reference)


def test_a_resume_with_other_settings_or_a_changed_input_is_one_error_line(tiny_model, clip,
                                                                          work):
    source = work / "changing.mp4"
    shutil.copy(clip, source)
    out = work / "kept.mp4"
    folder = Path(f"{out}.parts")
    args = ["--video", source, "-m", tiny_model, "-o", out, "--segment_frames", 2,
            "--keep_segments", "--no-gpu_mode"]
    assert run(*args).returncode == 0
    # Each run writes its process id into the lock; nothing else may change.
    files = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != "lock"}
    assert_one_error_line(run(*args, "--crf", 30), str(folder), "--crf 18", "--crf 30",
                          "--restart")
    assert_one_error_line(run(*args, "--segment_frames", 3), "--segment_frames 2",
                          "--segment_frames 3")
    write_clip(source, frames=6, width=40, height=32, fps=5)
    assert_one_error_line(run(*args), f"{source} changed since {folder} was started",
                          "--restart")
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != "lock"} == files
    result = run(*args, "--crf", 30, "--restart")
    assert result.returncode == 0, result.stderr
    assert stream_summary(out)["fps"] == 5


def run_with_full_disk(marker: str, *args: str) -> subprocess.CompletedProcess:
    """The script with a disk that fills up when a file whose path has ``marker`` is flushed
    (its fsync fails with ENOSPC)."""
    full_disk = (
        "import errno, os, runpy, sys\n"
        "real = os.fsync\n"
        "def fsync(fd):\n"
        f"    if {marker!r} in os.readlink(f'/proc/self/fd/{{fd}}'):\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    real(fd)\n"
        "os.fsync = fsync\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", full_disk, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)


def test_a_full_disk_is_one_error_line_and_keeps_the_finished_segments(tiny_model, clip23,
                                                                      work):
    """The disk fills up while segment 2 is written."""
    out = work / "full.mp4"
    args = ["--video", clip23, "-m", tiny_model, "-o", out, "--segment_frames", 5,
            "--no-gpu_mode"]
    result = run_with_full_disk("00002.mp4", *args)
    assert_one_error_line(result, "cannot write", "00002.mp4", "No space left on device")
    folder = Path(f"{out}.parts")
    assert sorted(p.name for p in folder.glob("0*")) == ["00000.json", "00000.mp4",
                                                         "00001.json", "00001.mp4"]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert "2 of 5 segments done" in result.stderr


def test_several_videos_and_folders_each_get_their_own_output(tiny_model, clip, work):
    inputs = work / "inputs"
    inputs.mkdir()
    for name in ("a.mp4", "b.mkv"):
        shutil.copy(clip, inputs / name)
    (inputs / "notes.txt").write_text("not a video")
    out = work / "several"
    result = run("--video", inputs, clip, "-m", tiny_model, "-o", out, "--no-gpu_mode")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_x4.mp4", "b_x4.mp4", "clip_x4.mp4"]
    assert [line.split(" (")[0] for line in result.stdout.splitlines()
            if line.startswith("wrote ")] == [f"wrote {out / n}" for n in
                                              ("a_x4.mp4", "b_x4.mp4", "clip_x4.mp4")]
    assert_one_error_line(run("--video", inputs, "-m", tiny_model, "-o", work / "one.mp4"),
                          "with several videos the output is a folder")
    shutil.copy(clip, inputs / "a.mov")
    assert_one_error_line(run("--video", inputs, "-m", tiny_model, "-o", out),
                          "two inputs would both be written to", "a_x4.mp4")


def test_finished_outputs_are_skipped_when_several_videos_are_resumed(tiny_model, clip, work):
    """Interrupted (by a full disk) during the second of two videos: the rerun leaves the
    first output as it is and finishes the second."""
    films = work / "films"
    films.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(clip, films / name)
    out = work / "films_out"
    args = ["--video", films, "-m", tiny_model, "-o", out, "--segment_frames", 2,
            "--no-gpu_mode"]
    assert_one_error_line(run_with_full_disk("b_x4.mp4.parts/.00001.mp4", *args),
                          "No space left on device")
    first = out / "a_x4.mp4"
    kept = (first.stat().st_ino, first.stat().st_mtime_ns)
    assert not (out / "b_x4.mp4").exists()
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert f"{first} exists, skipping (--restart to redo)" in result.stdout
    assert "1 of 3 segments done" in result.stderr
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == kept
    assert len(decoded_frames(out / "b_x4.mp4")) == 6
    assert sorted(p.name for p in out.iterdir()) == ["a_x4.mp4", "b_x4.mp4"]


def test_bad_outputs_and_inputs_are_refused_before_any_work(tiny_model, clip, work, tmp_path):
    for output, words in ((tmp_path / "results" / "run1", ("no file type", "run1.mp4")),
                          (tmp_path / "x.webm", ("cannot write H.264 into .webm files",)),
                          (clip, ("is the input", "itself"))):
        assert_one_error_line(run("--video", clip, "-m", tiny_model, "-o", output,
                                  "--no-gpu_mode"), str(output), *words)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 50)
    assert_one_error_line(run("--video", clip, bad, "-m", tiny_model, "-o", tmp_path / "out",
                              "--no-gpu_mode"), "cannot read video", "bad.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]  # nothing was written


def test_a_folder_that_is_also_the_output_folder_is_not_upscaled_twice(tiny_model, clip,
                                                                        tmp_path):
    shutil.copy(clip, tmp_path / "a.mp4")
    args = ["--video", tmp_path, "-m", tiny_model, "-o", tmp_path, "--no-gpu_mode"]
    assert run(*args).returncode == 0
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert "leaving out the 1 files named like outputs (*_x4.mp4)" in result.stderr
    assert f"{tmp_path / 'a_x4.mp4'} exists, skipping" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "a_x4.mp4"]


def test_segments_are_whole_batches(tiny_model, clip, work):
    """--segment_frames 3 with batches of 2 becomes 4, so that frames are batched as in one
    pass: the pixels are those of one segment."""
    outputs, errs = [], []
    for size in (3, 6):
        out = work / f"batched_{size}.mp4"
        result = run("--video", clip, "-m", tiny_model, "-o", out, "--crf", 0,
                     "--testBatchSize", 2, "--segment_frames", size, "--keep_segments",
                     "--no-gpu_mode")
        assert result.returncode == 0, result.stderr
        outputs.append(out)
        errs.append(result.stderr)
    assert ("note: --segment_frames 3 rounded up to 4, a multiple of --testBatchSize 2"
            in errs[0]) and "rounded up" not in errs[1]
    manifest = json.loads((Path(f"{outputs[0]}.parts") / "manifest.json").read_text())
    assert manifest["segment_frames"] == 4
    assert same_video(*outputs)


def without_seconds(report: object) -> object:
    """A metrics report without its timings (the one thing two runs may not share)."""
    if isinstance(report, dict):
        return {k: without_seconds(v) for k, v in report.items() if k != "seconds"}
    if isinstance(report, list):
        return [without_seconds(v) for v in report]
    return report


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(SCRIPT),
                           *map(str, args)], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=600)


@pytest.mark.slow
def test_torchrun_two_processes_give_what_one_gives(tiny_model, clip23, lossless_pair,
                                                    frames_dir, work):
    # From scratch, with the automatic size (measured by rank 0, sent to rank 1): lossless
    # frames do not depend on the segments.
    out = work / "torchrun.mp4"
    result = torchrun("--video", clip23, "-m", tiny_model, "-o", out, "--crf", 0,
                      "--no-gpu_mode")
    assert result.returncode == 0, result.stderr
    assert "2 processes" in result.stderr and "timing the first 2 frames" in result.stderr
    assert "| 23/23 [" in result.stderr  # rank 0's bar counts rank 1's frames too, to the end
    assert same_video(out, lossless_pair[1])
    # Resuming with 2 processes what one process left unfinished.
    out = work / "resumed_by_two.mp4"
    args = ["--video", clip23, "-m", tiny_model, "-o", out, "--crf", 0, "--segment_frames", 5,
            "--keep_segments", "--no-gpu_mode"]
    assert run(*args).returncode == 0
    for unfinished in Path(f"{out}.parts").glob("0000[234].*"):
        unfinished.unlink()
    result = torchrun(*args)
    assert result.returncode == 0, result.stderr
    assert "2 of 5 segments done" in result.stderr
    assert same_video(out, lossless_pair[1])

    reports = []
    for name, launch in (("one", run), ("two", torchrun)):
        folder = work / f"dataset_{name}"
        result = launch("--data_dir", frames_dir, "--file_list", "all.txt", "-m", tiny_model,
                        "-o", folder, "--no-gpu_mode")
        assert result.returncode == 0, result.stderr
        report = without_seconds(json.loads((folder / "metrics.json").read_text()))
        report["pngs"] = {p.relative_to(folder).as_posix(): p.read_bytes()
                          for p in folder.rglob("*.png")}
        reports.append(report)
    assert reports[0] == reports[1]  # every score to the last digit, every frame
    assert len(reports[1]["pngs"]) == 5 and "warp_error" in reports[1]["frames"][2]


@pytest.mark.slow
def test_under_torchrun_an_error_every_process_meets_is_printed_once(tiny_model, clip, tmp_path):
    """By rank 0; torchrun then adds its own report of the failed processes."""
    for args, words in ((["--video", clip, "-m", tmp_path / "nope.pth"], "model file not found"),
                        (["--video", clip, "-m", tiny_model, "--crf", 99], "--crf 99"),
                        (["--video", clip, "-m", tiny_model, "-o", tmp_path / "x.webm"],
                         "H.264 into .webm")):
        result = torchrun(*args, "--no-gpu_mode")
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode != 0 and len(errors) == 1, result.stderr
        assert words in errors[0]


def test_a_segment_keeps_the_planned_tile_unless_memory_needs_smaller(capsys):
    import iSeeBetterTest

    assert iSeeBetterTest.segment_tile(0, 0) == 0
    assert iSeeBetterTest.segment_tile(64, 0) == 64  # cut alike, though whole frames fit here
    assert iSeeBetterTest.segment_tile(64, 128) == 64
    assert capsys.readouterr().err == ""
    assert iSeeBetterTest.segment_tile(64, 32) == 32  # a smaller machine: no crash, a note
    assert iSeeBetterTest.segment_tile(0, 48) == 48
    assert capsys.readouterr().err.count("note: the frames no longer fit in memory") == 2
