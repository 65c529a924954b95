"""Frames and the samples made of them: the one home of the picture work that training,
evaluation and video upscaling share.

* reading a frame file as 8-bit RGB, modcrop, PIL bicubic down- and upscaling, tensors;
* which neighbours a target frame has (``neighbour_offsets``) and, for a stream of frames,
  each frame with its neighbours (``frame_windows``);
* ``Sample``: the model's inputs for one target frame, by name, as the datasets return them
  and as the DataLoader batches them; ``make_sample`` builds one from decoded frames.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from PIL import Image

import optical_flow
from cli import CLIError, ParameterError

T = TypeVar("T")
SCALES = (2, 4, 8)


class DataError(CLIError):
    """Bad training or test data: a missing, unreadable or ill-sized file, or a bad file list."""


class Sample(NamedTuple):
    """The model's inputs for one target frame (or, batched, for several), by the original's
    names. Tensors are float32 in [0, 1]; ``h, w`` is the LR size and ``s`` the scale.

    Args:
        input: the LR target frame (3, h, w).
        target: the HR ground truth (3, h*s, w*s); ``torch.zeros(0)`` without one (a dataset
            with ``upscale_only``), None for decoded video frames (``make_sample``).
        neighbor: the LR neighbours, ``nFrames - 1`` tensors (3, h, w).
        flow: the optical flow from the target to each neighbour, (2, h, w) [u, v].
        bicubic: the target's PIL bicubic upsampling (3, h*s, w*s), or None when not needed.
    """

    input: torch.Tensor
    target: torch.Tensor | None
    neighbor: list[torch.Tensor]
    flow: list[torch.Tensor]
    bicubic: torch.Tensor | None


# ---------------------------------------------------------------------------------------------
# One frame


def read_rgb(path: str) -> Image.Image:
    """Decode an image file fully into an 8-bit RGB PIL image.

    Greyscale, palette and alpha images are converted with PIL (alpha is dropped, as the
    original's ``convert('RGB')`` does); 16-bit greyscale is scaled to 8 bits (x / 257,
    rounded) instead of being clipped; 32-bit integer and float images are refused.
    Raises :class:`DataError` naming the file for a missing, unreadable or truncated image.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: missing frame")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file must fail here, not later
            return _to_rgb8(image, path)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
        raise DataError(f"{path}: unreadable or truncated image ({err})") from None


def _to_rgb8(image: Image.Image, path: str) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode.startswith("I;16"):
        grey = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.round(grey / 257.0).astype(np.uint8)).convert("RGB")
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        raise DataError(f"{path}: {image.mode} images ({'float' if image.mode == 'F' else '32-bit'}"
                        " samples) are not supported; save the frames as 8- or 16-bit PNG")
    return image.convert("RGB")


def modcrop(image: Image.Image, modulo: int) -> Image.Image:
    """Crop the right and bottom edges so that both sides are multiples of ``modulo``."""
    width, height = image.size
    return image.crop((0, 0, width - width % modulo, height - height % modulo))


def downscale(image: Image.Image, scale: int) -> Image.Image:
    """PIL bicubic downscale by an integer factor (the original's LR frames)."""
    width, height = image.size
    return image.resize((int(width / scale), int(height / scale)), Image.BICUBIC)


def upscale(image: Image.Image, scale: int) -> Image.Image:
    """PIL bicubic upscale by an integer factor (the original's ``bicubic`` input)."""
    width, height = image.size
    return image.resize((width * scale, height * scale), Image.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float32 (3, H, W) tensor in [0, 1], like torchvision's ToTensor.

    The same float32 division as ToTensor's ``div(255)``, done in NumPy: torch's kernel on the
    permuted uint8 view is ~40x slower and this runs seven times per sample.
    """
    chw = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    return torch.from_numpy(chw.astype(np.float32) / np.float32(255))


# ---------------------------------------------------------------------------------------------
# Neighbours


def check_nframes(nFrames: int, future_frame: bool, max_frames: int | None = None) -> None:
    """Refuse frame counts that no sample can have (``ParameterError`` naming ``nFrames``).

    Args:
        nFrames: frames per sample, the target included.
        future_frame: neighbours on both sides (the count must then be odd).
        max_frames: the most frames a sample of the layout has (a Vimeo septuplet: 7).
    """
    if nFrames < 2:
        raise ParameterError("nFrames", nFrames, "need at least 2 frames (a target and a "
                             "neighbour)")
    if future_frame and nFrames % 2 == 0:
        raise ParameterError("nFrames", nFrames, "with future frames the count must be odd "
                             "(the target in the middle), e.g. 3, 5 or 7")
    if max_frames is not None and nFrames > max_frames:
        raise ParameterError("nFrames", nFrames, f"a Vimeo-90K septuplet has only {max_frames} "
                             "frames")


def neighbour_offsets(nFrames: int, future_frame: bool) -> list[int]:
    """Frame offsets of the neighbours from the target, in the original's order."""
    half = nFrames // 2
    if future_frame:
        return [x for x in range(-half, half + 1) if x != 0]
    return [-i for i in range(1, nFrames)]  # nearest first


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


# ---------------------------------------------------------------------------------------------
# Decoded video frames


@dataclass
class LRFrame:
    """A decoded frame ready for the model.

    Args:
        lr: the LR frame (the model input).
        hr: the ground truth (``downscale_first``), or None.
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
        raise DataError(f"a {picture.width}x{picture.height} frame is too small to downscale by "
                        f"{scale}")
    hr = modcrop(picture, scale)
    return LRFrame(downscale(hr, scale), hr, pts, index)


def make_sample(target: LRFrame, neighbours: Sequence[LRFrame], scale: int,
                flow_threads: int | None = None, bicubic: bool = True) -> Sample:
    """The model inputs for one decoded frame and its neighbours (``frame_windows``): the
    flows to them, and the bicubic upsampling unless ``bicubic`` is False. ``target`` stays
    None: video mode scores against ``LRFrame.hr`` as it is, so no HR tensor is made."""
    flows = optical_flow.flows_to(target.lr, [n.lr for n in neighbours], flow_threads)
    return Sample(input=to_tensor(target.lr),
                  target=None,
                  neighbor=[to_tensor(n.lr) for n in neighbours],
                  flow=[torch.from_numpy(f) for f in flows],
                  bicubic=to_tensor(upscale(target.lr, scale)) if bicubic else None)


def collate(samples: Sequence[Sample]) -> Sample:
    """Batch samples like the DataLoader's default collate, keeping absent (None) fields."""
    def stack(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
        return None if tensors[0] is None else torch.stack(list(tensors))

    return Sample(input=stack([s.input for s in samples]),
                  target=stack([s.target for s in samples]),
                  neighbor=[torch.stack(n) for n in zip(*(s.neighbor for s in samples),
                                                        strict=True)],
                  flow=[torch.stack(f) for f in zip(*(s.flow for s in samples), strict=True)],
                  bicubic=stack([s.bicubic for s in samples]))


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
