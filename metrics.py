"""PSNR and SSIM the way video super-resolution papers report them.

Images are scored as they would be saved: float output is clamped to [0, 1] and rounded
to 8 bits first. ``channel="y"`` is the standard VSR protocol (BT.601 luma of the
MATLAB ``rgb2ycbcr``, range 16-235, a border of ``crop`` pixels ignored, ``crop = scale``);
``channel="rgb"`` is what the original iSeeBetter printed, with the same even crop.
SSIM uses Wang et al.'s 11x11 Gaussian window (sigma 1.5) over the valid region.

Perceptual quality: LPIPS v0.1 (Zhang et al., CVPR 2018) as the official ``lpips`` package
computes it, on AlexNet (the VSR papers' choice) or VGG16, with the ImageNet weights and
LPIPS's heads of ``backbones.py``. Temporal consistency, between consecutive frames of a clip
(``Motion``): tOF and tLP exactly as TecoGAN defines them, and a warping error of the output's
deviation from the ground truth, which needs no learned network.

``Scoreboard`` collects them per frame and averages them per clip and over clips.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import nn

import atomic
import backbones
import checkpoint
import cli

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0


def to_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An image as saved to PNG: HxWx3 uint8.

    Accepts uint8 HxWxC arrays (returned unchanged), float HxWxC arrays in [0, 1], or a
    float CxHxW tensor in [0, 1] (clamped, then rounded).
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Luma in [16, 235] (float64) of a uint8 RGB image, MATLAB ``rgb2ycbcr`` convention."""
    return 16.0 + image.astype(np.float64) @ _Y_WEIGHTS


def _prepare(sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, crop: int,
             channel: str) -> tuple[np.ndarray, np.ndarray]:
    sr8, hr8 = to_uint8(sr), to_uint8(hr)
    if sr8.shape != hr8.shape:
        raise ValueError(f"image sizes differ: {sr8.shape} vs {hr8.shape}")
    if channel == "y":
        a, b = rgb_to_y(sr8), rgb_to_y(hr8)
    elif channel == "rgb":
        a, b = sr8.astype(np.float64), hr8.astype(np.float64)
    else:
        raise ValueError(f"channel must be 'y' or 'rgb', got {channel!r}")
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    return a, b


def psnr(sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, crop: int = 0,
         channel: str = "y") -> float:
    """Peak signal-to-noise ratio in dB (peak 255); ``inf`` for identical images."""
    a, b = _prepare(sr, hr, crop, channel)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim(sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, crop: int = 0,
         channel: str = "y") -> float:
    """Structural similarity (Gaussian 11x11 window, sigma 1.5, valid region); RGB averages
    the three channels."""
    a, b = _prepare(sr, hr, crop, channel)
    return float(structural_similarity(
        a, b, data_range=255.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, channel_axis=-1 if a.ndim == 3 else None))


def score(sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor,
          crop: int) -> dict[str, float]:
    """PSNR and SSIM on Y and on RGB, keyed ``psnr_y``, ``ssim_y``, ``psnr_rgb``, ``ssim_rgb``."""
    sr8, hr8 = to_uint8(sr), to_uint8(hr)
    return {
        "psnr_y": psnr(sr8, hr8, crop, "y"),
        "ssim_y": ssim(sr8, hr8, crop, "y"),
        "psnr_rgb": psnr(sr8, hr8, crop, "rgb"),
        "ssim_rgb": ssim(sr8, hr8, crop, "rgb"),
    }


METRIC_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
# Scored from the second frame of a clip on (each against its predecessor).
TEMPORAL_KEYS = ("tof", "warp_error")
PERCEPTUAL_KEYS = ("lpips", "tlp")  # tLP from the second frame on, too

