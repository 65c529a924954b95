"""Validated Python entry points of the Coarse2Fine flow (see pyflow/__init__.py)."""

from __future__ import annotations

import math
import numbers
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._pyflow import CORE_VERSION as _BUILT_VERSION
from ._pyflow import __file__ as _BUILT_FILE
from ._pyflow import flow_into as _flow_into

# The version of the binding this module expects (see _pyflow.pyx).
CORE_VERSION = 1
if _BUILT_VERSION != CORE_VERSION:
    raise ImportError(f"stale build at {_BUILT_FILE} (core version {_BUILT_VERSION}, expected "
                      f"{CORE_VERSION})", name="pyflow._pyflow")

Flow = tuple[np.ndarray, np.ndarray, np.ndarray]

# Bounds that keep every count and index inside the C++ core's 32-bit ints.
_MAX_COUNT = 1 << 24
_MAX_SIDE = 1 << 15
_CHANNELS = {0: (3, "RGB"), 1: (1, "grey")}


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not low <= value <= _MAX_COUNT:
        raise ValueError(f"{name} must be in [{low}, {_MAX_COUNT}], got {value}")
    return value


def _check_params(alpha, ratio, minWidth, nOuterFPIterations, nInnerFPIterations,
                  nSORIterations, colType) -> tuple:
    alpha = _number("alpha", alpha)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 (the smoothness weight), got {alpha}")
    # Like pyflow, a ratio outside [0.4, 0.98] is replaced by 0.75 (in the C++ core).
    ratio = _number("ratio", ratio)
    colType = _count("colType", colType, 0)
    if colType not in _CHANNELS:
        raise ValueError(f"colType must be 0 (RGB, C=3) or 1 (grey, C=1), got {colType}")
    return (alpha, ratio, _count("minWidth", minWidth, 1),
            _count("nOuterFPIterations", nOuterFPIterations, 0),
            _count("nInnerFPIterations", nInnerFPIterations, 0),
            _count("nSORIterations", nSORIterations, 0), colType)


def _check_image(name: str, im: object, colType: int) -> np.ndarray:
    if not isinstance(im, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape (H, W, C), "
                        f"got {type(im).__name__}")
    if im.dtype != np.float64:
        raise TypeError(f"{name} must be float64 with values in [0, 1], got {im.dtype} "
                        f"(for uint8 frames use {name}.astype(np.float64) / 255)")
    if im.ndim != 3:
        raise ValueError(f"{name} must have shape (H, W, C), got shape {im.shape} "
                         f"(add a channel axis for grey images: {name}[..., None])")
    channels, kind = _CHANNELS[colType]
    if im.shape[2] != channels:
        raise ValueError(f"{name} has {im.shape[2]} channels but colType={colType} means "
                         f"{kind} with {channels} channel(s)")
    h, w = im.shape[:2]
    if h < 2 or w < 2:
        raise ValueError(f"{name} is {h}x{w} (H x W): images must be at least 2x2")
    if h > _MAX_SIDE or w > _MAX_SIDE:
        raise ValueError(f"{name} is {h}x{w} (H x W): sides above {_MAX_SIDE} are not supported")
    if not np.isfinite(im).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(im)


def _check_pair(im1: np.ndarray, im2: np.ndarray, name2: str) -> None:
    if im1.shape != im2.shape:
        raise ValueError(f"im1 and {name2} must have the same shape, got {im1.shape} "
                         f"and {im2.shape}")


def _compute(im1: np.ndarray, im2: np.ndarray, params: tuple) -> Flow:
    """Run the C++ core on checked arrays; the GIL is released while it computes."""
    h, w, c = im1.shape
    u = np.empty((h, w))
    v = np.empty((h, w))
    im2W = np.empty((h, w, c))
    _flow_into(im1, im2, *params[:6], u, v, im2W)
    return u, v, im2W


