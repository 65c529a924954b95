"""The inference core: model inputs for a frame and its neighbours, and the generator call.

``Upscaler`` runs an RBPN generator on batched LR frames with an optional residual (adding
the bicubic upsampling), bf16/fp16 autocast, and tiling ("chop forward"): the LR frame, its
neighbours and their flows are cut into overlapping tiles, each tile is super-resolved on its
own and only its core (without the overlap) is kept. Flows are always computed on whole
frames and then cut, so tiling does not change the flow. Tiling switches itself on when a
whole frame would not fit in memory; the tile size then follows from the free memory and a
bytes-per-LR-pixel figure measured for the model's configuration.
"""

from __future__ import annotations

import copy
import math
import os
import queue
import sys
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import cli
import dataset
from cli import CLIError

T = TypeVar("T")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Peak process memory growth over the bytes of live tensors, measured in fresh processes
# running RBPN on the CPU: NCHW 1.87x (tiny model) and 1.45x (full), where oneDNN copies every
# activation to its blocked layout and back; channels_last 1.05x (compact) and 1.17x (full).
# On CUDA the caching allocator's fragmentation and cuDNN workspaces (not measured here).
MEMORY_OVERHEAD = {("cpu", False): 2.0, ("cpu", True): 1.3, ("cuda", False): 1.5,
                   ("cuda", True): 1.5}
MIN_TILE = 16
# Peak RSS growth when glibc keeps freed memory (``cli.retain_freed_memory``) over the plain
# estimate: the 320x180 demo peaked at 3.2 GiB instead of 2.0 (estimate 1.09 GiB), a tiled
# 1080p frame at 12.3 GiB instead of 5.3; retention is used only where this much fits.
RETAINED_GROWTH = 3.0


# ---------------------------------------------------------------------------------------------
# Frames and their neighbours


def frame_windows(frames: Iterable[T], offsets: Sequence[int]) -> Iterator[tuple[T, list[T]]]:
    """Each frame with its neighbours at ``offsets``, clamped to the first and last frame.

    Streams: at most ``max(-offsets) + max(offsets) + 1`` frames are held at any time, so
    memory does not grow with the length of the sequence. Near the ends a neighbour index is
    clamped (frame -2 is frame 0; frame n+1 is frame n-1), so the first frame's past
    neighbours are the first frame itself.
    """
    before = max([0, *(-o for o in offsets)])
    after = max([0, *offsets])
    buffer: deque[T] = deque()
    first = 0  # index of buffer[0]
    last = -1  # index of buffer[-1]
    source = iter(frames)
    exhausted = False
    t = 0
    while True:
        while not exhausted and last < t + after:
            try:
                buffer.append(next(source))
                last += 1
            except StopIteration:
                exhausted = True
        if t > last:
            return
        while first < t - before:
            buffer.popleft()
            first += 1
        yield buffer[t - first], [buffer[min(max(t + o, 0), last) - first] for o in offsets]
        t += 1


@dataclass
class LRFrame:
    """A frame ready for the model.

    Args:
        lr: the LR frame (the model input).
        hr: the ground truth (``--downscale_first``), or None.
        pts: presentation timestamp of the source frame.
        index: position in the sequence.
    """

    lr: Image.Image
    hr: Image.Image | None
    pts: int
    index: int


def make_lr_frame(image: np.ndarray, scale: int, downscale_first: bool, pts: int = 0,
                  index: int = 0) -> LRFrame:
    """The model input for a decoded RGB frame: the frame itself, or (``downscale_first``) the
    PIL bicubic 1/scale downscale of its modcrop, which is then kept as the ground truth."""
    picture = Image.fromarray(image)
    if not downscale_first:
        return LRFrame(picture, None, pts, index)
    if min(picture.size) < scale:
        raise CLIError(f"a {picture.width}x{picture.height} frame is too small to downscale by "
                       f"{scale}")
    hr = dataset.modcrop(picture, scale)
    return LRFrame(dataset.downscale(hr, scale), hr, pts, index)


