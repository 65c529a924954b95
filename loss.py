"""iSeeBetter's losses: the four-fold generator loss, TV loss, the discriminator loss, and the
VGG16 feature network of the perceptual term (written here: torchvision is not a dependency).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import checkpoint
import cli

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
VGG16_SHA256_PREFIX = "397923af"  # torchvision names its files after their sha256
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_DOWNLOAD_TIMEOUT_S = 30

# VGG16 "D" configuration; torchvision's features[:31] is all of it (31 modules).
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)



@dataclass(frozen=True)
class Term:
    """One term of the generator loss.

    Args:
        column: its column in the training statistics (CSV, plot, TensorBoard).
        weight: its weight in the four-fold loss.
        positive: always > 0, so the plot may show it on a log scale.
    """

    column: str
    weight: float
    positive: bool = True


# The terms of the four-fold loss with the paper's weights (the original's --APITLoss). A new
# term is an entry here and its value in GeneratorLoss.forward; the statistics follow.
FOURFOLD_TERMS = {
    "image": Term("ImageLoss", 1.0),
    "adversarial": Term("AdversarialLoss", 0.001, positive=False),  # -mean(D(G(z)))
    "perceptual": Term("PerceptualLoss", 0.006),
    "tv": Term("TVLoss", 2e-8),
}
FOURFOLD_WEIGHTS = {name: term.weight for name, term in FOURFOLD_TERMS.items()}
TERM_COLUMNS = {name: term.column for name, term in FOURFOLD_TERMS.items()}
LOSS_TYPES = ("fourfold", "l1", "mse")


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features[:31]`` (same module indices and state_dict keys,
    ``features.N.weight``), frozen and always in eval mode.

    Args:
        imagenet_norm: normalise the [0, 1] input with the ImageNet mean and std first (what the
            weights were trained on). The original feeds [0, 1] images as they are (default).
    """

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
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16Features:
        """Stays in eval mode: it is a fixed feature extractor."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"the VGG16 perceptual loss needs images of at least 32x32 (five "
                             f"2x poolings), got {x.shape[-2]}x{x.shape[-1]}")
        if self.imagenet_norm:
            x = (x - self.mean) / self.std
        return self.features(x)


def _vgg_search_paths() -> list[Path]:
    """Where ``build_vgg`` looks for the weights when none are given."""
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
    """The path of ``vgg16-397923af.pth``: ``weights`` (a file, or a folder holding it), else
    ``weights/`` of this repository, else the torch hub cache (``$TORCH_HOME/hub/checkpoints``),
    else downloaded into that cache when ``download`` and online. ``cli.CLIError`` otherwise."""
    how = (f"pass --vgg_weights PATH to torchvision's ImageNet file {VGG16_FILE}, put it in "
           f"{WEIGHTS_DIR}/, or use --random_vgg (tests and smoke runs only)")
    if weights is not None:
        path = Path(weights)
        path = path / VGG16_FILE if path.is_dir() else path
        if not path.is_file():
            raise cli.CLIError(f"--vgg_weights {weights}: no such file {path}")
        return path
    candidates = _vgg_search_paths()
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        return found
    if download:
        try:
            _download_vgg(candidates[-1])
            return candidates[-1]
        except Exception as err:  # noqa: BLE001 - network, disk and hash errors alike
            raise cli.CLIError(f"the VGG16 weights {VGG16_FILE} are not available and could not "
                               f"be downloaded ({type(err).__name__}: {err}); {how}") from err
    looked = ", ".join(str(p) for p in candidates)
    raise cli.CLIError(f"the VGG16 weights {VGG16_FILE} were not found (looked in {looked}); "
                       f"{how}")


def _init_like_torchvision(vgg: VGG16Features) -> None:
    for module in vgg.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)


def build_vgg(weights: str | os.PathLike | None = None, random_init: bool = False,
              imagenet_norm: bool = False, download: bool = True) -> VGG16Features:
    """The frozen, eval-mode VGG16 feature network of the perceptual loss.

    Args:
        weights: torchvision's ``vgg16-397923af.pth`` (file or folder); found or downloaded
            as ``find_vgg_weights`` says when None.
        random_init: skip the ImageNet weights and use torchvision's random init (tests only:
            the perceptual term is then meaningless, which is printed loudly).
        imagenet_norm: see ``VGG16Features``.
        download: allow the download when the file is nowhere to be found.
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
    state = checkpoint.load_object(path)
    if not isinstance(state, dict):
        raise checkpoint.CheckpointError(f"{path}: not a VGG16 state_dict")
    # The file is the whole vgg16 (features.* and classifier.*); the loss uses features[:31].
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    checkpoint.load_into(vgg, features, what=f"VGG16 weights {path}")
    return vgg


