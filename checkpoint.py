"""Reading and writing weights: the one checkpoint loader every script uses.

Accepts the original's files (a raw ``state_dict`` such as ``RBPN_4x.pth`` or
``netG_epoch_4_1.pth``, also with DataParallel's ``module.`` prefix), ``.safetensors`` files
and our training state. Files from outside are untrusted: ``torch.load`` runs with
``weights_only=True`` only, so a checkpoint cannot execute code. Every problem becomes one
``CheckpointError`` line naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

import cli
import rbpn
from base_networks import projection_kernel

TRAIN_STATE_FORMAT = "iseebetter-train-state"
TRAIN_STATE_VERSION = 1
# Containers other tools wrap a generator's state_dict in (ours: "netG"; BasicSR: "params_ema",
# "params"; many scripts: "state_dict", "model"), tried in this order.
_WRAPPER_KEYS = ("netG", "params_ema", "params", "state_dict", "model")
# Prefixes added by DataParallel / DistributedDataParallel and by torch.compile.
_PREFIXES = ("module.", "_orig_mod.")
_KERNEL_TO_SCALE = {projection_kernel(s)[0]: s for s in (2, 4, 8)}


class CheckpointError(cli.CLIError):
    """A weights file that cannot be read or does not fit the model (one line, names the file)."""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a weights file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")


def _load_error(path: Path, err: Exception) -> CheckpointError:
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        detail = f"it refers to {found.group(1)}" if found else "it uses unsupported pickle code"
        return CheckpointError(
            f"{path}: refusing to load: the file holds Python objects other than tensors "
            f"({detail}); weights are read with torch.load(weights_only=True), so a file "
            f"cannot run code. Re-save it as a plain state_dict of tensors")
    first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return CheckpointError(f"{path}: not a readable PyTorch or safetensors checkpoint "
                           f"(truncated, corrupt or another format: {first_line[:160]})")


def load_object(path: str | os.PathLike) -> object:
    """The object stored in a ``.pth``/``.pt`` file (``torch.load(weights_only=True)``, on the
    CPU) or the tensors of a ``.safetensors`` file; ``CheckpointError`` when unreadable."""
    path = Path(path)
    _check_file(path)
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from err
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu")
        with warnings.catch_warnings():
            # Plain pickles (protocol > 2) make torch warn before it rejects or loads them.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch/safetensors raise many types on bad files
        raise _load_error(path, err) from err


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state_dict without DataParallel's ``module.`` (and torch.compile's ``_orig_mod.``)."""
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def _as_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """``obj`` checked to be a mapping of names to tensors, prefixes stripped."""
    if not isinstance(obj, Mapping) or not obj:
        kind = "an empty mapping" if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{source}: not a state_dict (found {kind})")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: not a state_dict of tensors (entry {key!r} is "
                                  f"{type(value).__name__})")
    return strip_prefixes(obj)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The generator weights in ``path``: a raw state_dict (the original format), a
    DataParallel/DDP one (``module.`` stripped), a ``.safetensors`` file, or our training state
    (its ``"netG"``). Raises ``CheckpointError`` for anything else."""
    obj = load_object(path)
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        if obj.get("format") == TRAIN_STATE_FORMAT:
            obj = obj.get("netG")
        else:
            obj = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), obj)
    return _as_state_dict(obj, str(path))


def load_training_state(path: str | os.PathLike) -> dict:
    """A training state written by ``iSeeBetterTrain.py`` (see ``TRAIN_STATE_FORMAT``)."""
    obj = load_object(path)
    if not isinstance(obj, dict) or obj.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path}: not an iSeeBetter training state (a weights file goes to "
                              f"--pretrained_sr or --model, a training state to --resume)")
    version = obj.get("version")
    if not isinstance(version, int) or version > TRAIN_STATE_VERSION:
        raise CheckpointError(f"{path}: training state version {version!r} is not supported "
                              f"(this code reads version {TRAIN_STATE_VERSION} and older)")
    return obj


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    if key not in state_dict:
        some = ", ".join(list(state_dict)[:3])
        raise CheckpointError(f"not an RBPN generator: no {key!r} (its keys start {some}, ...)")
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"not an RBPN generator: {key} has shape {shape}")
    return shape


def infer_rbpn_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The ``rbpn.Net`` constructor arguments that produce tensors of these shapes.

    Raises ``CheckpointError`` when the tensors are not an RBPN's or fit no valid
    configuration (e.g. a projection kernel that matches no scale).
    """
    sd = strip_prefixes(state_dict)
    base_filter, num_channels = _shape(sd, "feat0.conv.weight", 4)[:2]
    feat = _shape(sd, "DBPN.feat1.conv.weight", 4)[0]
    fused = _shape(sd, "DBPN.output.conv.weight", 4)[1]
    kernel = _shape(sd, "DBPN.up1.up_conv1.deconv.weight", 4)[2]
    out_channels, hr_channels = _shape(sd, "output.conv.weight", 4)[:2]
    if kernel not in _KERNEL_TO_SCALE:
        known = ", ".join(f"x{s}: {k}" for k, s in _KERNEL_TO_SCALE.items())
        raise CheckpointError(f"not a valid RBPN: projection kernel {kernel}x{kernel} fits no "
                              f"scale ({known})")
    consistent = (fused == 3 * feat and hr_channels % feat == 0 and hr_channels >= feat
                  and out_channels == num_channels)
    if not consistent:
        raise CheckpointError(f"not a valid RBPN: inconsistent shapes (feat {feat}, DBPN fusion "
                              f"{fused} channels, output {out_channels}x{hr_channels})")
    n_resblock = 0
    while f"res_feat1.{n_resblock}.conv1.weight" in sd:
        n_resblock += 1
    return {"num_channels": num_channels, "base_filter": base_filter, "feat": feat,
            "num_stages": 3, "n_resblock": n_resblock, "nFrames": hr_channels // feat + 1,
            "scale_factor": _KERNEL_TO_SCALE[kernel]}


