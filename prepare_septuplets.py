"""Cut videos into Vimeo-90K-style septuplets for training on your own footage.

    python prepare_septuplets.py clip.mp4 other.avi --output my_septuplets --test_fraction 0.1
    python prepare_septuplets.py photo.jpg --pans 8 --output my_septuplets   # still images

Writes ``<output>/sequences/<clip>/<NNNN>/im1.png..im7.png`` (default 448x256, like Vimeo-90K)
and ``sep_trainlist.txt`` (plus ``sep_testlist.txt`` with ``--test_fraction``), so training runs
with ``--data_dir <output>/sequences --file_list sep_trainlist.txt``. Each frame is scaled down
until it just covers the requested size, then cropped (centre, or random crops, the same box for
the seven frames of a window). Windows that span a scene cut are skipped. A still image (an
input named with an image suffix, IMAGE_SUFFIXES) gives ``--pans`` synthetic camera pans
instead: seven crops along a straight path with a random whole-pixel velocity (so no resampling
softens the frames; the x4 LR frames then move by quarter pixels), up to ``--pan_speed`` pixels
per frame. The result depends only on the inputs and ``--seed``. An input that cannot be used
(unreadable, smaller than ``--size``, under seven sampled frames) is skipped with a warning;
inputs after ``--max_septuplets`` is reached are not opened. The lists always name the finished
septuplets, also after an error or Ctrl-C. Vid4 is the standard test set: do not train on it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import sys
from collections.abc import Iterator, Sequence

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

import atomic
import cli
from video import reason as ffmpeg_reason

FRAMES = 7
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


class Unreadable(cli.CLIError):
    """An input that is no video or image at all (FFmpeg and Pillow cannot open it), told
    apart from one that is too small or too short: when every input is, that is the cause."""


def sampled_frames(path: str, size: tuple[int, int], stride: int) -> Iterator[Image.Image]:
    """Every ``stride``-th frame of a video, scaled down so that it just covers ``size``."""
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as err:
        raise Unreadable(f"{path}: cannot open the video ({ffmpeg_reason(err)})") from None
    with container:
        if not container.streams.video:
            raise Unreadable(f"{path}: no video stream")
        stream = container.streams.video[0]
        try:
            # the bar is closed however the loop ends (an error, or the caller stopping early)
            with tqdm(container.decode(stream), total=stream.frames or None,
                      desc=os.path.basename(path), unit="frame") as decoded:
                for index, frame in enumerate(decoded):
                    if index % stride:
                        continue
                    image = frame.to_image()
                    factor = max(size[0] / image.width, size[1] / image.height)
                    if factor > 1:
                        raise cli.CLIError(f"{path}: frames are {image.width}x{image.height}, "
                                           f"smaller than --size {size[0]}x{size[1]}")
                    scaled = (max(size[0], round(image.width * factor)),
                              max(size[1], round(image.height * factor)))
                    yield image.resize(scaled, Image.LANCZOS) if scaled != image.size else image
        except av.error.FFmpegError as err:
            raise cli.CLIError(f"{path}: cannot decode the video ({ffmpeg_reason(err)})") from None


def cut_score(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of small grey thumbnails, in [0, 1]; large at a scene cut."""
    small = [np.asarray(x.convert("L").resize((32, 18), Image.BILINEAR), np.float64)
             for x in (a, b)]
    return float(np.abs(small[0] - small[1]).mean() / 255.0)


def windows(frames: Iterator[Image.Image], step: int, cut: float) -> Iterator[list[Image.Image]]:
    """Windows of seven consecutive sampled frames, starting every ``step`` frames, without a
    scene cut inside (``cut`` = 0 turns the check off)."""
    buffer: list[tuple[Image.Image, bool]] = []  # (frame, a cut lies just before it)
    for index, frame in enumerate(frames):
        is_cut = bool(buffer) and cut > 0 and cut_score(buffer[-1][0], frame) > cut
        buffer = [*buffer[-(FRAMES - 1):], (frame, is_cut)]
        start = index - (FRAMES - 1)
        if start >= 0 and start % step == 0 and not any(c for _, c in buffer[1:]):
            yield [f for f, _ in buffer]


def crop_boxes(frame_size: tuple[int, int], size: tuple[int, int], mode: str, count: int,
               rng: random.Random) -> list[tuple[int, int, int, int]]:
    width, height = frame_size
    if mode == "centre":
        left, top = (width - size[0]) // 2, (height - size[1]) // 2
        return [(left, top, left + size[0], top + size[1])]
    boxes = []
    for _ in range(count):
        left, top = rng.randint(0, width - size[0]), rng.randint(0, height - size[1])
        boxes.append((left, top, left + size[0], top + size[1]))
    return boxes