class TVLoss(nn.Module):
    """Total variation: ``weight * 2 * (sum(dh^2) / count_h + sum(dw^2) / count_w) / batch``
    with ``count_h = C*(H-1)*W`` and ``count_w = C*H*(W-1)`` (the original's formula).

    Args:
        tv_loss_weight: a factor on the result (1).
    """

    def __init__(self, tv_loss_weight: float = 1.0):
        super().__init__()
        self.tv_loss_weight = tv_loss_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h_tv = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).sum()
        w_tv = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).sum()
        count_h = channels * (height - 1) * width
        count_w = channels * height * (width - 1)
        return self.tv_loss_weight * 2 * (h_tv / count_h + w_tv / count_w) / batch


def discriminator_loss(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """The original's D loss: ``1 - D(real).mean() + D(fake).mean()``."""
    return 1 - real_out.mean() + fake_out.mean()


class GeneratorLoss(nn.Module):
    """The generator's loss; ``forward`` returns ``(total, terms)``, ``terms`` being detached
    unweighted scalars: "image" and, for the four-fold loss, "adversarial", "perceptual", "tv".

    Four-fold (the paper's): ``mse + 0.001 * -mean(D(sr)) + 0.006 * mse(vgg(sr), vgg(hr))
    + 2e-8 * tv(sr)``. "l1" (the original's default without --APITLoss) and "mse" are the image
    term alone; they build no VGG and ignore ``out_labels``.

    Args:
        loss_type: "fourfold", "l1" or "mse".
        vgg_weights: path of ``vgg16-397923af.pth`` (see ``build_vgg``).
        random_vgg: use a randomly initialised VGG (tests only).
        imagenet_norm: ImageNet-normalise the VGG input (the original does not).
    """

    def __init__(self, loss_type: str = "fourfold", vgg_weights: str | os.PathLike | None = None,
                 random_vgg: bool = False, imagenet_norm: bool = False):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        self.loss_type = loss_type
        self.image_loss = nn.L1Loss() if loss_type == "l1" else nn.MSELoss()
        self.loss_network = (build_vgg(vgg_weights, random_vgg, imagenet_norm)
                             if loss_type == "fourfold" else None)
        self.tv_loss = TVLoss()

    @property
    def terms(self) -> tuple[str, ...]:
        """The names of the terms ``forward`` returns."""
        return tuple(FOURFOLD_TERMS) if self.loss_network is not None else ("image",)

    def forward(self, out_labels: torch.Tensor | None, out_images: torch.Tensor,
                target_images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """out_labels: D(out_images) with its graph (four-fold only); images (B, 3, H, W)."""
        image = self.image_loss(out_images, target_images)
        if self.loss_network is None:
            return image, {"image": image.detach()}
        if out_labels is None:
            raise ValueError("the four-fold loss needs the discriminator's scores (out_labels)")
        terms = {
            "image": image,
            "adversarial": -out_labels.mean(),
            "perceptual": self.perceptual_loss(out_images, target_images),
            "tv": self.tv_loss(out_images),
        }
        total = sum(FOURFOLD_WEIGHTS[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}

    def perceptual_loss(self, out_images: torch.Tensor,
                        target_images: torch.Tensor) -> torch.Tensor:
        """MSE between the VGG16 features of the output and of the target."""
        with torch.no_grad():  # the target needs no graph: saves the memory of a VGG pass
            target_features = self.loss_network(target_images)
        return F.mse_loss(self.loss_network(out_images), target_features)
