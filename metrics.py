"""PSNR and SSIM the way video super-resolution papers report them.

Images are scored as they would be saved: float output is clamped to [0, 1] and rounded
to 8 bits first. ``channel="y"`` is the standard VSR protocol (BT.601 luma of the
MATLAB ``rgb2ycbcr``, range 16-235, a border of ``crop`` pixels ignored, ``crop = scale``);
``channel="rgb"`` is what the original iSeeBetter printed, with the same even crop.
SSIM uses Wang et al.'s 11x11 Gaussian window (sigma 1.5) over the valid region.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity

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
