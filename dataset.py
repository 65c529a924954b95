"""Training and test samples for RBPN / iSeeBetter, made exactly as the original code makes them.

A sample is built from one target frame and its ``nFrames - 1`` neighbours:

* HR frames are cropped to a multiple of the scale ("modcrop") and downscaled with PIL bicubic;
* training crops a random LR patch (and the matching HR patch), then augments every frame the
  same way (top-bottom flip, left-right flip, 180 degree rotation, each with p = 0.5);
* pyflow computes the flow from the LR target to each LR neighbour (in parallel threads), after
  cropping and augmenting, with iSeeBetter's parameters;
* ``bicubic`` is the LR target upscaled back with PIL bicubic.

Two layouts are read: Vimeo-90K septuplets (``<data_dir>/<clip>/<seq>/im1.png..im7.png``, the
list names ``<clip>/<seq>``) and "other datasets" such as Vid4 (the list names numbered frames
``calendar/001.png``; a neighbour beyond either end of the clip is replaced by the target).

Bad data raises :class:`DataError` naming the file and the problem; with ``skip_bad=True`` the
sample is replaced by the next good one and counted (``dataset.skipped``, shared by DataLoader
workers). Greyscale, palette, RGBA and 16-bit images are converted to 8-bit RGB.
"""

from __future__ import annotations

import hashlib
import json
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

import cli

SCALES = (2, 4, 8)
VIMEO_FRAMES = 7  # im1.png .. im7.png
_CACHE_VERSION = 1
_NUMBERED = re.compile(r"^(.*?)(\d+)$")
# LR pixels of context for a bicubic patch: PIL's bicubic kernel reaches 2 LR pixels, so with
# 3 the patch is bit-identical to the same crop of the whole downscaled frame (tested).
_BICUBIC_MARGIN = 3


class DataError(cli.CLIError):
    """Bad training or test data: a missing, unreadable or ill-sized file, or a bad file list."""


class BadSampleWarning(UserWarning):
    """A sample was skipped because of bad data (``skip_bad=True``)."""


# ---------------------------------------------------------------------------------------------
# Reading frames


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
# Which frames make a sample


def check_nframes(nFrames: int, future_frame: bool, other_dataset: bool) -> None:
    """Refuse frame counts the layout cannot supply (a clear ``--nFrames`` error)."""
    if nFrames < 2:
        raise cli.CLIError(f"--nFrames {nFrames}: need at least 2 frames "
                           "(a target and a neighbour)")
    if future_frame and nFrames % 2 == 0:
        raise cli.CLIError(f"--nFrames {nFrames}: with future frames the count must be odd "
                           "(the target in the middle), e.g. 3, 5 or 7")
    if not other_dataset and nFrames > VIMEO_FRAMES:
        raise cli.CLIError(f"--nFrames {nFrames}: a Vimeo-90K septuplet has only "
                           f"{VIMEO_FRAMES} frames")


def neighbour_offsets(nFrames: int, future_frame: bool) -> list[int]:
    """Frame offsets of the neighbours from the target, in the original's order."""
    half = nFrames // 2
    if future_frame:
        return [x for x in range(-half, half + 1) if x != 0]
    return [-i for i in range(1, nFrames)]  # nearest first


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
# Optical flow


def _pyflow():
    import pyflow  # lazily: the dataset module must import without the compiled extension

    return pyflow


def flow_params() -> dict:
    """iSeeBetter's pyflow parameters (alpha 0.012, ratio 0.75, minWidth 20, 7, 1, 30, RGB)."""
    return dict(_pyflow().ISEEBETTER_PARAMS)