# ----------------------------------------------------------------------- temporal consistency
# tOF follows TecoGAN (Chu et al., "Learning Temporal Coherence via Self-Supervision for
# GAN-based Video Generation", ACM TOG 2020; the metrics script of github.com/thunil/TecoGAN):
# OpenCV's Farneback flow between consecutive 8-bit grey frames with these parameters, the
# output's flow and the ground truth's cropped alike, then the mean over pixels of the
# Euclidean norm of their difference. The one difference: TecoGAN's script also leaves out
# the first three and last two frames of each clip; we score every consecutive pair.
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5,
             "poly_sigma": 1.2, "flags": 0}
# Forward-backward consistency (Sundaram et al., ECCV 2010): a pixel is occluded when its
# backward flow and the forward flow where it lands do not cancel within this tolerance.
_CONSISTENT_RELATIVE, _CONSISTENT_ABSOLUTE = 0.01, 0.5


def grey(image: np.ndarray) -> np.ndarray:
    """8-bit grey of an HxWx3 uint8 RGB image, as OpenCV (and TecoGAN's metric) computes it."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def optical_flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Farneback flow (HxWx2 float32, x then y) between two grey frames:
    ``first[y, x]`` is found at ``second[y + f[..., 1], x + f[..., 0]]``."""
    return cv2.calcOpticalFlowFarneback(first, second, None, **FARNEBACK)


# The smallest frame side TecoGAN's crop leaves pixels of (smaller frames get no tOF, LPIPS).
TOF_MIN_SIDE = 48


def tof_crop(array: np.ndarray) -> np.ndarray:
    """TecoGAN's centre crop for tOF, LPIPS and tLP (its metric script's ``crop_8x8``): each
    side cut to the largest multiple of 32 that leaves at least 16 pixels out."""
    def span(size: int) -> slice:
        kept = size // 32 * 32
        while kept > size - 16:
            kept -= 32
        if kept <= 0:
            raise ValueError(f"a frame side of {size} pixels is too small for tOF "
                             f"(at least {TOF_MIN_SIDE})")
        start = (size - kept) // 2
        return slice(start, start + kept)
    return array[span(array.shape[0]), span(array.shape[1])]


