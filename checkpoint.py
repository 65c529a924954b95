"""Reading and writing weights: the one checkpoint loader every script uses.

Accepts the original's files (a raw ``state_dict`` such as ``RBPN_4x.pth`` or
``netG_epoch_4_1.pth``, also with DataParallel's ``module.`` prefix), ``.safetensors`` files
and our training state. Files from outside are untrusted: ``torch.load`` runs with
``weights_only=True`` only, so a checkpoint cannot execute code. Every problem becomes one
``CheckpointError`` line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

import atomic
import cli

TRAIN_STATE_FORMAT = "iseebetter-train-state"
TRAIN_STATE_VERSION = 1
# Containers other tools wrap a generator's state_dict in (ours: "netG"; BasicSR: "params_ema",
# "params"; many scripts: "state_dict", "model"), tried in this order.
_WRAPPER_KEYS = ("netG", "params_ema", "params", "state_dict", "model")
# Prefixes added by DataParallel / DistributedDataParallel and by torch.compile.
_PREFIXES = ("module.", "_orig_mod.")
# What a weights file is called; the first is what a model card's weights are usually in.
WEIGHTS_SUFFIXES = (".pth", ".safetensors", ".pt")


class CheckpointError(cli.CLIError):
    """A weights file that cannot be read or does not fit the model (one line, names the file)."""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file ({snapshots_beside(path)})")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a weights file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if path.suffix.lower() == ".json":  # torch would call it a pickle with an unknown opcode
        weights = next((w for w in map(path.with_suffix, WEIGHTS_SUFFIXES) if w.is_file()),
                       path.with_suffix(".pth"))
        there = "" if weights.is_file() else " (not there)"
        raise CheckpointError(f"{path}: a model card (JSON), not weights; the weights beside it: "
                              f"{weights}{there}")


def _natural_key(name: str) -> list:
    """``netG_epoch_4_20`` after ``netG_epoch_4_3``: numbers compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", name)]


def snapshots_beside(path: str | os.PathLike, limit: int = 4) -> str:
    """What the folder of a missing weights file holds, for its error message: the weights
    files there, highest numbers first (a mistyped epoch is the usual slip), or that the folder
    does not exist."""
    folder = Path(path).parent
    where = "the current folder" if str(folder) == "." else str(folder)
    if not folder.is_dir():
        return f"{where} does not exist"
    found = sorted((p.name for p in folder.iterdir()
                    if p.suffix.lower() in WEIGHTS_SUFFIXES and p.is_file()),
                   key=_natural_key, reverse=True)
    if not found:
        return f"{where} has no weights files ({', '.join(WEIGHTS_SUFFIXES)})"
    more = f", ... {len(found) - limit} more" if len(found) > limit else ""
    return (f"{where} has {len(found)} weights file{'s' if len(found) > 1 else ''}: "
            f"{', '.join(found[:limit])}{more}")


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
        describe = getattr(module, "describe_weights", None)  # e.g. rbpn.Net's
        hint = f" ({describe(sd)})" if describe is not None else ""
        raise CheckpointError(f"{what}: the weights do not fit the model{hint}: "
                              + "; ".join(problems))
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{what}: {str(err).strip().splitlines()[-1]}") from err


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a whole file (a weights file: what identifies it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
    atomic.write_text(model_card_path(weights), json.dumps(card, indent=2, default=str) + "\n",
                      CheckpointError)


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically."""
    atomic.write_atomically(path, lambda tmp: torch.save(obj, tmp), CheckpointError)


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Save weights atomically: safetensors when ``path`` ends in ``.safetensors``, otherwise
    ``torch.save`` of a plain dict of CPU tensors (the original's format, which its code and
    ours both load)."""
    tensors = {k: v.detach().cpu() for k, v in strip_prefixes(state_dict).items()}
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save_file
        # safetensors refuses views and tensors sharing storage: give each its own memory.
        tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
        atomic.write_atomically(
            path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}),
            CheckpointError)
    else:
        atomic_torch_save(tensors, path)