def _as_flow_input(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def compute_flows(target: Image.Image, neighbours: Sequence[Image.Image],
                  threads: int | None = None) -> list[np.ndarray]:
    """pyflow from the LR target to each neighbour, as float32 (2, H, W) arrays [u, v]."""
    if not neighbours:
        return []
    pyflow = _pyflow()
    results = pyflow.coarse2fine_flows(
        _as_flow_input(target), [_as_flow_input(n) for n in neighbours],
        max_workers=threads or len(neighbours), **pyflow.ISEEBETTER_PARAMS)
    return [np.stack([u, v]).astype(np.float32) for u, v, _ in results]


class FlowCache:
    """Full-frame LR flows on disk, computed once and reused across epochs.

    An entry is keyed by both frames (real path, size and modification time), the LR size, the
    scale, how the LR frame was made and the pyflow parameters, so an edited frame or a changed
    setting never reuses a stale flow. Entries are written atomically (temporary file and
    ``os.replace``), so concurrent DataLoader workers and killed runs never leave a torn entry;
    an unreadable entry is recomputed.

    Args:
        root: the cache folder (created when missing).
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as err:
            raise cli.CLIError(f"--flow_cache {root}: cannot create the folder ({err})") from None
        if not os.access(self.root, os.W_OK):
            raise cli.CLIError(f"--flow_cache {root}: the folder is not writable")

    def key(self, target: str, neighbour: str | None, lr_size: tuple[int, int], scale: int,
            upscale_only: bool, params: dict) -> str:
        """A hex digest naming the flow from ``target`` to ``neighbour`` (None: the target)."""
        fields = {"version": _CACHE_VERSION, "target": _file_id(target),
                  "neighbour": _file_id(neighbour or target), "lr_size": list(lr_size),
                  "scale": scale, "upscale_only": upscale_only, "params": params}
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
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    np.save(handle, flow, allow_pickle=False)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as err:
            warnings.warn(f"flow cache: could not write {path} ({err})", stacklevel=2)


def _file_id(path: str) -> list:
    stat = os.stat(path)
    return [os.path.realpath(path), stat.st_size, stat.st_mtime_ns]


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
        raise DataError(f"--file_list {file_list}: not found (looked for "
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
    """Samples ``(input, target, neighbor, flow, bicubic)`` for training, evaluation or testing.

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
        flow_threads: threads computing one sample's flows (None: one per neighbour).
    """

    def __init__(self, image_dir: str, nFrames: int, upscale_factor: int,
                 data_augmentation: bool, file_list: str, other_dataset: bool, patch_size: int,
                 future_frame: bool, upscale_only: bool = False, flow_cache: str | None = None,
                 skip_bad: bool = False, patch_position: str = "random",
                 flow_threads: int | None = None) -> None:
        super().__init__()
        check_nframes(nFrames, future_frame, other_dataset)
        if upscale_factor not in SCALES:
            raise cli.CLIError(f"--upscale_factor {upscale_factor}: must be one of {SCALES}")
        if patch_size < 0:
            raise cli.CLIError(f"--patch_size {patch_size}: must be 0 (whole frame) or positive")
        if patch_position not in ("random", "centre"):
            raise ValueError(f"patch_position must be 'random' or 'centre', not {patch_position!r}")
        if not os.path.isdir(image_dir):
            raise DataError(f"--data_dir {image_dir}: folder not found")
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
        self.flow_threads = flow_threads
        self.flow_cache = FlowCache(flow_cache) if flow_cache else None
        self.skip_bad = skip_bad
        self._skipped = SkipCounter() if skip_bad else None
        self._bad: set[int] = set()  # per process: known-bad indices are not read again
        self.image_filenames = [self._target_path(e) for e in self.entries]
        if not skip_bad:
            self._check_targets_exist()

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

    def load_sample(self, index: int):
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
            flows = compute_flows(lr, neighbours, self.flow_threads)
        else:
            if patch is not None:
                box = np.s_[:, patch.top:patch.top + patch.size, patch.left:patch.left + patch.size]
                full_flows = [f[box] for f in full_flows]
            flows = [augment_flow(f, aug) for f in full_flows]

        bicubic = upscale(lr, self.upscale_factor)
        return (to_tensor(lr), to_tensor(hr) if hr is not None else torch.zeros(0),
                [to_tensor(n) for n in neighbours], [torch.from_numpy(f) for f in flows],
                to_tensor(bicubic))

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
        params = flow_params()
        keys = [self.flow_cache.key(target_path, p, lr_size, self.upscale_factor,
                                    self.upscale_only, params) for p in neighbour_paths]
        flows = [self.flow_cache.load(k, (lr_size[1], lr_size[0])) for k in keys]
        missing = [i for i, f in enumerate(flows) if f is None]
        if missing:
            lr = self._lr(target, None, lr_size)
            others = [lr if frames[i] is None else self._lr(frames[i], None, lr_size)
                      for i in missing]
            for i, flow in zip(missing, compute_flows(lr, others, self.flow_threads),
                               strict=True):
                self.flow_cache.store(keys[i], flow)
                flows[i] = flow
        return flows

    def _target_path(self, entry: str) -> str:
        if self.other_dataset:
            if _NUMBERED.match(os.path.splitext(entry)[0]) is None:
                numbered_frames(entry, self.nFrames, self.future_frame)  # raises the message
            return entry
        return vimeo_frames(entry, self.nFrames, self.future_frame)[0]

    def _check_targets_exist(self) -> None:
        missing = [p for p in self.image_filenames if not os.path.isfile(p)]
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


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