def _summary(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names) - limit} more)" if len(names) > limit else shown


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor],
              what: str = "generator") -> None:
    """Load ``state_dict`` into ``module`` strictly (``module.`` prefixes stripped).

    All problems (missing keys, unexpected keys, shape mismatches) are reported together in
    one ``CheckpointError`` starting with ``what``; the module is left untouched then.
    """
    sd = _as_state_dict(state_dict, what)
    own = module.state_dict()
    # BatchNorm fills a missing counter itself (checkpoints from torch < 0.4.1 lack it).
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys: {_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys: {_summary(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shapes differ (checkpoint vs model): "
                        f"{_summary(mismatched, 3)}")
    if problems:
        hint = ""
        if isinstance(module, rbpn.Net):
            try:
                hint = f" (the weights are an RBPN with {_describe(infer_rbpn_config(sd))})"
            except CheckpointError:
                hint = " (the weights are not an RBPN generator's)"
        raise CheckpointError(f"{what}: the weights do not fit the model{hint}: "
                              + "; ".join(problems))
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{what}: {str(err).strip().splitlines()[-1]}") from err


def _describe(config: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def load_generator(path: str | os.PathLike,
                   device: str | torch.device = "cpu") -> tuple[rbpn.Net, dict[str, int]]:
    """An ``rbpn.Net`` in eval mode with the weights of ``path``, its configuration inferred
    from the tensor shapes (so any RBPN checkpoint runs without extra flags)."""
    sd = load_state_dict(path)
    try:
        config = infer_rbpn_config(sd)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    net = rbpn.Net(**config, init="kaiming")  # the init is overwritten by the weights
    load_into(net, sd, what=str(path))
    return net.to(device).eval(), config


def model_card_path(weights: str | os.PathLike) -> Path:
    """The model card beside a weights file: ``weights/x.pth`` -> ``weights/x.json``."""
    return Path(weights).with_suffix(".json")


def read_model_card(weights: str | os.PathLike) -> dict:
    """The JSON model card of a weights file, or ``{}`` when there is none.

    A plain ``state_dict`` cannot say how the model was trained; the card does (e.g.
    ``"residual": true`` for a generator trained with ``--residual``), so the scripts can
    use a shipped model correctly without extra flags.
    """
    path = model_card_path(weights)
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable model card ({err})") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"{path}: a model card must be a JSON object")
    if not isinstance(card.get("residual", False), bool):
        raise CheckpointError(f"{path}: \"residual\" must be true or false")
    return card


def write_model_card(weights: str | os.PathLike, card: Mapping[str, object]) -> None:
    """Write the model card beside ``weights`` atomically (values that JSON lacks, such as
    paths, are written as strings)."""
    text = json.dumps(card, indent=2, default=str) + "\n"
    _atomic_write(model_card_path(weights), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: a crash or a full disk
    never leaves a half-written ``path`` (an existing one stays intact)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    if path.parent.exists() and not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: {path.parent} is not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically (see ``_atomic_write``)."""
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Save weights atomically: safetensors when ``path`` ends in ``.safetensors``, otherwise
    ``torch.save`` of a plain dict of CPU tensors (the original's format, which its code and
    ours both load)."""
    tensors = {k: v.detach().cpu() for k, v in strip_prefixes(state_dict).items()}
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save_file
        # safetensors refuses views and tensors sharing storage: give each its own memory.
        tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
        _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    else:
        atomic_torch_save(tensors, path)