def coarse2fine_flow(im1: np.ndarray, im2: np.ndarray, alpha: float = 1.0, ratio: float = 0.5,
                     minWidth: int = 40, nOuterFPIterations: int = 3,
                     nInnerFPIterations: int = 1, nSORIterations: int = 20,
                     colType: int = 0) -> Flow:
    """Dense optical flow from im1 to im2: pixel (x, y) of im1 matches (x + u, y + v) in im2.

    Computes the same numbers as pyflow's ``coarse2fine_flow`` (same arguments and defaults),
    without printing, with clear errors on bad input, and with the GIL released.

    Args:
        im1, im2: float64 arrays (H, W, C) with values in [0, 1]; C = 3 (RGB) for colType 0,
            C = 1 for colType 1; same shape, H and W at least 2.
        alpha: weight of the smoothness term (> 0).
        ratio: downsampling ratio between pyramid levels (outside [0.4, 0.98]: 0.75).
        minWidth: width of the coarsest level, roughly (the level count is
            int(log(minWidth / W) / log(ratio)), at least 1).
        nOuterFPIterations: outer fixed-point (warping) iterations at full resolution
            (level k runs nOuterFPIterations + k).
        nInnerFPIterations: inner fixed-point iterations.
        nSORIterations: SOR sweeps at full resolution (level k runs nSORIterations + 3k).
        colType: 0 for RGB, 1 for grey.

    Returns:
        (u, v, im2W): float64 (H, W), (H, W) and (H, W, C); im2W is im2 warped towards im1
        with bicubic interpolation, clamped to [0, 1].

    Raises:
        TypeError: an image is not a float64 ndarray, or a parameter has the wrong type.
        ValueError: wrong ndim, channels not matching colType, differing shapes, images
            smaller than 2x2, NaN/inf values, or a parameter out of range.
    """
    params = _check_params(alpha, ratio, minWidth, nOuterFPIterations, nInnerFPIterations,
                           nSORIterations, colType)
    a = _check_image("im1", im1, params[-1])
    b = _check_image("im2", im2, params[-1])
    _check_pair(a, b, "im2")
    return _compute(a, b, params)


def default_workers(n_tasks: int) -> int:
    """Threads for n_tasks flows: one per task, at most one per CPU this process may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(n_tasks, cpus))


# Thread pools kept between calls, by size: their threads keep their C++ workspaces (a fresh
# thread would allocate and page in its buffers again, a tenth of a small flow's time).
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(max_workers=workers,
                                                 thread_name_prefix="pyflow")
        return _pools[workers]


def _forget_pools() -> None:
    """In a forked child (e.g. a DataLoader worker) the pools' threads do not exist."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def coarse2fine_flows(im1: np.ndarray, others: Iterable[np.ndarray], *,
                      max_workers: int | None = None, **params) -> list[Flow]:
    """The flows from im1 to each image of ``others``, computed in parallel threads.

    Every input is checked before any flow starts; results come back in the order of
    ``others`` and equal ``coarse2fine_flow(im1, other, **params)`` exactly. The threads are
    kept for later calls (one pool per ``max_workers``; a forked child starts afresh), each
    with its buffers (at most 64 MiB, the size of the largest recent flow).

    Args:
        im1: the reference frame, as for coarse2fine_flow.
        others: the frames to compute the flow to (e.g. the six neighbours of a sample).
        max_workers: threads to use (default: one per frame, at most one per available CPU;
            1 computes the flows one after the other in this thread).
        **params: coarse2fine_flow's keyword parameters, e.g. ``**pyflow.ISEEBETTER_PARAMS``.
    """
    unknown = set(params) - set(_PARAM_NAMES)
    if unknown:
        raise TypeError(f"coarse2fine_flows got unexpected parameter(s) {sorted(unknown)}; "
                        f"expected some of {list(_PARAM_NAMES)}")
    checked = _check_params(**{**_PARAM_DEFAULTS, **params})
    a = _check_image("im1", im1, checked[-1])
    targets = []
    for i, other in enumerate(others):
        b = _check_image(f"others[{i}]", other, checked[-1])
        _check_pair(a, b, f"others[{i}]")
        targets.append(b)
    if max_workers is None:
        max_workers = default_workers(len(targets))
    workers = min(_count("max_workers", max_workers, 1), len(targets))
    if workers <= 1:
        return [_compute(a, b, checked) for b in targets]
    return list(_pool(workers).map(lambda b: _compute(a, b, checked), targets))


_PARAM_NAMES = ("alpha", "ratio", "minWidth", "nOuterFPIterations", "nInnerFPIterations",
                "nSORIterations", "colType")
_PARAM_DEFAULTS = dict(zip(_PARAM_NAMES, coarse2fine_flow.__defaults__, strict=True))
