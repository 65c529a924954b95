"""Video upscaling speed and memory: frames/s on a 180x144 clip x4, peak memory on 1080p.

    python bench/bench_upscale.py                        # bundled compact weights, CPU fp32 and
                                                         # bf16 (and CUDA when present), then one
                                                         # 1920x1080 frame with automatic tiling
    python bench/bench_upscale.py --config full          # a randomly initialised full-size RBPN
    python bench/bench_upscale.py --config compact       # ... or one of the compact size
    python bench/bench_upscale.py --config tiny --frames 3 --hd_size 96x64   # smoke test

Speed: the first ``--frames`` frames of the bundled clip (bigbuckbunny.mp4), resized to 180x144
with PIL bicubic (Vid4's LR size), each with its six neighbours. Reported per frame: pyflow
time for the six flows (iSeeBetter's parameters, in threads), model time (``Upscaler``, whole
frames, after one warm-up frame), and the end-to-end rate of ``iSeeBetterTest.py --video``
(decode, flows, model, H.264 encode) run on an mp4 of those frames. Each device/precision runs
in a process of its own.

Memory: one 1920x1080 LR frame (-> 7680x4320 at x4) through ``Upscaler`` with the automatic
tile size (the memory budget is half the available RAM, or ``--max_memory`` GiB), in a fresh
process; reported: the peak resident set size of the process (``ru_maxrss``, everything
included), its growth during the frame, the budget and the tile chosen; on CUDA also
``torch.cuda.max_memory_allocated``. The flows are zeros there unless ``--hd_flows`` (pyflow
on a 1080p frame is slow, and its memory is not the model's).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cli  # noqa: E402
import iSeeBetterTest  # noqa: E402

CONFIGS = {
    "full": {"base_filter": 256, "feat": 64, "n_resblock": 5, "nFrames": 7},
    "compact": {"base_filter": 32, "feat": 16, "n_resblock": 1, "nFrames": 7},
    "tiny": {"base_filter": 8, "feat": 8, "n_resblock": 1, "nFrames": 7},
}
DEFAULT_MODEL = ROOT / iSeeBetterTest.DEFAULT_MODEL


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", type=Path, nargs="+", default=[DEFAULT_MODEL],
                   help="generator weights, several to compare them side by side (default: "
                        "the bundled default weights)")
    p.add_argument("--config", choices=sorted(CONFIGS),
                   help="use a randomly initialised model of this size instead of --model")
    p.add_argument("--frames", type=int, default=10,
                   help="frames timed per configuration (default: %(default)s)")
    p.add_argument("--size", type=cli.parse_size, default=(180, 144), metavar="WxH",
                   help="LR clip size (default: 180x144)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                   choices=("fp32", "bf16", "fp16", "auto"),
                   help="default: fp32 bf16; auto is what iSeeBetterTest.py picks by default "
                        "for the device, and is shown as what it picked")
    p.add_argument("--devices", nargs="+", default=None, choices=("cpu", "cuda"),
                   help="default: cpu, and cuda when available")
    p.add_argument("--hd_size", type=cli.parse_size, default=(1920, 1080), metavar="WxH",
                   help="LR frame size of the memory test (default: 1920x1080)")
    cli.add_bool_flag(p, "--channels_last", default=True, help="NHWC memory format")
    cli.add_bool_flag(p, "--hd", default=True, help="run the memory test")
    cli.add_bool_flag(p, "--hd_flows", default=False,
                      help="compute real pyflow flows for the memory test (slow)")
    cli.add_bool_flag(p, "--end_to_end", default=True,
                      help="also time iSeeBetterTest.py --video on the clip")
    p.add_argument("--max_memory", type=float, default=None, metavar="GiB",
                   help="memory budget of the memory test (default: automatic)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------------------------
# Child processes (one measurement each, so memory figures are their own)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_net(job: dict):
    import torch

    import generator
    import rbpn

    if job["config"]:
        torch.manual_seed(0)
        config = rbpn.ModelConfig(**CONFIGS[job["config"]], scale_factor=4)
        return config.build().eval(), config
    return generator.load_generator(job["model"])


def clip_frames(size: tuple[int, int], count: int):
    """``count`` frames of the bundled clip resized to ``size`` (PIL bicubic), as uint8 arrays."""
    import numpy as np
    from PIL import Image

    import video

    frames = []
    with video.VideoReader(iSeeBetterTest.bundled_clip(), max_frames=count) as reader:
        for frame in reader:
            frames.append(np.asarray(Image.fromarray(frame.image).resize(size, Image.BICUBIC)))
    return frames


def child_speed(job: dict) -> dict:
    import torch

    import frames
    import upscale

    device = torch.device(job["device"])
    net, config = load_net(job)
    net = net.to(device)
    offsets = frames.neighbour_offsets(config.nFrames, True)
    lr_frames = [frames.make_lr_frame(f, 4, False, index=i)
                 for i, f in enumerate(clip_frames(tuple(job["size"]), job["frames"] + 1))]
    windows = list(frames.frame_windows(lr_frames, offsets))
    flow_seconds, inputs = [], []
    for target, neighbours in windows:
        tick = time.perf_counter()
        inputs.append(frames.make_sample(target, neighbours, 4, bicubic=False))
        flow_seconds.append(time.perf_counter() - tick)
    upscaler = upscale.Upscaler(net, scale=4, device=device, precision=job["precision"],
                                auto_tile=False, channels_last=job["channels_last"])

    def forward(sample) -> None:
        batch = frames.collate([sample])
        upscaler(batch.input, batch.neighbor, batch.flow)
        if device.type == "cuda":
            torch.cuda.synchronize()

    forward(inputs[0])  # warm-up: allocator, oneDNN/cuDNN kernel selection
    tick = time.perf_counter()
    for sample in inputs[1:]:
        forward(sample)
    model_seconds = (time.perf_counter() - tick) / (len(inputs) - 1)
    return {"kind": "speed", "device": job["device"], "precision": job["precision"],
            "size": job["size"], "frames": len(inputs) - 1,
            "flow_s_per_frame": sum(flow_seconds[1:]) / (len(flow_seconds) - 1),
            "model_s_per_frame": model_seconds, "model_fps": 1 / model_seconds,
            "torch_threads": torch.get_num_threads()}


def child_memory(job: dict) -> dict:
    import numpy as np
    import torch

    import frames
    import upscale

    device = torch.device(job["device"])
    net, config = load_net(job)
    net = net.to(device)
    n = config.nFrames - 1
    width, height = job["hd_size"]
    if job["hd_flows"]:
        lr_frames = [frames.make_lr_frame(f, 4, False, index=i) for i, f in
                     enumerate(clip_frames((width, height), n + 1))]
        batch = frames.collate([frames.make_sample(lr_frames[n // 2], [
            lr_frames[i] for i in range(n + 1) if i != n // 2], 4, bicubic=False)])
        x, nbs, fls = batch.input, batch.neighbor, batch.flow
    else:
        rng = np.random.default_rng(0)
        image = torch.from_numpy(rng.random((1, 3, height, width), dtype=np.float32))
        x, nbs, fls = image, [image] * n, [torch.zeros(1, 2, height, width)] * n
    max_memory = None if job["max_memory"] is None else job["max_memory"] * 2**30
    upscaler = upscale.Upscaler(net, scale=4, device=device, precision=job["precision"],
                                max_memory=max_memory, tile_overlap=job["tile_overlap"],
                                channels_last=job["channels_last"], retain_freed_memory=True)
    budget = upscaler.memory.budget()
    per_pixel, _ = upscaler.memory.per_pixel(n)
    before = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tick = time.perf_counter()
    out = upscaler(x, nbs, fls)
    seconds = time.perf_counter() - tick
    result = {"kind": "memory", "device": job["device"], "precision": job["precision"],
              "hd_size": job["hd_size"], "output": list(out.shape[-2:][::-1]),
              "tile": upscaler.last_tile, "tile_overlap": job["tile_overlap"],
              "budget_gib": budget / 2**30, "estimate_kib_per_lr_pixel": per_pixel / 1024,
              "rss_before_gib": before / 2**30, "peak_rss_gib": peak_rss_bytes() / 2**30,
              "rss_growth_gib": (peak_rss_bytes() - before) / 2**30, "seconds": seconds,
              "flows": "pyflow" if job["hd_flows"] else "zeros"}
    if device.type == "cuda":
        result["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def run_child(job: dict, script: str = __file__, what: str | None = None) -> dict:
    """One measurement in a fresh process (clean peak RSS, no warm caches): ``script --child
    JOB``, whose last stdout line is the JSON result; ``what`` names the job if it fails."""
    done = subprocess.run([sys.executable, script, "--child", json.dumps(job)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        what = what or (f"benchmark child {job['kind']} {job.get('device')} "
                        f"{job.get('precision')}")
        raise cli.CLIError(f"{what} failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# End to end through the script


def end_to_end(job: dict, workdir: Path) -> dict:
    """``iSeeBetterTest.py --video`` on an mp4 of the clip; its own frames/s figure."""
    import checkpoint
    import video

    frames = clip_frames(tuple(job["size"]), job["frames"])
    source = workdir / "clip.mp4"
    writer = video.VideoWriter(source, *job["size"], Fraction(25), Fraction(1, 25), crf=10)
    for i, frame in enumerate(frames):
        writer.write(frame, i)
    writer.close()
    model = Path(job["model"])
    if job["config"]:
        net, _ = load_net(job)
        model = workdir / "model.pth"
        checkpoint.save_weights(net.state_dict(), model)
    done = subprocess.run([sys.executable, str(ROOT / "iSeeBetterTest.py"), "--video",
                           str(source), "-m", str(model), "-o", str(workdir / "out.mp4"),
                           "--precision", job["precision"], "--channels_last",
                           str(job["channels_last"]), "--gpu_mode",
                           str(job["device"] == "cuda")], capture_output=True, text=True)
    if done.returncode != 0:
        raise cli.CLIError(f"iSeeBetterTest.py failed: {done.stderr.strip().splitlines()[-1]}")
    rate = re.search(r"\(([\d.]+) frames/s\)", done.stdout)
    return {"kind": "end_to_end", "device": job["device"], "precision": job["precision"],
            "size": job["size"], "frames": job["frames"], "fps": float(rate[1])}


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(child_speed(job) if job["kind"] == "speed" else child_memory(job)))
        return 0
    import torch

    import generator

    missing = [str(m) for m in args.model if not m.is_file()]
    if args.config is None and missing:
        raise cli.CLIError(f"--model {missing[0]}: not found (use --config full or --config "
                           "tiny for a random model)")
    if args.frames < 2:
        raise cli.CLIError("--frames must be at least 2 (one warm-up frame, then timed ones)")
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        raise cli.CLIError("--devices cuda: no CUDA device found")
    # every (device, precision) resolved before any row, so an unusable one fails up front
    precisions = {(device, asked): generator.choose_precision(asked, device).precision
                  for device in devices for asked in args.precisions}
    models = [None] if args.config else args.model
    names = [f"config {args.config} (random weights)"] if args.config else [m.name for m in models]
    bases = [{"model": str(model), "config": args.config, "size": list(args.size),
              "frames": args.frames, "channels_last": args.channels_last} for model in models]
    print(f"models: {', '.join(names)}; clip {args.size[0]}x{args.size[1]} x4; "
          f"{'channels_last' if args.channels_last else 'NCHW'}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    results = []
    print("\n| model | device | precision | flows s/frame | model s/frame | model frames/s | "
          "end-to-end frames/s |\n|---|---|---|---|---|---|---|")
    for base, name in zip(bases, names, strict=True):
        for device in devices:
            for asked in args.precisions:
                precision = precisions[device, asked]
                shown = f"auto: {precision}" if asked == "auto" else precision
                speed = run_child({**base, "kind": "speed", "device": device,
                                   "precision": precision})
                results.append({**speed, "model": name, "asked": asked})
                e2e = "-"
                if args.end_to_end:
                    with tempfile.TemporaryDirectory() as tmp:
                        row = end_to_end({**base, "device": device, "precision": precision},
                                         Path(tmp))
                    results.append({**row, "model": name, "asked": asked})
                    e2e = f"{row['fps']:.3f}"
                print(f"| {name} | {device} | {shown} | {speed['flow_s_per_frame']:.3f} | "
                      f"{speed['model_s_per_frame']:.3f} | {speed['model_fps']:.3f} | {e2e} |",
                      flush=True)
    if args.hd:
        print("\n| model | device | precision | LR frame | tile (overlap) | budget GiB | "
              "peak RSS GiB | RSS growth GiB | CUDA peak GiB | seconds |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
        for base, name in zip(bases, names, strict=True):
            for device in devices:
                precision = precisions[device, args.precisions[0]]
                memory = run_child({**base, "kind": "memory", "device": device,
                                    "precision": precision, "hd_size": list(args.hd_size),
                                    "hd_flows": args.hd_flows, "max_memory": args.max_memory,
                                    "tile_overlap": 8})
                results.append({**memory, "model": name})
                cuda = f"{memory['cuda_peak_gib']:.2f}" if "cuda_peak_gib" in memory else "-"
                print(f"| {name} | {device} | {precision} | {args.hd_size[0]}x{args.hd_size[1]} "
                      f"| {memory['tile'] or 'none'} ({memory['tile_overlap']}) | "
                      f"{memory['budget_gib']:.2f} | {memory['peak_rss_gib']:.2f} | "
                      f"{memory['rss_growth_gib']:.2f} | {cuda} | {memory['seconds']:.1f} |",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    cli.run_cli(main, flags={"precision": "precisions"})
