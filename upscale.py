"""The inference core: a generator run on whole frames or in tiles, with self-ensemble.

``Upscaler`` runs an RBPN generator (``generator.run_generator``: the optional residual,
bf16/fp16 autocast) on batched LR frames, with tiling ("chop forward"): the LR frame, its
neighbours and their flows are cut into overlapping tiles, each tile is super-resolved on its
own and only its core (without the overlap) is kept. Flows are always computed on whole
frames and then cut, so tiling does not change the flow. Tiling switches itself on when a
whole frame would not fit in memory; ``memory.MemoryPlan`` then picks the tile side from
the free memory and a bytes-per-LR-pixel figure measured for the model's configuration.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

import generator
import memory
from cli import CLIError, ParameterError
from frames import Sample

T = TypeVar("T")


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
        retain_freed_memory: on the CPU, when whole frames fit the budget
            ``memory.RETAINED_GROWTH`` times over, have malloc keep freed memory
            (``memory.retain_freed_memory``, process wide): no page faults for every
            activation of every frame, 1.8x faster.
    """

    def __init__(self, model: nn.Module, *, scale: int, device: torch.device | str = "cpu",
                 residual: bool = False, precision: str = "fp32", tile: int = 0,
                 tile_overlap: int = 8, chop_forward: bool = False, auto_tile: bool = True,
                 max_memory: float | None = None, channels_last: bool = True,
                 self_ensemble: bool = False, retain_freed_memory: bool = False):
        generator.check_precision(precision)
        if tile < 0 or (0 < tile < memory.MIN_TILE):
            raise ParameterError("tile", tile, f"must be 0 (automatic) or at least "
                                 f"{memory.MIN_TILE}")
        if tile_overlap < 0:
            raise ParameterError("tile_overlap", tile_overlap, "must be 0 or more")
        if max_memory is not None and max_memory <= 0:
            raise ParameterError("max_memory", max_memory, "must be positive (bytes)")
        self.model = model
        self.scale = scale
        self.device = torch.device(device)
        self.residual = residual
        self.precision = precision
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.chop_forward = chop_forward or tile > 0
        self.auto_tile = auto_tile
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.symmetries = SYMMETRIES if self_ensemble else SYMMETRIES[:1]
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.memory = memory.MemoryPlan(
            model, device=self.device, scale=scale,
            dtype=generator.PRECISIONS[precision] or torch.float32, channels_last=channels_last,
            max_memory=max_memory, retain_freed_memory=retain_freed_memory)
        self.last_tile = 0  # the tile side used by the last call (0: whole frames)

    def plan_tile(self, batch: int, height: int, width: int, n_neighbours: int) -> int:
        """The LR tile side for frames of this size (0: whole frames)."""
        if self.tile:
            return 0 if self.tile >= max(height, width) else self.tile
        if not (self.chop_forward or self.auto_tile):
            return 0
        return self.memory.tile(batch, height, width, n_neighbours, self.tile_overlap)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, neighbours: Sequence[torch.Tensor],
                 flows: Sequence[torch.Tensor], bicubic: torch.Tensor | None = None,
                 tile: int | None = None) -> torch.Tensor:
        """Super-resolve a batch: x (B, 3, h, w), neighbours and flows lists of (B, 3, h, w) and
        (B, 2, h, w), bicubic (B, 3, h*s, w*s) for the residual. Returns float32 (B, 3, h*s,
        w*s) on the CPU, not clamped. ``tile`` imposes a tile side (0: whole frames) chosen
        earlier by ``plan_tile``, so that frames processed elsewhere or later (another process,
        a resumed run with another memory budget) are cut alike."""
        if self.residual and bicubic is None:
            raise ValueError("residual mode needs the bicubic upsampling")
        sample = Sample(input=x, target=None, neighbor=list(neighbours), flow=list(flows),
                        bicubic=bicubic if self.residual else None)
        batch, _, height, width = x.shape
        if tile is None:
            tile = self.plan_tile(batch, height, width, len(neighbours))
        while True:
            try:
                out = self._ensemble(sample, tile)
                break
            except torch.OutOfMemoryError:
                if self.tile or not (self.chop_forward or self.auto_tile):
                    raise CLIError(f"out of {self.device.type} memory on a {width}x{height} "
                                   f"frame (tile {tile or 'none'}); use a smaller tile (--tile), "
                                   "chop_forward (--chop_forward) or a smaller batch "
                                   "(--testBatchSize)") from None
                smaller = max(memory.MIN_TILE, (tile or max(height, width)) // 2)
                if smaller == tile:
                    raise CLIError(f"out of {self.device.type} memory even with "
                                   f"{memory.MIN_TILE}x{memory.MIN_TILE} tiles") from None
                print(f"note: out of memory with tile {tile or 'none'}, retrying with "
                      f"{smaller}", file=sys.stderr)
                tile = smaller
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        self.last_tile = tile
        return out

    def _ensemble(self, sample: Sample, tile: int) -> torch.Tensor:
        out = None
        for sym in self.symmetries:
            moved = Sample(input=sym.image(sample.input), target=None,
                           neighbor=[sym.image(n) for n in sample.neighbor],
                           flow=[sym.flow(f) for f in sample.flow],
                           bicubic=None if sample.bicubic is None else sym.image(sample.bicubic))
            sr = sym.invert(self._run(moved, tile))
            out = sr if out is None else out.add_(sr)
        return out.div_(len(self.symmetries)) if len(self.symmetries) > 1 else out

    def _forward(self, sample: Sample) -> torch.Tensor:
        def on_device(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(self.device, non_blocking=True).contiguous(
                memory_format=self.memory_format)

        moved = Sample(input=on_device(sample.input), target=None,
                       neighbor=[on_device(n) for n in sample.neighbor],
                       flow=[on_device(f) for f in sample.flow],
                       # only added to the output: no copy into the model's memory format
                       bicubic=None if sample.bicubic is None else sample.bicubic.to(self.device))
        out = generator.run_generator(self.model, moved, self.residual, self.precision)
        return out.cpu().contiguous()

    def _run(self, sample: Sample, tile: int) -> torch.Tensor:
        if not tile:
            return self._forward(sample)
        batch, _, height, width = sample.input.shape
        s = self.scale
        canvas = torch.empty(batch, 3, height * s, width * s)
        for t in tiles(height, width, tile, self.tile_overlap):
            def cut(image: torch.Tensor | None, t: Tile = t, s: int = 1) -> torch.Tensor | None:
                return None if image is None else image[
                    ..., t.pad_top * s:t.pad_bottom * s, t.pad_left * s:t.pad_right * s]

            sr = self._forward(Sample(input=cut(sample.input), target=None,
                                      neighbor=[cut(n) for n in sample.neighbor],
                                      flow=[cut(f) for f in sample.flow],
                                      bicubic=cut(sample.bicubic, s=s)))
            top, left = (t.top - t.pad_top) * s, (t.left - t.pad_left) * s
            canvas[..., t.top * s:t.bottom * s, t.left * s:t.right * s] = sr[
                ..., top:top + (t.bottom - t.top) * s, left:left + (t.right - t.left) * s]
        return canvas
