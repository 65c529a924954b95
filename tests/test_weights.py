"""The weights shipped in weights/: each loads through the shared loader, has a model card, and
beats bicubic on real video frames it was not trained on; the no-argument demo path works."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

import checkpoint
import frames
import generator
import iSeeBetterTest
import upscale
from metrics import psnr
from tests.conftest import ROOT

# Shipped models are named iSeeBetter_*.pth; training snapshots (netG_epoch_*) may sit beside them.
SHIPPED = sorted((ROOT / "weights").glob("iSeeBetter_*.pth"))
CARD_KEYS = {"name", "file", "config", "training", "results"}


def test_the_default_weights_are_shipped():
    assert ROOT / iSeeBetterTest.DEFAULT_MODEL in SHIPPED


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    """Seven consecutive 256x192 crops of Big Buck Bunny (frames 60-66: not in any training
    set of ours; the demo uses frames 0-47)."""
    path = iSeeBetterTest.bundled_clip()
    if not path.is_file():
        pytest.skip(f"the bundled clip is not installed ({path})")
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= 60:
                rgb = frame.to_ndarray(format="rgb24")
                frames.append(np.ascontiguousarray(rgb[264:456, 512:768]))
            if len(frames) == 7:
                break
    return frames


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.name)
def test_shipped_model_card_matches_the_weights(weights):
    card = checkpoint.read_model_card(weights)
    assert CARD_KEYS <= set(card), f"{checkpoint.model_card_path(weights)} lacks fields"
    assert card["file"] == weights.name
    _, config = generator.load_generator(weights)
    assert card["config"] == config.to_dict()
    vid4_runs = [v for k, v in card["results"].items() if k.startswith("vid4_x4")]
    assert "vid4_x4" in card["results"]
    for vid4 in vid4_runs:  # plain, and with --self_ensemble when the card has it
        assert set(vid4["clips"]) == {"calendar", "city", "foliage", "walk"}
        assert vid4["command"].startswith("cat ../shared/data/Vid4/")
        for clip in vid4["clips"].values():  # the card's claim: better than bicubic everywhere
            assert clip["psnr_y"] > clip["bicubic_psnr_y"]


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.name)
def test_shipped_model_card_records_that_bf16_costs_no_quality(weights):
    """--precision auto runs bf16 where it is native: every shipped card records Vid4 in fp32
    and bf16, within 0.02 dB on every clip."""
    check = checkpoint.read_model_card(weights)["precision_check"]
    fp32, bf16 = check["vid4_psnr_y"]["fp32"], check["vid4_psnr_y"]["bf16"]
    assert set(fp32) == set(bf16) == {"calendar", "city", "foliage", "walk", "average"}
    worst = max(abs(fp32[k] - bf16[k]) for k in fp32)
    assert worst <= 0.02 and check["max_difference_db"] == pytest.approx(worst, abs=1e-4)
    assert "--precision bf16" in check["command"] and check["machine"]


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.name)
def test_shipped_model_beats_bicubic_on_unseen_frames(weights, clip_frames):
    torch.manual_seed(0)
    net, config = generator.load_generator(weights)
    residual = config.residual
    scale, n = config.scale_factor, config.nFrames
    lr_frames = [frames.make_lr_frame(f, scale, downscale_first=True) for f in clip_frames]
    middle = len(lr_frames) // 2
    offsets = [o for o in range(-(n // 2), n // 2 + 1) if o != 0]
    target, neighbours = lr_frames[middle], [lr_frames[middle + o] for o in offsets]
    x, _, nbs, flows, bicubic = frames.make_sample(target, neighbours, scale)
    hr = np.asarray(target.hr)
    scores = {}
    for ensemble in (False, True):
        runner = upscale.Upscaler(net, scale=scale, residual=residual, self_ensemble=ensemble)
        sr = runner(x[None], [t[None] for t in nbs], [f[None] for f in flows], bicubic[None])[0]
        scores[ensemble] = psnr(sr, hr, crop=scale)
    ours, baseline = scores[False], psnr(bicubic, hr, crop=scale)
    assert ours > baseline + 0.3, f"{weights.name}: {ours:.2f} dB vs bicubic {baseline:.2f} dB"
    assert scores[True] > ours, f"{weights.name}: self-ensemble {scores[True]:.2f} dB"


def test_no_argument_demo_path_runs_with_the_bundled_weights(tmp_path):
    """What `python iSeeBetterTest.py` runs (bundled clip, bundled weights), cut to 2 frames."""
    args = iSeeBetterTest.demo_args()
    args[args.index("--max_frames") + 1] = "2"
    args[args.index("--output") + 1] = str(tmp_path / "demo.mp4")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, str(ROOT / "iSeeBetterTest.py"), *args, "-c", "0"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'demo.mp4'}")
    report = json.loads((tmp_path / "demo_metrics.json").read_text())
    for row in report["frames"]:
        assert row["psnr_y"] > row["bicubic_psnr_y"]
