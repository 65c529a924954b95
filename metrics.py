"""PSNR and SSIM the way video super-resolution papers report them.

Images are scored as they would be saved: float output is clamped to [0, 1] and rounded
to 8 bits first. ``channel="y"`` is the standard VSR protocol (BT.601 luma of the
MATLAB ``rgb2ycbcr``, range 16-235, a border of ``crop`` pixels ignored, ``crop = scale``);
``channel="rgb"`` is what the original iSeeBetter printed, with the same even crop.
SSIM uses Wang et al.'s 11x11 Gaussian window (sigma 1.5) over the valid region.
``Scoreboard`` collects them per frame and averages them per clip and over clips.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity

import atomic

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


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


class Scoreboard:
    """Per-frame PSNR/SSIM of a model (and of bicubic, when given), with per-clip means and
    their average: the one scorer of validation and of the test script.

    Args:
        crop: border ignored by the metrics (the scale factor).
    """

    def __init__(self, crop: int):
        self.crop = crop
        self.rows: list[dict] = []

    def add(self, clip: str, frame: str, sr: np.ndarray | torch.Tensor,
            hr: np.ndarray | torch.Tensor, bicubic: np.ndarray | torch.Tensor | None = None,
            seconds: float | None = None) -> dict:
        """Score one frame; returns its row (``psnr_y``, ..., ``bicubic_psnr_y``, ...)."""
        row = {"clip": clip, "frame": frame}
        if seconds is not None:
            row["seconds"] = seconds
        row |= score(sr, hr, self.crop)
        if bicubic is not None:
            row |= {f"bicubic_{k}": v for k, v in score(bicubic, hr, self.crop).items()}
        self.rows.append(row)
        return row

    def keys(self) -> list[str]:
        """The numeric columns of the rows, in order."""
        return [k for k in ("seconds", *METRIC_KEYS, *(f"bicubic_{k}" for k in METRIC_KEYS))
                if self.rows and k in self.rows[0]]

    def clips(self) -> dict[str, dict]:
        """Mean of every metric per clip, in the order clips were first seen."""
        grouped: dict[str, list[dict]] = {}
        for row in self.rows:
            grouped.setdefault(row["clip"], []).append(row)
        return {clip: {"frames": len(rows), **{k: _mean([r[k] for r in rows])
                                               for k in self.keys()}}
                for clip, rows in grouped.items()}

    def average(self) -> dict:
        """The mean over clips of the clip means (how VSR papers average Vid4)."""
        clips = list(self.clips().values())
        return {"frames": sum(c["frames"] for c in clips),
                **{k: _mean([c[k] for c in clips]) for k in self.keys()}}

    def table(self) -> str:
        """The per-clip means (and their average) as a text table, bicubic beside ours."""
        head = (f"{'clip':<16}{'frames':>7}  {'bicubic Y':>15}  {'ours Y':>15}  "
                f"{'bicubic RGB':>15}  {'ours RGB':>15}   (PSNR dB / SSIM, crop {self.crop})")
        lines = [head]

        def line(name: str, m: dict) -> str:
            cells = [f"{m[p + 'psnr_' + c]:7.2f} / {m[p + 'ssim_' + c]:.4f}"
                     for c in ("y", "rgb") for p in ("bicubic_", "")]
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
