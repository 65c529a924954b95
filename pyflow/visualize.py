"""Colour coding of optical flow (the Middlebury colour wheel of Baker et al., 2011)."""

from __future__ import annotations

import numpy as np


def _color_wheel() -> np.ndarray:
    """The 55 colours of the wheel (red, yellow, green, cyan, blue, magenta), RGB in [0, 1]."""
    ranges = [(15, (1, 0, 0), (1, 1, 0)), (6, (1, 1, 0), (0, 1, 0)), (4, (0, 1, 0), (0, 1, 1)),
              (11, (0, 1, 1), (0, 0, 1)), (13, (0, 0, 1), (1, 0, 1)), (6, (1, 0, 1), (1, 0, 0))]
    parts = [np.linspace(start, end, n, endpoint=False) for n, start, end in ranges]
    return np.concatenate(parts)


def flow_to_color(u: np.ndarray, v: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """Colour-code a flow field: hue gives the direction, saturation the magnitude.

    Args:
        u, v: (H, W) horizontal and vertical flow in pixels.
        max_flow: magnitude shown fully saturated (default: the largest in the field).

    Returns:
        (H, W, 3) uint8 RGB image; zero flow is white.
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    magnitude = np.hypot(u, v)
    scale = float(magnitude.max()) if max_flow is None else float(max_flow)
    radius = np.clip(magnitude / scale, 0, 1) if scale > 0 else np.zeros_like(magnitude)
    wheel = _color_wheel()
    n = len(wheel)
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (n - 1)  # 0..n-1 around the wheel
    k0 = np.floor(position).astype(int) % n
    k1 = (k0 + 1) % n
    frac = (position - np.floor(position))[..., None]
    color = (1 - frac) * wheel[k0] + frac * wheel[k1]
    color = 1 - radius[..., None] * (1 - color)  # white at the centre, the wheel at radius 1
    return np.round(color * 255).astype(np.uint8)
