"""Optical flow between an LR target frame and its neighbours: the one seam for the flow method.

Training samples, evaluation and video upscaling all get their flows from ``compute_flows``
(through ``flows_to`` or ``FlowCache``), so swapping the flow method (another algorithm, other
parameters) is a change to this file alone; ``METHOD`` and ``params()`` name it in the cache
key, so a cache never serves flows of another method.

Today's method is iSeeBetter's: pyflow's Coarse2Fine flow (our C++ re-implementation) with
alpha 0.012, ratio 0.75, minWidth 20, 7 outer, 1 inner and 30 SOR iterations, on RGB frames
divided by 255; the six flows of a 7-frame sample run in parallel threads (GIL-free).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

import atomic
from cli import ParameterError

METHOD = "pyflow-coarse2fine"
_CACHE_VERSION = 1


def _pyflow():
    import pyflow  # lazily: this module must import without the compiled extension

    return pyflow


def params() -> dict:
    """The flow method's parameters (iSeeBetter's pyflow settings)."""
    return dict(_pyflow().ISEEBETTER_PARAMS)


def _as_flow_input(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def compute_flows(target: Image.Image, neighbours: Sequence[Image.Image],
                  threads: int | None = None) -> list[np.ndarray]:
    """The flow from the LR ``target`` to each neighbour, as float32 (2, H, W) arrays [u, v].

    Args:
        target: the LR target frame (RGB).
        neighbours: LR frames of the same size.
        threads: flows computed at once (None: one thread per neighbour).
    """
    if not neighbours:
        return []
    pyflow = _pyflow()
    results = pyflow.coarse2fine_flows(
        _as_flow_input(target), [_as_flow_input(n) for n in neighbours],
        max_workers=threads or len(neighbours), **pyflow.ISEEBETTER_PARAMS)
    return [np.stack([u, v]).astype(np.float32) for u, v, _ in results]


def flows_to(target: Image.Image, neighbours: Sequence[Image.Image],
             threads: int | None = None) -> list[np.ndarray]:
    """``compute_flows``, with a frame repeated in ``neighbours`` (clamped at the ends of a
    video) computed once."""
    unique: dict[int, Image.Image] = {}
    for frame in neighbours:
        unique.setdefault(id(frame), frame)
    flows = compute_flows(target, list(unique.values()), threads)
    by_id = dict(zip(unique, flows, strict=True))
    return [by_id[id(frame)] for frame in neighbours]


class FlowCache:
    """Full-frame LR flows on disk, computed once and reused across epochs.

    An entry is keyed by both frames (real path, size and modification time), the LR size, the
    scale, how the LR frame was made and the flow method and its parameters, so an edited frame
    or a changed setting never reuses a stale flow. Entries are written atomically, so
    concurrent DataLoader workers and killed runs never leave a torn entry; an unreadable entry
    is recomputed.

    Args:
        root: the cache folder (created when missing).
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as err:
            raise ParameterError("flow_cache", root, f"cannot create the folder ({err})") from None
        if not os.access(self.root, os.W_OK):
            raise ParameterError("flow_cache", root, "the folder is not writable")

    def key(self, target: str, neighbour: str | None, lr_size: tuple[int, int], scale: int,
            upscale_only: bool, params: dict) -> str:
        """A hex digest naming the flow from ``target`` to ``neighbour`` (None: the target)."""
        fields = {"version": _CACHE_VERSION, "target": _file_id(target),
                  "neighbour": _file_id(neighbour or target), "lr_size": list(lr_size),
                  "scale": scale, "upscale_only": upscale_only, "method": METHOD,
                  "params": params}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key + ".npy")

    def load(self, key: str, shape: tuple[int, int]) -> np.ndarray | None:
        """The cached flow, or None when absent or unusable (torn, wrong shape, not finite)."""
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            flow = np.load(path, allow_pickle=False)
        except Exception:  # noqa: BLE001 - any unreadable entry is simply recomputed
            return None
        ok = (flow.dtype == np.float32 and flow.shape == (2, *shape)
              and bool(np.isfinite(flow).all()))
        return flow if ok else None

    def store(self, key: str, flow: np.ndarray) -> None:
        """Write an entry atomically; a full disk or a read-only cache only costs speed."""
        path = self.path(key)

        def write(tmp) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, flow, allow_pickle=False)

        try:
            atomic.write_atomically(path, write)
        except atomic.WriteError as err:
            warnings.warn(f"flow cache: {err}", stacklevel=2)

    def flows(self, target_path: str, neighbour_paths: Sequence[str | None],
              lr_size: tuple[int, int], scale: int, upscale_only: bool, make_frames) -> list:
        """Full-frame flows from the target to each neighbour (None: the target itself), from
        the cache, computing and storing the missing ones. ``make_frames(missing)`` returns the
        LR target and the LR frames of the neighbours at those indices."""
        keys = [self.key(target_path, p, lr_size, scale, upscale_only, params())
                for p in neighbour_paths]
        flows = [self.load(k, (lr_size[1], lr_size[0])) for k in keys]
        missing = [i for i, f in enumerate(flows) if f is None]
        if missing:
            target, others = make_frames(missing)
            for i, flow in zip(missing, compute_flows(target, others), strict=True):
                self.store(keys[i], flow)
                flows[i] = flow
        return flows


def _file_id(path: str) -> list:
    stat = os.stat(path)
    return [os.path.realpath(path), stat.st_size, stat.st_mtime_ns]