def flows_to(target: Image.Image, neighbours: Sequence[Image.Image],
             threads: int | None = None) -> list[np.ndarray]:
    """pyflow (iSeeBetter's parameters) from ``target`` to each neighbour, (2, h, w) float32.

    A frame repeated in ``neighbours`` (clamped at the ends of a video) is computed once.
    """
    unique: dict[int, Image.Image] = {}
    for frame in neighbours:
        unique.setdefault(id(frame), frame)
    flows = dataset.compute_flows(target, list(unique.values()), threads)
    by_id = dict(zip(unique, flows, strict=True))
    return [by_id[id(frame)] for frame in neighbours]


def make_inputs(target: LRFrame, neighbours: Sequence[LRFrame], scale: int,
                flow_threads: int | None = None, bicubic: bool = True) -> tuple:
    """``(input, neighbor, flow, bicubic)`` for one frame, as tensors: the LR frame (3, h, w),
    its neighbours (3, h, w) and the flows to them (2, h, w), and the PIL bicubic upsampling
    (3, h*s, w*s), or None when ``bicubic`` is False."""
    flows = flows_to(target.lr, [n.lr for n in neighbours], flow_threads)
    upsampled = dataset.to_tensor(dataset.upscale(target.lr, scale)) if bicubic else None
    return (dataset.to_tensor(target.lr), [dataset.to_tensor(n.lr) for n in neighbours],
            [torch.from_numpy(f) for f in flows], upsampled)


