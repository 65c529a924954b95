"""Training and test samples for RBPN / iSeeBetter, made exactly as the original code makes them.

A sample is built from one target frame and its ``nFrames - 1`` neighbours:

* HR frames are cropped to a multiple of the scale ("modcrop") and downscaled with PIL bicubic;
* training crops a random LR patch (and the matching HR patch), then augments every frame the
  same way (top-bottom flip, left-right flip, 180 degree rotation, each with p = 0.5);
* ``optical_flow`` computes the flow from the LR target to each LR neighbour (pyflow with
  iSeeBetter's parameters, in parallel threads), after cropping and augmenting;
* ``bicubic`` is the LR target upscaled back with PIL bicubic.

A sample is a ``frames.Sample`` (``input, target, neighbor, flow, bicubic``); reading and
resizing frames is ``frames``'s work, the flow ``optical_flow``'s: this module decides which
frames, which patch and which augmentation make each sample.

Two layouts are read: Vimeo-90K septuplets (``<data_dir>/<clip>/<seq>/im1.png..im7.png``, the
list names ``<clip>/<seq>``) and "other datasets" such as Vid4 (the list names numbered frames
``calendar/001.png``; a neighbour beyond either end of the clip is replaced by the target).

Bad data raises :class:`DataError` naming the file and the problem; with ``skip_bad=True`` the
sample is replaced by the next good one and counted (``dataset.skipped``, shared by DataLoader
workers). Greyscale, palette, RGBA and 16-bit images are converted to 8-bit RGB.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data as data
from PIL import Image

import optical_flow
from cli import ParameterError
from frames import (
    SCALES,
    DataError,
    Sample,
    check_nframes,
    downscale,
    modcrop,
    neighbour_offsets,
    read_rgb,
    to_tensor,
    upscale,
)

VIMEO_FRAMES = 7  # im1.png .. im7.png
_NUMBERED = re.compile(r"^(.*?)(\d+)$")
# LR pixels of context for a bicubic patch: PIL's bicubic kernel reaches 2 LR pixels, so with
# 3 the patch is bit-identical to the same crop of the whole downscaled frame (tested).
_BICUBIC_MARGIN = 3


class BadSampleWarning(UserWarning):
    """A sample was skipped because of bad data (``skip_bad=True``)."""


# ---------------------------------------------------------------------------------------------
# Which frames make a sample


def vimeo_frames(seq_dir: str, nFrames: int, future_frame: bool) -> tuple[str, list[str]]:
    """Target and neighbour paths of a septuplet: im4 in the middle, or im<nFrames> (past)."""
    target = VIMEO_FRAMES // 2 + 1 if future_frame else nFrames
    names = [target + offset for offset in neighbour_offsets(nFrames, future_frame)]
    return (os.path.join(seq_dir, f"im{target}.png"),
            [os.path.join(seq_dir, f"im{j}.png") for j in names])


def numbered_frames(frame_path: str, nFrames: int,
                    future_frame: bool) -> tuple[str, list[str | None]]:
    """Target and neighbour paths of a numbered frame (``calendar/002.png``).

    A neighbour that does not exist (before the first or after the last frame) is ``None``: the
    original substitutes the LR target itself. Numbers keep the target's zero padding.
    """
    stem, suffix = os.path.splitext(frame_path)
    match = _NUMBERED.match(stem)
    if match is None:
        raise DataError(f"{frame_path}: an --other_dataset list entry must be a frame file whose "
                        "name ends in its frame number, e.g. calendar/001.png")
    prefix, digits = match.groups()
    neighbours: list[str | None] = []
    for offset in neighbour_offsets(nFrames, future_frame):
        number = int(digits) + offset
        path = f"{prefix}{number:0{len(digits)}d}{suffix}" if number >= 0 else None
        neighbours.append(path if path is not None and os.path.exists(path) else None)
    return frame_path, neighbours


# ---------------------------------------------------------------------------------------------
# Patches and augmentation (the original's order of random draws, so seeds give its patches)


@dataclass(frozen=True)
class Patch:
    """An LR crop box.

    Args:
        left: first column, in LR pixels.
        top: first row, in LR pixels.
        size: side of the square, in LR pixels.
    """

    left: int
    top: int
    size: int


def random_patch(lr_size: tuple[int, int], patch_size: int, rng=random) -> Patch:
    """A random LR patch position; the row is drawn before the column, as in the original.

    ``rng`` is a ``random.Random`` or the ``random`` module itself (the original's generator,
    which DataLoader seeds in every worker).
    """
    width, height = lr_size
    top = rng.randrange(0, height - patch_size + 1)
    left = rng.randrange(0, width - patch_size + 1)
    return Patch(left, top, patch_size)


def centre_patch(lr_size: tuple[int, int], patch_size: int) -> Patch:
    """The LR patch in the middle of the frame (deterministic, for evaluation)."""
    width, height = lr_size
    return Patch((width - patch_size) // 2, (height - patch_size) // 2, patch_size)


def crop(image: Image.Image, patch: Patch, scale: int = 1) -> Image.Image:
    """Crop ``patch`` (LR coordinates) from an image ``scale`` times larger than the LR frame."""
    left, top, size = patch.left * scale, patch.top * scale, patch.size * scale
    return image.crop((left, top, left + size, top + size))


@dataclass(frozen=True)
class Augment:
    """Which of the three transforms to apply (in this order).

    Args:
        flip_tb: top-bottom flip (the original's ``ImageOps.flip``).
        flip_lr: left-right flip (``ImageOps.mirror``).
        rot180: rotation by 180 degrees.
    """

    flip_tb: bool = False
    flip_lr: bool = False
    rot180: bool = False


def random_augment(rng=random) -> Augment:
    """Three independent coin flips (three draws, always, like the original)."""
    return Augment(rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5)


def augment_image(image: Image.Image, aug: Augment) -> Image.Image:
    """Apply ``aug`` to a PIL image (the original's ImageOps.flip / mirror / rotate(180))."""
    if aug.flip_tb:
        image = image.transpose(Image.FLIP_TOP_BOTTOM)
    if aug.flip_lr:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if aug.rot180:
        image = image.transpose(Image.ROTATE_180)
    return image


def augment_flow(flow: np.ndarray, aug: Augment) -> np.ndarray:
    """Apply ``aug`` to a (2, H, W) flow [u, v]: mirroring an axis also negates that component."""
    if aug.flip_tb:
        flow = flow[:, ::-1, :] * np.array([1, -1], flow.dtype)[:, None, None]
    if aug.flip_lr:
        flow = flow[:, :, ::-1] * np.array([-1, 1], flow.dtype)[:, None, None]
    if aug.rot180:
        flow = -flow[:, ::-1, ::-1]
    return np.ascontiguousarray(flow)


# ---------------------------------------------------------------------------------------------
# The datasets


def _read_list(data_dir: str, file_list: str) -> tuple[str, list[str]]:
    """Find the file list and read its non-blank entries.

    Looked up as the original did (inside ``data_dir``), then as given (absolute or relative to
    the working folder), then beside ``data_dir`` (Vimeo-90K keeps ``sep_trainlist.txt`` next to
    ``sequences/``).
    """
    candidates = [os.path.join(data_dir, file_list), file_list,
                  os.path.join(os.path.dirname(os.path.normpath(data_dir)), file_list)]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
        raise ParameterError("file_list", file_list, f"not found (looked for "
                             f"{', '.join(dict.fromkeys(candidates))})")
    try:
        with open(found, encoding="utf-8") as handle:
            entries = [line.strip() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{found}: cannot read the file list ({err})") from None
    if not entries:
        raise DataError(f"{found}: the file list is empty")
    return found, entries


class SkipCounter:
    """A count shared by every process that holds a copy, whatever the DataLoader's start
    method: each ``add`` appends one byte to a small temporary file (appends are atomic), and
    the count is the file's size. The file is removed with the creating process's object."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="iseebetter-skipped-", suffix=".count")
        os.close(fd)
        weakref.finalize(self, _remove_if_owner, self.path, os.getpid())

    def add(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)

    @property
    def value(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0


def _remove_if_owner(path: str, owner: int) -> None:
    if os.getpid() == owner:  # forked DataLoader workers share the object, not the file's life
        try:
            os.remove(path)
        except OSError:
            pass


class DatasetFromFolder(data.Dataset):
    """``frames.Sample``s for training, evaluation or testing.

    Args:
        image_dir: the data folder (``vimeo_septuplet/sequences``, ``Vid4``, ...).
        nFrames: frames per sample, target included (odd with future frames).
        upscale_factor: 2, 4 or 8.
        data_augmentation: random flips and 180 degree rotation, the same for every frame.
        file_list: list of septuplet folders or (``other_dataset``) frame files.
        other_dataset: numbered-frame layout (Vid4) instead of Vimeo-90K septuplets.
        patch_size: LR patch side; 0 keeps the whole frame.
        future_frame: neighbours on both sides of the target (else only past frames).
        upscale_only: the frames are the LR input as they are; ``target`` is ``torch.zeros(0)``.
        flow_cache: folder of the flow cache (None: flows computed for every sample).
        skip_bad: replace a sample with bad data by the next good one, with a warning, and count
            it in ``skipped`` instead of raising :class:`DataError`.
        patch_position: ``"random"`` (training) or ``"centre"`` (deterministic evaluation).
    """

    def __init__(self, image_dir: str, nFrames: int, upscale_factor: int,
                 data_augmentation: bool, file_list: str, other_dataset: bool, patch_size: int,
                 future_frame: bool, upscale_only: bool = False, flow_cache: str | None = None,
                 skip_bad: bool = False, patch_position: str = "random") -> None:
        super().__init__()
        check_nframes(nFrames, future_frame, None if other_dataset else VIMEO_FRAMES)
        if upscale_factor not in SCALES:
            raise ParameterError("upscale_factor", upscale_factor, f"must be one of {SCALES}")
        if patch_size < 0:
            raise ParameterError("patch_size", patch_size, "must be 0 (whole frame) or positive")
        if patch_position not in ("random", "centre"):
            raise ParameterError("patch_position", patch_position, "must be 'random' or 'centre'")
        if not os.path.isdir(image_dir):
            raise ParameterError("image_dir", image_dir, "folder not found")
        self.data_dir = image_dir
        self.list_path, entries = _read_list(image_dir, file_list)
        self.entries = [os.path.join(image_dir, e) for e in entries]
        self.nFrames = nFrames
        self.upscale_factor = upscale_factor
        self.data_augmentation = data_augmentation
        self.other_dataset = other_dataset
        self.patch_size = patch_size
        self.future_frame = future_frame
        self.upscale_only = upscale_only
        self.patch_position = patch_position
        self.flow_cache = optical_flow.FlowCache(flow_cache) if flow_cache else None
        self.skip_bad = skip_bad
        self._skipped = SkipCounter() if skip_bad else None
        self._bad: set[int] = set()  # per process: known-bad indices are not read again
        self.image_filenames = [self._target_path(e) for e in self.entries]
        if not skip_bad:
            self._check_frames_exist(neighbours=False)

    # -- public helpers ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def skipped(self) -> int:
        """How many times a bad sample was replaced, summed over all DataLoader workers."""
        return self._skipped.value if self._skipped is not None else 0

    def sample_name(self, index: int) -> str:
        """The target frame's path relative to the data folder, e.g. ``calendar/002.png``."""
        path = self.image_filenames[index]
        rel = os.path.relpath(path, self.data_dir)
        if rel.startswith(os.pardir):
            rel = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
        return rel.replace(os.sep, "/")

    def frame_paths(self, index: int) -> tuple[str, list[str | None]]:
        """The target frame and its neighbours (None: replaced by the target) for a sample."""
        entry = self.entries[index]
        if self.other_dataset:
            return numbered_frames(entry, self.nFrames, self.future_frame)
        target, neighbours = vimeo_frames(entry, self.nFrames, self.future_frame)
        return target, list(neighbours)

    # -- loading -------------------------------------------------------------------------------

    def __getitem__(self, index: int):
        if not self.skip_bad:
            return self.load_sample(index)
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            if candidate in self._bad:
                self._skipped.add()
                continue
            try:
                return self.load_sample(candidate)
            except DataError as err:
                self._bad.add(candidate)
                self._skipped.add()
                warnings.warn(f"skipping bad sample {candidate}: {err}", BadSampleWarning,
                              stacklevel=2)
        raise DataError(f"{self.list_path}: every sample is bad ({len(self)} tried)")

    def load_sample(self, index: int) -> Sample:
        """Build sample ``index``; raises :class:`DataError` on bad data (no skipping)."""
        target_path, neighbour_paths = self.frame_paths(index)
        target, frames = self._read_frames(target_path, neighbour_paths)
        scale = 1 if self.upscale_only else self.upscale_factor
        lr_size = (target.width // scale, target.height // scale)
        if self.patch_size and min(lr_size) < self.patch_size:
            raise DataError(f"{target_path}: LR frame {_wh(lr_size)} is smaller than "
                            f"--patch_size {self.patch_size}")
        patch = None
        if self.patch_size:  # drawn before the augmentation, as in the original
            patch = (centre_patch(lr_size, self.patch_size) if self.patch_position == "centre"
                     else random_patch(lr_size, self.patch_size))
        full_flows = self._cached_flows(target_path, neighbour_paths, target, frames, lr_size)

        lr = self._lr(target, patch, lr_size)
        neighbours = [lr if f is None else self._lr(f, patch, lr_size) for f in frames]
        hr = None
        if not self.upscale_only:
            hr = crop(target, patch, scale) if patch is not None else target
        aug = random_augment() if self.data_augmentation else Augment()
        lr, neighbours = augment_image(lr, aug), [augment_image(n, aug) for n in neighbours]
        hr = augment_image(hr, aug) if hr is not None else None

        if full_flows is None:
            flows = optical_flow.compute_flows(lr, neighbours)
        else:
            if patch is not None:
                box = np.s_[:, patch.top:patch.top + patch.size, patch.left:patch.left + patch.size]
                full_flows = [f[box] for f in full_flows]
            flows = [augment_flow(f, aug) for f in full_flows]

        bicubic = upscale(lr, self.upscale_factor)
        return Sample(input=to_tensor(lr),
                      target=to_tensor(hr) if hr is not None else torch.zeros(0),
                      neighbor=[to_tensor(n) for n in neighbours],
                      flow=[torch.from_numpy(f) for f in flows], bicubic=to_tensor(bicubic))

    def _read_frames(self, target_path: str, neighbour_paths: Sequence[str | None]):
        """The target and neighbour frames (None: replaced by the target), size-checked and,
        unless ``upscale_only``, modcropped HR frames."""
        target = read_rgb(target_path)
        frames = []
        for path in neighbour_paths:
            frame = read_rgb(path) if path is not None else None
            if frame is not None and frame.size != target.size:
                raise DataError(f"{path}: frame size {_wh(frame.size)} differs from "
                                f"{_wh(target.size)} of {target_path} in the same sample")
            frames.append(frame)
        if self.upscale_only:
            return target, frames
        scale = self.upscale_factor
        if min(target.size) < scale:
            raise DataError(f"{target_path}: frame {_wh(target.size)} is smaller than the scale "
                            f"factor {scale}")
        return modcrop(target, scale), [f if f is None else modcrop(f, scale) for f in frames]

    def _lr(self, frame: Image.Image, patch: Patch | None, lr_size: tuple[int, int]):
        """The LR frame, or just its ``patch``: bicubic of the HR patch plus a margin, which is
        bit-identical to cropping the bicubic of the whole frame (PIL's bicubic reaches 2 LR
        pixels) and several times cheaper."""
        if self.upscale_only:
            return crop(frame, patch) if patch is not None else frame
        scale = self.upscale_factor
        if patch is None:
            return downscale(frame, scale)
        left, top = max(patch.left - _BICUBIC_MARGIN, 0), max(patch.top - _BICUBIC_MARGIN, 0)
        right = min(patch.left + patch.size + _BICUBIC_MARGIN, lr_size[0])
        bottom = min(patch.top + patch.size + _BICUBIC_MARGIN, lr_size[1])
        region = downscale(frame.crop((left * scale, top * scale, right * scale, bottom * scale)),
                           scale)
        return crop(region, Patch(patch.left - left, patch.top - top, patch.size))

    def _cached_flows(self, target_path, neighbour_paths, target, frames, lr_size):
        """Full-frame flows from the cache (computing and storing the missing ones), or None
        without a cache."""
        if self.flow_cache is None:
            return None

        def lr_frames(missing: list[int]):
            lr = self._lr(target, None, lr_size)
            return lr, [lr if frames[i] is None else self._lr(frames[i], None, lr_size)
                        for i in missing]

        return self.flow_cache.flows(target_path, neighbour_paths, lr_size, self.upscale_factor,
                                     self.upscale_only, lr_frames)

    def _target_path(self, entry: str) -> str:
        if self.other_dataset:
            if _NUMBERED.match(os.path.splitext(entry)[0]) is None:
                numbered_frames(entry, self.nFrames, self.future_frame)  # raises the message
            return entry
        return vimeo_frames(entry, self.nFrames, self.future_frame)[0]

    def _check_frames_exist(self, neighbours: bool) -> None:
        """The targets exist, and with ``neighbours`` (test sets, whose runs print partial
        results) the Vimeo-90K neighbours too; a missing numbered neighbour is replaced by the
        target. Training finds a missing neighbour when it loads the sample, where
        ``skip_bad`` can skip it."""
        wanted = list(self.image_filenames)
        if neighbours and not self.other_dataset:
            wanted = []
            for entry in self.entries:
                target, neighbours = vimeo_frames(entry, self.nFrames, self.future_frame)
                wanted += [target, *neighbours]
        missing = [p for p in wanted if not os.path.isfile(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"{missing[0]}: missing frame, listed in {self.list_path}{more}")


class DatasetFromFolderTest(DatasetFromFolder):
    """Whole-frame samples in list order, without augmentation (the original's test set).

    Args:
        image_dir: the data folder.
        nFrames: frames per sample, target included.
        upscale_factor: 2, 4 or 8.
        file_list: list of septuplet folders or (``other_dataset``) frame files.
        other_dataset: numbered-frame layout (Vid4) instead of Vimeo-90K septuplets.
        future_frame: neighbours on both sides of the target (else only past frames).
        upscale_only: the frames are the LR input as they are (no ground truth).
        flow_cache: folder of the flow cache, or None.
    """

    def __init__(self, image_dir: str, nFrames: int, upscale_factor: int, file_list: str,
                 other_dataset: bool, future_frame: bool, upscale_only: bool = False,
                 flow_cache: str | None = None) -> None:
        super().__init__(image_dir, nFrames, upscale_factor, data_augmentation=False,
                         file_list=file_list, other_dataset=other_dataset, patch_size=0,
                         future_frame=future_frame, upscale_only=upscale_only,
                         flow_cache=flow_cache)
        self._check_frames_exist(neighbours=True)  # before any frame is upscaled


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
