"""Memory: how much a forward pass needs, how much there is, and the tile that fits.

The estimate is measured, not guessed: the model is run on the meta device (no data, no time)
at two sizes while the live tensor storages are counted, which gives bytes per LR pixel and
fixed bytes; a measured overhead factor covers what the count cannot see (oneDNN's layout
copies, the CUDA caching allocator). The budget is a share of the available memory, or the
user's. ``MemoryPlan.tile`` turns both into a tile side (0: whole frames fit).

On the CPU, ``retain_freed_memory`` trades a higher peak for speed (see there); the plan asks
for it only when whole frames fit the budget ``RETAINED_GROWTH`` times over.
"""

from __future__ import annotations

import copy
import ctypes
import math
import os
import weakref

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from cli import CLIError

# Peak process memory growth over the bytes of live tensors, measured in fresh processes
# running RBPN on the CPU: NCHW 1.87x (tiny model) and 1.45x (full), where oneDNN copies every
# activation to its blocked layout and back; channels_last 1.05x (compact) and 1.17x (full).
# On CUDA the caching allocator's fragmentation and cuDNN workspaces (not measured here).
MEMORY_OVERHEAD = {("cpu", False): 2.0, ("cpu", True): 1.3, ("cuda", False): 1.5,
                   ("cuda", True): 1.5}
MIN_TILE = 16
# Peak RSS growth when glibc keeps freed memory (``retain_freed_memory``) over the plain
# estimate: the 320x180 demo peaked at 3.2 GiB instead of 2.0 (estimate 1.09 GiB), a tiled
# 1080p frame at 12.3 GiB instead of 5.3; retention is used only where this much fits.
RETAINED_GROWTH = 3.0


# ---------------------------------------------------------------------------------------------
# What a forward pass needs


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


# ---------------------------------------------------------------------------------------------
# What there is


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


# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
_retaining = False


def retain_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    PyTorch's CPU allocator frees each activation after its layer. With glibc's defaults the
    large ones are mmap'd and unmapped every time, and the next frame faults the same pages in
    again: 52 of the 8-frame demo's 117 CPU-seconds were spent in the kernel, and it ran 1.8x
    faster with this. The price is a higher peak (freed blocks that do not fit the next request
    stay mapped), so ``MemoryPlan`` only asks for it when the budget has room. Returns whether
    it is in effect: not where malloc is not glibc's, nor when the user set MALLOC_*_ or
    GLIBC_TUNABLES themselves. Process-wide and not undone.
    """
    global _retaining
    if _retaining or any(name in os.environ for name in _MALLOC_SETTINGS):
        return _retaining
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = 2**31 - 1  # the largest value an int parameter takes: never trim, never mmap
    _retaining = bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(
        mallopt(_M_TRIM_THRESHOLD, limit))
    return _retaining


def freed_memory_retained() -> bool:
    """Whether ``retain_freed_memory`` is in effect in this process."""
    return _retaining


# ---------------------------------------------------------------------------------------------
# The tile that fits


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
        raise CLIError(f"not enough memory for a {MIN_TILE}x{MIN_TILE} tile with a tile overlap "
                       f"of {overlap} ({budget / 2**30:.2f} GiB budget, "
                       f"{per_pixel / 1024:.0f} KiB per LR pixel); lower the tile overlap "
                       "(--tile_overlap) or the batch (--testBatchSize), or raise the budget "
                       "(--max_memory)")
    return min(tile, max(height, width))


class MemoryPlan:
    """The memory side of running a model on frames: its estimate, the budget, the tile.

    Args:
        model: the generator, called as ``model(x, neighbours, flows)``.
        device: where it runs.
        scale: its upscaling factor (the output canvas is counted on the CPU).
        dtype: the activations' type (bf16/fp16 under autocast).
        channels_last: whether the model runs in NHWC (its measured overhead is lower).
        max_memory: bytes a forward pass may use (None: half of the available RAM on the CPU,
            80% of the free memory on a GPU).
        retain_freed_memory: on the CPU, switch ``retain_freed_memory`` on when whole frames
            fit the budget ``RETAINED_GROWTH`` times over.
    """

    def __init__(self, model: nn.Module, *, device: torch.device, scale: int,
                 dtype: torch.dtype = torch.float32, channels_last: bool = True,
                 max_memory: float | None = None, retain_freed_memory: bool = False):
        self.model, self.device, self.scale, self.dtype = model, device, scale, dtype
        self.channels_last = channels_last
        self.max_memory = max_memory
        self.retain_freed_memory = retain_freed_memory and device.type == "cpu"
        self._estimate: dict[int, tuple[float, float]] = {}
        self._plans: dict[tuple[int, ...], int] = {}

    def budget(self) -> float:
        """Bytes a forward pass may use."""
        if self.max_memory is not None:
            return self.max_memory
        fraction = 0.8 if self.device.type == "cuda" else 0.5
        return fraction * available_memory(self.device)

    def per_pixel(self, n_neighbours: int) -> tuple[float, float]:
        """Estimated peak bytes of one forward pass on the device: (per LR pixel of the input,
        fixed), overhead included."""
        if n_neighbours not in self._estimate:
            per_pixel, fixed = bytes_per_lr_pixel(self.model, n_neighbours, self.dtype)
            overhead = MEMORY_OVERHEAD.get((self.device.type, self.channels_last), 2.0)
            # Plus the copies of the float32 inputs (target, neighbours, flows) in the model's
            # memory format and of the output.
            per_pixel = overhead * per_pixel + 4 * (3 + 5 * n_neighbours + 3 * self.scale**2)
            self._estimate[n_neighbours] = (per_pixel, overhead * fixed)
        return self._estimate[n_neighbours]

    def tile(self, batch: int, height: int, width: int, n_neighbours: int, overlap: int) -> int:
        """The LR tile side for frames of this size (0: whole frames), decided once per size so
        that every frame of a video is processed the same way."""
        key = (batch, height, width, n_neighbours, overlap)
        if key not in self._plans:
            per_pixel, fixed = self.per_pixel(n_neighbours)
            budget = self.budget()
            if self.device.type == "cpu":  # the output canvas shares the RAM with the model
                budget -= batch * 3 * height * width * self.scale**2 * 4
            if freed_memory_retained():
                per_pixel, fixed = RETAINED_GROWTH * per_pixel, RETAINED_GROWTH * fixed
            elif (self.retain_freed_memory and RETAINED_GROWTH * batch
                  * (per_pixel * height * width + fixed) <= budget):
                retain_freed_memory()
            self._plans[key] = choose_tile(height, width, batch, per_pixel, fixed, budget,
                                           overlap)
        return self._plans[key]