def in_background(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a worker thread, ``depth`` ahead of the consumer.

    The next frames' optical flows (pyflow releases the GIL) are computed while the model runs
    on the current ones. Exceptions in the worker are raised in the consumer.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            slots.put((done, err))

    worker = threading.Thread(target=produce, name="upscale-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, err = slots.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:  # on close (or an error) stop the worker and wait for it to let go of its input
        stop.set()
        worker.join()


# ---------------------------------------------------------------------------------------------
# Memory


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages alive during the ops run under it; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()  # one Python object per storage, kept alive
            key = id(storage)
            if key in self._seen:  # a view of a storage already counted
                continue
            self._seen.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key, storage.nbytes())
        return out


def bytes_per_lr_pixel(model: nn.Module, n_neighbours: int,
                       dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """Measured memory of one forward pass as ``(bytes per LR pixel, fixed bytes)``.

    The model is copied to the meta device (no data, no time) and run on two probe sizes while
    the live tensor storages are counted; activations grow linearly with the pixel count. Under
    autocast the activations are in ``dtype``, so the probe runs in it.
    """
    model = getattr(model, "module", model)  # DataParallel: measure the wrapped network
    probe = copy.deepcopy(model).to(device="meta", dtype=dtype).eval()
    peaks = []
    sizes = (16, 32)
    for side in sizes:
        def image(channels: int, side: int = side) -> torch.Tensor:
            return torch.empty(1, channels, side, side, device="meta", dtype=dtype)

        inputs = (image(3), [image(3) for _ in range(n_neighbours)],
                  [image(2) for _ in range(n_neighbours)])
        with torch.no_grad(), _LiveTensorBytes() as counter:  # the inputs are not counted
            probe(*inputs)
        peaks.append(counter.peak)
    slope = (peaks[1] - peaks[0]) / (sizes[1] ** 2 - sizes[0] ** 2)
    return slope, max(0.0, peaks[0] - slope * sizes[0] ** 2)


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated: free GPU memory (plus PyTorch's unused cache) on
    CUDA; on the CPU MemAvailable from /proc/meminfo, capped by a cgroup memory limit."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    candidates = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            candidates.append(int(limit) - usage)
    if not candidates:  # not Linux: total physical memory, halved to stay on the safe side
        candidates.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    return max(0, min(candidates))


def choose_tile(height: int, width: int, batch: int, per_pixel: float, fixed: float,
                budget: float, overlap: int) -> int:
    """The side (LR pixels) of the largest square tile whose forward pass fits ``budget``
    bytes, counting its ``overlap`` margins; 0 when the whole frame fits. Raises CLIError when
    not even a MIN_TILE tile fits."""
    if batch * (per_pixel * height * width + fixed) <= budget:
        return 0
    padded = math.isqrt(max(0, int((budget / batch - fixed) / per_pixel)))
    tile = padded - 2 * overlap
    if tile < MIN_TILE:
        raise CLIError(f"not enough memory for a {MIN_TILE}x{MIN_TILE} tile with "
                       f"--tile_overlap {overlap} ({budget / 2**30:.2f} GiB budget, "
                       f"{per_pixel / 1024:.0f} KiB per LR pixel); lower --tile_overlap or "
                       f"--testBatchSize, or raise --max_memory")
    return min(tile, max(height, width))


# ---------------------------------------------------------------------------------------------
# Tiling


@dataclass(frozen=True)
class Tile:
    """A tile of an LR frame (rows/cols, end exclusive).

    Args:
        top, bottom, left, right: the core, whose super-resolved pixels are kept.
        pad_top, pad_bottom, pad_left, pad_right: the core plus its overlap margins (clipped
            to the frame): what the model sees.
    """

    top: int
    bottom: int
    left: int
    right: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int


def tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Cover a height x width frame with cores of at most tile x tile, each padded by
    ``overlap`` pixels of context on every side that has neighbours."""
    out = []
    for top in range(0, height, tile):
        bottom = min(top + tile, height)
        for left in range(0, width, tile):
            right = min(left + tile, width)
            out.append(Tile(top, bottom, left, right, max(top - overlap, 0),
                            min(bottom + overlap, height), max(left - overlap, 0),
                            min(right + overlap, width)))
    return out


# ---------------------------------------------------------------------------------------------
# Self-ensemble


@dataclass(frozen=True)
class Symmetry:
    """One of the 8 symmetries of a rectangle: flip columns, flip rows, then transpose."""

    hflip: bool
    vflip: bool
    transpose: bool

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """The transformed (..., H, W) tensor."""
        if self.hflip:
            image = image.flip(-1)
        if self.vflip:
            image = image.flip(-2)
        return image.transpose(-2, -1) if self.transpose else image

    def flow(self, flow: torch.Tensor) -> torch.Tensor:
        """The flow field of the transformed frames: (..., 2, H, W) [u, v] displacements. A
        flip negates the displacement along it; a transposition swaps u and v."""
        u, v = flow[..., 0:1, :, :], flow[..., 1:2, :, :]
        if self.hflip:
            u = -u
        if self.vflip:
            v = -v
        if self.transpose:
            u, v = v, u
        return self.image(torch.cat((u, v), dim=-3))

    def invert(self, image: torch.Tensor) -> torch.Tensor:
        """Undo ``image``: the output for transformed inputs back in the original frame."""
        if self.transpose:
            image = image.transpose(-2, -1)
        if self.vflip:
            image = image.flip(-2)
        return image.flip(-1) if self.hflip else image


SYMMETRIES = [Symmetry(h, v, t) for t in (False, True) for v in (False, True)
              for h in (False, True)]


class Upscaler:
    """Runs a video SR generator on batched LR frames, whole or in tiles.

    Args:
        model: the generator, called as ``model(x, neighbours, flows)`` (an ``rbpn.Net``).
        scale: its upscaling factor.
        device: where the model runs; inputs and outputs stay on the CPU.
        residual: add the bicubic upsampling to the output (``-r/--residual``).
        precision: "fp32", or "bf16"/"fp16" autocast (on CPU and GPU).
        tile: LR tile side; 0 chooses it from the memory budget.
        tile_overlap: LR pixels of context around each tile (discarded after the model).
        chop_forward: always tile (with ``tile``, or the largest tile that fits); otherwise
            tiles are used only when ``auto_tile`` finds that a whole frame would not fit.
        auto_tile: tile when a whole frame would not fit in ``max_memory``.
        max_memory: bytes a forward pass may use (None: half of the available RAM on the CPU,
            80% of the free memory on a GPU).
        channels_last: run the model in NHWC memory format (the model is converted in place;
            1.23x faster for the full RBPN in fp32 on a 2-core AVX-512 CPU).
        self_ensemble: average the outputs for the 8 flips and transpositions of the inputs
            (8x the time; flows are transformed with the frames, not recomputed).
        retain_freed_memory: on the CPU, when whole frames fit the budget RETAINED_GROWTH
            times over, have malloc keep freed memory (``cli.retain_freed_memory``, process
            wide): no page faults for every activation of every frame, 1.8x faster.
    """

    def __init__(self, model: nn.Module, *, scale: int, device: torch.device | str = "cpu",
                 residual: bool = False, precision: str = "fp32", tile: int = 0,
                 tile_overlap: int = 8, chop_forward: bool = False, auto_tile: bool = True,
                 max_memory: float | None = None, channels_last: bool = True,
                 self_ensemble: bool = False, retain_freed_memory: bool = False):
        if precision not in PRECISIONS:
            raise CLIError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
        if tile < 0 or (0 < tile < MIN_TILE):
            raise CLIError(f"--tile {tile}: must be 0 (automatic) or at least {MIN_TILE}")
        if tile_overlap < 0:
            raise CLIError(f"--tile_overlap {tile_overlap}: must be 0 or more")
        if max_memory is not None and max_memory <= 0:
            raise CLIError(f"--max_memory {max_memory / 2**30:g}: must be positive (GiB)")
        self.model = model
        self.scale = scale
        self.device = torch.device(device)
        self.residual = residual
        self.precision = precision
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.chop_forward = chop_forward or tile > 0
        self.auto_tile = auto_tile
        self.max_memory = max_memory
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.symmetries = SYMMETRIES if self_ensemble else SYMMETRIES[:1]
        self.retain_freed_memory = retain_freed_memory and self.device.type == "cpu"
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.last_tile = 0  # the tile side used by the last call (0: whole frames)
        self._estimate: dict[int, tuple[float, float]] = {}
        self._plans: dict[tuple[int, ...], int] = {}

    def memory_budget(self) -> float:
        """Bytes a forward pass may use."""
        if self.max_memory is not None:
            return self.max_memory
        fraction = 0.8 if self.device.type == "cuda" else 0.5
        return fraction * available_memory(self.device)

    def memory_per_pixel(self, n_neighbours: int) -> tuple[float, float]:
        """Estimated peak bytes of one forward pass on the device: (per LR pixel of the input,
        fixed), overhead included."""
        if n_neighbours not in self._estimate:
            dtype = PRECISIONS[self.precision] or torch.float32
            per_pixel, fixed = bytes_per_lr_pixel(self.model, n_neighbours, dtype)
            channels_last = self.memory_format == torch.channels_last
            overhead = MEMORY_OVERHEAD.get((self.device.type, channels_last), 2.0)
            # Plus the copies of the float32 inputs (target, neighbours, flows) in the model's
            # memory format and of the output.
            per_pixel = overhead * per_pixel + 4 * (3 + 5 * n_neighbours + 3 * self.scale**2)
            self._estimate[n_neighbours] = (per_pixel, overhead * fixed)
        return self._estimate[n_neighbours]

    def plan_tile(self, batch: int, height: int, width: int, n_neighbours: int) -> int:
        """The LR tile side for frames of this size (0: whole frames), decided once per size so
        that every frame of a video is processed the same way."""
        if self.tile:
            return 0 if self.tile >= max(height, width) else self.tile
        if not (self.chop_forward or self.auto_tile):
            return 0
        key = (batch, height, width, n_neighbours)
        if key not in self._plans:
            per_pixel, fixed = self.memory_per_pixel(n_neighbours)
            budget = self.memory_budget()
            if self.device.type == "cpu":  # the output canvas shares the RAM with the model
                budget -= batch * 3 * height * width * self.scale**2 * 4
            if cli.freed_memory_retained():
                per_pixel, fixed = RETAINED_GROWTH * per_pixel, RETAINED_GROWTH * fixed
            elif (self.retain_freed_memory and RETAINED_GROWTH * batch
                  * (per_pixel * height * width + fixed) <= budget):
                cli.retain_freed_memory()
            self._plans[key] = choose_tile(height, width, batch, per_pixel, fixed, budget,
                                           self.tile_overlap)
        return self._plans[key]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, neighbours: Sequence[torch.Tensor],
                 flows: Sequence[torch.Tensor], bicubic: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Super-resolve a batch: x (B, 3, h, w), neighbours and flows lists of (B, 3, h, w) and
        (B, 2, h, w), bicubic (B, 3, h*s, w*s) for the residual. Returns float32 (B, 3, h*s,
        w*s) on the CPU, not clamped."""
        if self.residual and bicubic is None:
            raise ValueError("residual mode needs the bicubic upsampling")
        batch, _, height, width = x.shape
        tile = self.plan_tile(batch, height, width, len(neighbours))
        while True:
            try:
                out = self._ensemble(x, list(neighbours), list(flows), tile)
                break
            except torch.OutOfMemoryError:
                if self.tile or not (self.chop_forward or self.auto_tile):
                    raise CLIError(f"out of {self.device.type} memory on a {width}x{height} "
                                   f"frame (tile {tile or 'none'}); use a smaller --tile, "
                                   "--chop_forward or a smaller --testBatchSize") from None
                smaller = max(MIN_TILE, (tile or max(height, width)) // 2)
                if smaller == tile:
                    raise CLIError(f"out of {self.device.type} memory even with "
                                   f"{MIN_TILE}x{MIN_TILE} tiles") from None
                print(f"note: out of memory with tile {tile or 'none'}, retrying with "
                      f"{smaller}", file=sys.stderr)
                tile = smaller
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        self.last_tile = tile
        if self.residual:
            out += bicubic.to(out.dtype)
        return out

    def _ensemble(self, x: torch.Tensor, neighbours: list[torch.Tensor],
                  flows: list[torch.Tensor], tile: int) -> torch.Tensor:
        out = None
        for sym in self.symmetries:
            sr = sym.invert(self._run(sym.image(x), [sym.image(n) for n in neighbours],
                                      [sym.flow(f) for f in flows], tile))
            out = sr if out is None else out.add_(sr)
        return out.div_(len(self.symmetries)) if len(self.symmetries) > 1 else out

    def _forward(self, x: torch.Tensor, neighbours: list[torch.Tensor],
                 flows: list[torch.Tensor]) -> torch.Tensor:
        def on_device(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.device, non_blocking=True).contiguous(
                memory_format=self.memory_format)

        dtype = PRECISIONS[self.precision]
        context = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None
                   else nullcontext())
        with context:
            out = self.model(on_device(x), [on_device(n) for n in neighbours],
                             [on_device(f) for f in flows])
        return out.float().cpu().contiguous()

    def _run(self, x: torch.Tensor, neighbours: list[torch.Tensor], flows: list[torch.Tensor],
             tile: int) -> torch.Tensor:
        if not tile:
            return self._forward(x, neighbours, flows)
        batch, _, height, width = x.shape
        s = self.scale
        canvas = torch.empty(batch, 3, height * s, width * s)
        for t in tiles(height, width, tile, self.tile_overlap):
            def cut(image: torch.Tensor, t: Tile = t) -> torch.Tensor:
                return image[..., t.pad_top:t.pad_bottom, t.pad_left:t.pad_right]

            sr = self._forward(cut(x), [cut(n) for n in neighbours], [cut(f) for f in flows])
            top, left = (t.top - t.pad_top) * s, (t.left - t.pad_left) * s
            canvas[..., t.top * s:t.bottom * s, t.left * s:t.right * s] = sr[
                ..., top:top + (t.bottom - t.top) * s, left:left + (t.right - t.left) * s]
        return canvas


def collate(samples: Sequence[tuple]) -> tuple:
    """Batch ``make_inputs`` results like the DataLoader's default collate: ``(x, neighbor,
    flow, bicubic)`` with lists of batched tensors (bicubic None when the samples have none)."""
    inputs, neighbours, flows, bicubics = zip(*samples, strict=True)
    return (torch.stack(inputs), [torch.stack(n) for n in zip(*neighbours, strict=True)],
            [torch.stack(f) for f in zip(*flows, strict=True)],
            None if bicubics[0] is None else torch.stack(bicubics))


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