class Motion:
    """The ground truth's motion from one frame to the next: what ``tof`` and ``warp_error``
    hold an output's consecutive frames against.

    Args:
        previous: the ground-truth frame t-1, HxWx3 uint8.
        current: the ground-truth frame t, the same size.
        crop: border ignored by the warping error (the scale factor, as for PSNR).
    """

    def __init__(self, previous: np.ndarray, current: np.ndarray, crop: int = 0):
        before, after = grey(previous), grey(current)
        self.forward = optical_flow(before, after)
        backward = optical_flow(after, before)  # where each pixel of frame t was at t-1
        h, w = after.shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        self.map_x, self.map_y = xs + backward[..., 0], ys + backward[..., 1]
        forward_there = self._warp(self.forward)
        mismatch = ((backward + forward_there) ** 2).sum(-1)
        motion = (backward ** 2).sum(-1) + (forward_there ** 2).sum(-1)
        mask = mismatch <= _CONSISTENT_RELATIVE * motion + _CONSISTENT_ABSOLUTE
        mask &= (self.map_x >= 0) & (self.map_x <= w - 1) & (self.map_y >= 0)
        mask &= self.map_y <= h - 1
        if crop:
            border = np.zeros_like(mask)
            border[crop:-crop, crop:-crop] = True
            mask &= border
        self.mask = mask
        self.change = self._change(previous, current)

    def _warp(self, image: np.ndarray) -> np.ndarray:
        """``image`` of frame t-1 moved onto frame t (bilinear)."""
        return cv2.remap(image, self.map_x, self.map_y, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)

    def _change(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
        """What motion does not explain: frame t minus frame t-1 warped onto it, in [0, 1]."""
        return (current.astype(np.float32) - self._warp(previous.astype(np.float32))) / 255.0

    def tof(self, previous: np.ndarray, current: np.ndarray) -> float:
        """tOF of two consecutive output frames (uint8 RGB): the mean Euclidean distance, in
        pixels, between their Farneback flow and the ground truth's (TecoGAN's definition)."""
        flow = optical_flow(grey(previous), grey(current))
        difference = tof_crop(flow) - tof_crop(self.forward)
        return float(np.sqrt((difference ** 2).sum(-1)).mean())

    def warp_error(self, previous: np.ndarray, current: np.ndarray) -> float | None:
        """Warping error of two consecutive output frames (uint8 RGB), in 8-bit levels.

        Lai et al. (ECCV 2018) warp frame t-1 onto frame t with the flow and average the
        squared difference over the pixels that are not occluded. Applied to the output's
        deviation from the ground truth (output minus ground truth) rather than to the output
        itself, it is 0 for the ground truth (whose own warping error only measures the
        flow's imprecision) and counts the change between frames that the true motion does
        not explain: flicker, popping detail. Reported as the root mean square over the
        unoccluded pixels and the three channels, times 255; None when no pixel is left
        (a frame that the crop or occlusions cover entirely).
        """
        deviation = self._change(previous, current) - self.change
        if not self.mask.any():
            return None
        return float(np.sqrt((deviation[self.mask] ** 2).mean()) * 255.0)


# ---------------------------------------------------------------------------- LPIPS and tLP
# LPIPS v0.1 as the official package computes it (github.com/richzhang/PerceptualSimilarity,
# ``lpips`` 0.1.4): the 8-bit RGB image mapped to [-1, 1] (x / 127.5 - 1), its scaling layer
# (a shift and a scale per channel), the network's five ReLU taps, each unit-normalised over
# its channels, then per tap the squared difference weighted per channel by the learned head
# (a 1x1 convolution), averaged over space; the five are summed.
LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16"}
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_EPS = 1e-10


class LPIPS(nn.Module):
    """The LPIPS v0.1 distance between two 8-bit RGB images; ``features`` once per image lets
    one image be compared with several (``distance``), as tLP and the Scoreboard do.

    Args:
        net: "alex" (AlexNet, what VSR papers report) or "vgg" (VGG16).
        weights: a file with the network's ``features.*`` and the heads ``lin0..4.weight``;
            None takes the ImageNet networks of ``backbones.imagenet_weights``.
    """

    def __init__(self, net: str = "alex", weights: str | os.PathLike | None = None):
        super().__init__()
        if net not in LPIPS_NETS:
            raise cli.ParameterError("net", net, f"must be one of {', '.join(LPIPS_NETS)}")
        name = LPIPS_NETS[net]
        self.net = net
        self.network = backbones.NETWORKS[name]()
        self.source = Path(weights) if weights is not None else backbones.imagenet_weights(name)
        state = backbones.load_network(self.network, self.source, name)
        for i, channels in enumerate(self.network.LPIPS_CHANNELS):
            head = state.get(f"lin{i}.weight")
            if head is None or tuple(head.shape) != (1, channels, 1, 1):
                raise checkpoint.CheckpointError(
                    f"{self.source}: no LPIPS head lin{i}.weight of shape (1, {channels}, 1, 1)")
            self.register_buffer(f"lin{i}", head.float().clone())
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))
        self.eval()

    @torch.inference_mode()
    def features(self, image: np.ndarray) -> list[torch.Tensor]:
        """The unit-normalised taps of an HxWx3 uint8 RGB image."""
        x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        x = ((x / 127.5 - 1.0) - self.shift) / self.scale
        taps = self.network.taps(x, self.network.LPIPS_TAPS)
        return [t / (t.pow(2).sum(1, keepdim=True).sqrt() + _LPIPS_EPS) for t in taps]

    @torch.inference_mode()
    def distance(self, first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
        """LPIPS between two images given as their ``features``."""
        total = sum(torch.nn.functional.conv2d((a - b).pow(2), getattr(self, f"lin{i}")).mean()
                    for i, (a, b) in enumerate(zip(first, second, strict=True)))
        return float(total)

    def forward(self, first: np.ndarray, second: np.ndarray) -> float:
        """LPIPS between two HxWx3 uint8 RGB images of one size."""
        return self.distance(self.features(first), self.features(second))


def _means(rows: list[dict], keys: list[str]) -> dict[str, float]:
    """The mean of each key over the rows that have it (keys no row has are left out)."""
    found = {k: [row[k] for row in rows if k in row] for k in keys}
    return {k: sum(values) / len(values) for k, values in found.items() if values}


class Scoreboard:
    """Per-frame PSNR/SSIM of a model (and of bicubic, when given), with per-clip means and
    their average: the one scorer of validation and of the test script.

    Args:
        crop: border ignored by PSNR, SSIM and the warping error (the scale factor).
        temporal: also tOF and the warping error (and tLP, with ``lpips``) against each clip's
            previous frame.
        lpips: an ``LPIPS`` to score LPIPS (and tLP) with, on TecoGAN's centre crop
            (``tof_crop``) as its metric script does; None scores neither.
    """

    def __init__(self, crop: int, temporal: bool = False, lpips: LPIPS | None = None):
        self.crop = crop
        self.temporal = temporal
        self.lpips = lpips
        self.rows: list[dict] = []
        self._last: dict[str, dict] = {}  # the current clip -> its last frame's images, taps

    def add(self, clip: str, frame: str, sr: np.ndarray | torch.Tensor,
            hr: np.ndarray | torch.Tensor, bicubic: np.ndarray | torch.Tensor | None = None,
            seconds: float | None = None) -> dict:
        """Score one frame; returns its row (``psnr_y``, ..., ``bicubic_psnr_y``, ...)."""
        row = {"clip": clip, "frame": frame}
        if seconds is not None:
            row["seconds"] = seconds
        images = {"hr": to_uint8(hr), "": to_uint8(sr)}
        if bicubic is not None:
            images["bicubic_"] = to_uint8(bicubic)
        for prefix, image in images.items():
            if prefix != "hr":
                row |= {f"{prefix}{k}": v for k, v in score(image, images["hr"],
                                                             self.crop).items()}
        now = {"images": images, "taps": self._lpips_taps(images)}
        for prefix, taps in now["taps"].items():
            if prefix != "hr":
                row[f"{prefix}lpips"] = self.lpips.distance(taps, now["taps"]["hr"])
        if self.temporal:
            if clip not in self._last:  # frames come clip by clip: forget the previous clip's
                self._last.clear()
            last, self._last[clip] = self._last.get(clip), now
            if last is not None:
                row |= self._temporal(last, now)
        self.rows.append(row)
        return row

    def _lpips_taps(self, images: dict[str, np.ndarray]) -> dict[str, list[torch.Tensor]]:
        """LPIPS's taps of each image on TecoGAN's crop; none without ``lpips`` or for frames
        too small for the crop."""
        if self.lpips is None or min(images["hr"].shape[:2]) < TOF_MIN_SIDE:
            return {}
        return {name: self.lpips.features(tof_crop(image)) for name, image in images.items()}

    def _temporal(self, last: dict, now: dict) -> dict:
        """tOF, the warping error and tLP of the outputs against the previous frame."""
        hr = now["images"]["hr"]
        motion = Motion(last["images"]["hr"], hr, self.crop)
        with_tof = min(hr.shape[:2]) >= TOF_MIN_SIDE
        found = {}
        truth = (self.lpips.distance(last["taps"]["hr"], now["taps"]["hr"])
                 if now["taps"] and last["taps"] else None)
        for prefix, now_image in now["images"].items():
            if prefix == "hr" or prefix not in last["images"]:
                continue
            before = last["images"][prefix]
            if with_tof:
                found[f"{prefix}tof"] = motion.tof(before, now_image)
            warp = motion.warp_error(before, now_image)
            if warp is not None:
                found[f"{prefix}warp_error"] = warp
            if truth is not None:  # TecoGAN: |LPIPS(out[t-1], out[t]) - LPIPS(gt[t-1], gt[t])|
                change = self.lpips.distance(last["taps"][prefix], now["taps"][prefix])
                found[f"{prefix}tlp"] = abs(change - truth)
        return found

    def keys(self) -> list[str]:
        """The numeric columns of the rows, in order."""
        scored = (*METRIC_KEYS, *TEMPORAL_KEYS, *PERCEPTUAL_KEYS)
        return [k for k in ("seconds", *scored, *(f"bicubic_{k}" for k in scored))
                if any(k in row for row in self.rows)]

    def clips(self) -> dict[str, dict]:
        """Mean of every metric per clip, in the order clips were first seen (temporal metrics
        over the frames that have a predecessor)."""
        grouped: dict[str, list[dict]] = {}
        for row in self.rows:
            grouped.setdefault(row["clip"], []).append(row)
        return {clip: {"frames": len(rows), **_means(rows, self.keys())}
                for clip, rows in grouped.items()}

    def average(self) -> dict:
        """The mean over clips of the clip means (how VSR papers average Vid4)."""
        clips = list(self.clips().values())
        return {"frames": sum(c["frames"] for c in clips), **_means(clips, self.keys())}

    def table(self) -> str:
        """The per-clip means (and their average) as a text table, bicubic beside ours."""
        temporal = any(k in self.keys() for k in TEMPORAL_KEYS)
        perceptual = "lpips" in self.keys()
        head = (f"{'clip':<16}{'frames':>7}  {'bicubic Y':>15}  {'ours Y':>15}  "
                f"{'bicubic RGB':>15}  {'ours RGB':>15}"
                + (f"  {'bicubic tOF/warp':>16}  {'ours tOF/warp':>16}" if temporal else "")
                + (f"  {'bicubic LPIPS/tLP':>17}  {'ours LPIPS/tLP':>17}" if perceptual else "")
                + f"   (PSNR dB / SSIM, crop {self.crop}"
                + ("; tOF px / warping error in 8-bit levels" if temporal else "")
                + (f"; LPIPS-{self.lpips.net} v0.1 / tLPx100 on TecoGAN's centre crop"
                   if perceptual else "") + ")")
        lines = [head]

        def pair(m: dict, first: str, second: str, a: str, b: str, width: int,
                 factor: float = 1.0) -> str:
            """Two metrics as "a / b" (the second times ``factor``), "-" for one that is
            missing (no bicubic, frames too small for tOF)."""
            text = " / ".join(f"{m[k] * x:{f}}" if k in m else "-"
                              for k, f, x in ((first, a, 1.0), (second, b, factor)))
            return f"{text:>{width}}"

        def line(name: str, m: dict) -> str:
            cells = [pair(m, p + "psnr_" + c, p + "ssim_" + c, "7.2f", ".4f", 15)
                     for c in ("y", "rgb") for p in ("bicubic_", "")]
            if temporal:
                cells += [pair(m, p + "tof", p + "warp_error", "7.3f", "6.3f", 16)
                          for p in ("bicubic_", "")]
            if perceptual:  # tLP x 100, as TecoGAN's tables print it
                cells += [pair(m, p + "lpips", p + "tlp", "7.4f", "6.3f", 17, factor=100.0)
                          for p in ("bicubic_", "")]
            return f"{name:<16}{m['frames']:>7}  " + "  ".join(cells)

        clips = self.clips()
        for clip, means in clips.items():
            lines.append(line(clip, means))
        if len(clips) > 1:
            lines.append(line("average", self.average()))
        return "\n".join(lines)

    def write(self, csv_path: str | os.PathLike, json_path: str | os.PathLike,
              info: dict) -> None:
        """A CSV (frames, then a "mean" row per clip and the average) and a JSON file with
        ``info``, both written atomically."""
        fields = ["clip", "frame", *self.keys()]
        clips, average = self.clips(), self.average()

        def write_csv(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(self.rows)
                for clip, means in clips.items():
                    writer.writerow({"clip": clip, "frame": "mean", **means})
                writer.writerow({"clip": "average", "frame": "mean", **average})

        atomic.write_atomically(csv_path, write_csv)
        atomic.write_text(json_path, json.dumps(
            {**info, "crop": self.crop, "clips": clips, "average": average, "frames": self.rows},
            indent=1, default=_json_number))


def _json_number(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