def pan_window(image: Image.Image, size: tuple[int, int], max_speed: int,
               rng: random.Random) -> list[Image.Image]:
    """Seven ``size`` crops of a still image along a straight camera path whose velocity is a
    random whole number of pixels per frame (at most ``max_speed`` on each axis)."""
    room = (image.width - size[0], image.height - size[1])
    speed = [min(max_speed, r // (FRAMES - 1)) for r in room]
    velocity = [rng.randint(-v, v) for v in speed]
    start = []
    for r, v in zip(room, velocity, strict=True):
        span = abs(v) * (FRAMES - 1)
        start.append(rng.randint(0, r - span) + (span if v < 0 else 0))
    return [image.crop((start[0] + t * velocity[0], start[1] + t * velocity[1],
                        start[0] + t * velocity[0] + size[0], start[1] + t * velocity[1] + size[1]))
            for t in range(FRAMES)]


def still_septuplets(path: str, size: tuple[int, int], pans: int, max_speed: int,
                     rng: random.Random, max_side: int = 0) -> Iterator[list[Image.Image]]:
    """``pans`` synthetic camera pans over a still image, first scaled down (Lanczos) so that
    its longer side is at most ``max_side`` (0: as it is)."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError) as err:
        raise Unreadable(f"{path}: cannot read the image ({err})") from None
    if max_side and max(image.size) > max_side:
        factor = max_side / max(image.size)
        image = image.resize((round(image.width * factor), round(image.height * factor)),
                             Image.LANCZOS)
    if image.width < size[0] or image.height < size[1]:
        raise cli.CLIError(f"{path}: the image is {image.width}x{image.height}, smaller than "
                           f"--size {size[0]}x{size[1]}")
    for _ in range(pans):
        yield pan_window(image, size, max_speed, rng)


def video_septuplets(path: str, args: argparse.Namespace,
                     rng: random.Random) -> Iterator[list[Image.Image]]:
    """Windows of a video without a scene cut, each cut to one or more crop boxes. A video
    with fewer than seven sampled frames raises ``CLIError`` once it is read to the end."""
    sampled = 0

    def counted(frames: Iterator[Image.Image]) -> Iterator[Image.Image]:
        nonlocal sampled
        for frame in frames:
            sampled += 1
            yield frame

    frames = sampled_frames(path, args.size, args.frame_stride)
    with contextlib.closing(frames):
        for window in windows(counted(frames), args.window_step, args.scene_cut):
            for box in crop_boxes(window[0].size, args.size, args.crop, args.crops, rng):
                yield [frame.crop(box) for frame in window]
    if sampled < FRAMES:
        raise cli.CLIError(f"{path}: only {sampled} sampled frames (--frame_stride "
                           f"{args.frame_stride}), fewer than the {FRAMES} of a septuplet")


def clip_name(path: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(os.path.basename(path))[0]) or "clip"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def write_lists(output: str, made: list[list[str]],
                test_fraction: float) -> tuple[list[str], list[str]]:
    """Split each input's complete septuplets (``made``, one list per input) into training and
    test names and write ``sep_trainlist.txt`` (and ``sep_testlist.txt`` when it has any);
    nothing is written when no septuplet was made."""
    train: list[str] = []
    test: list[str] = []
    for names in made:
        held = int(round(len(names) * test_fraction))
        train += names[:len(names) - held]
        test += names[len(names) - held:]
    if train or test:
        for file_name, entries in (("sep_trainlist.txt", train), ("sep_testlist.txt", test)):
            if entries or file_name == "sep_trainlist.txt":
                atomic.write_text(os.path.join(output, file_name),
                                  "".join(f"{e}\n" for e in entries))
    return train, test


def make_septuplets(args: argparse.Namespace, clips: list[str], made: list[list[str]]) -> int:
    """Write the septuplets of every input in turn, appending each input's list of names to
    ``made`` and a name to it only once all seven frames are saved. An input that cannot be
    used (a ``CLIError`` while reading it) is skipped with a warning; once ``--max_septuplets``
    are written, the remaining inputs are not opened. Returns the number of inputs skipped as
    ``Unreadable``."""
    sequences = os.path.join(args.output, "sequences")
    rng, total, unreadable = random.Random(args.seed), 0, 0
    for video, clip in zip(args.videos, clips, strict=True):
        if args.max_septuplets and total >= args.max_septuplets:
            break
        names: list[str] = []
        made.append(names)
        septuplets = (still_septuplets(video, args.size, args.pans, args.pan_speed, rng,
                                        args.still_side)
                      if video.lower().endswith(IMAGE_SUFFIXES)
                      else video_septuplets(video, args, rng))
        with contextlib.closing(septuplets):
            while not (args.max_septuplets and total >= args.max_septuplets):
                try:
                    septuplet = next(septuplets, None)
                except cli.CLIError as err:
                    rest = "the rest of " if names else ""
                    print(f"warning: skipping {rest}{err}", file=sys.stderr)
                    unreadable += isinstance(err, Unreadable)
                    break
                if septuplet is None:
                    break
                name = f"{clip}/{len(names) + 1:04d}"
                folder = os.path.join(sequences, name)
                os.makedirs(folder)
                for i, frame in enumerate(septuplet, 1):
                    frame.save(os.path.join(folder, f"im{i}.png"))
                names.append(name)
                total += 1
    return unreadable


def why_none(unreadable: int, inputs: int) -> str:
    """Why no septuplet came out of ``inputs`` inputs, ``unreadable`` of them unreadable."""
    if unreadable == inputs:
        every = "the input is" if inputs == 1 else f"all {inputs} inputs are"
        return f"{every} unreadable as a video or an image (see the warnings above)"
    others = f" ({unreadable} of {inputs} inputs unreadable)" if unreadable else ""
    return (f"the videos are shorter than {FRAMES} sampled frames or every window spans a "
            f"scene cut{others}")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="+",
                        help="video files (anything PyAV/FFmpeg reads), or still images "
                             f"({', '.join(IMAGE_SUFFIXES)}) for --pans")
    parser.add_argument("--output", required=True, help="output folder (created)")
    parser.add_argument("--size", type=cli.parse_size, default=(448, 256),
                        help="septuplet frame size WIDTHxHEIGHT (default: 448x256, as Vimeo-90K)")
    parser.add_argument("--crop", choices=("centre", "random"), default="centre",
                        help="crop position in the scaled frame (default: centre)")
    parser.add_argument("--crops", type=int, default=1,
                        help="random crops per window (--crop random; default: 1)")
    parser.add_argument("--frame_stride", type=int, default=1,
                        help="use every N-th frame of the video (default: 1)")
    parser.add_argument("--window_step", type=int, default=FRAMES,
                        help="sampled frames between window starts (default: 7, no overlap)")
    parser.add_argument("--scene_cut", type=float, default=0.1,
                        help="skip windows where consecutive frames differ by more than this "
                             "mean absolute grey difference in [0, 1] (0: off; default: 0.1)")
    parser.add_argument("--max_septuplets", type=int, default=0,
                        help="stop after this many septuplets in all (0: no limit)")
    parser.add_argument("--test_fraction", type=float, default=0.0,
                        help="the last fraction of each clip's septuplets goes to "
                             "sep_testlist.txt instead of sep_trainlist.txt (default: 0)")
    parser.add_argument("--pans", type=int, default=8,
                        help="synthetic camera pans per still image (default: 8)")
    parser.add_argument("--pan_speed", type=int, default=6,
                        help="largest pan velocity, pixels per frame on each axis (default: 6)")
    parser.add_argument("--still_side", type=int, default=0,
                        help="scale still images down so that their longer side is at most "
                             "this many pixels before panning: a large photo's detail is then "
                             "as dense as a video frame's (0: no scaling; default: 0)")
    parser.add_argument("--seed", type=int, default=123,
                        help="random crops and pans (default: 123)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("crops", "frame_stride", "window_step", "pans"):
        if getattr(args, flag) < 1:
            raise cli.CLIError(f"--{flag} {getattr(args, flag)}: must be at least 1")
    if args.crop == "centre" and args.crops != 1:
        raise cli.CLIError("--crops > 1 needs --crop random")
    if not 0 <= args.test_fraction < 1 or args.max_septuplets < 0 or args.scene_cut < 0:
        raise cli.CLIError("--test_fraction must be in [0, 1); --max_septuplets, --scene_cut >= 0")
    if args.still_side < 0:
        raise cli.CLIError(f"--still_side {args.still_side}: must be 0 or more")
    if args.pan_speed < 0:
        raise cli.CLIError(f"--pan_speed {args.pan_speed}: must be 0 or more")
    for video in args.videos:
        if not os.path.isfile(video):
            raise cli.CLIError(f"{video}: file not found")
    sequences = os.path.join(args.output, "sequences")
    taken: set[str] = set()
    clips = [clip_name(video, taken) for video in args.videos]
    for clip in clips:
        if os.path.exists(os.path.join(sequences, clip)):
            raise cli.CLIError(f"{os.path.join(sequences, clip)}: exists; choose a new --output")
    made: list[list[str]] = []
    try:
        unreadable = make_septuplets(args, clips, made)
    finally:  # also on an error or Ctrl-C: list the septuplets that are complete
        train, test = write_lists(args.output, made, args.test_fraction)
    if not train and not test:
        raise cli.CLIError(f"no septuplet was written: {why_none(unreadable, len(args.videos))}")
    print(f"{args.output}: {len(train)} training and {len(test)} test septuplets")
    return 0


if __name__ == "__main__":
    cli.run_cli(main)
