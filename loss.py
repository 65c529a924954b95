"""iSeeBetter's losses: the four-fold generator loss, its perceptual-only variant, TV loss and
the discriminator loss. The perceptual term's ImageNet VGG16 comes from ``backbones.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backbones import build_vgg


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
# The terms of each generator loss. "perceptual" is the four-fold loss without its adversarial
# and TV terms, MSE + 0.006 VGG (SRGAN's VGG-only loss): it tells the adversarial term's effect
# apart, with no discriminator.
LOSS_TERMS = {
    "fourfold": tuple(FOURFOLD_TERMS),
    "perceptual": ("image", "perceptual"),
    "l1": ("image",),
    "mse": ("image",),
}
LOSS_TYPES = tuple(LOSS_TERMS)
ADVERSARIAL_LOSSES = tuple(t for t, terms in LOSS_TERMS.items() if "adversarial" in terms)


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
    unweighted scalars named as in ``LOSS_TERMS``.

    Four-fold (the paper's): ``mse + 0.001 * -mean(D(sr)) + 0.006 * mse(vgg(sr), vgg(hr))
    + 2e-8 * tv(sr)``. "perceptual": ``mse + 0.006 * mse(vgg(sr), vgg(hr))``. "l1" (the
    original's default without --APITLoss) and "mse" are the image term alone; they build no
    VGG. Only the four-fold loss reads ``out_labels``.

    Args:
        loss_type: "fourfold", "perceptual", "l1" or "mse".
        vgg_weights: a VGG16 weights file (see ``backbones.find_vgg_weights``); None finds the
            ImageNet weights.
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
                             if "perceptual" in LOSS_TERMS[loss_type] else None)
        self.tv_loss = TVLoss()

    @property
    def terms(self) -> tuple[str, ...]:
        """The names of the terms ``forward`` returns."""
        return LOSS_TERMS[self.loss_type]

    def forward(self, out_labels: torch.Tensor | None, out_images: torch.Tensor,
                target_images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """out_labels: D(out_images) with its graph (four-fold only); images (B, 3, H, W)."""
        if "adversarial" in self.terms and out_labels is None:
            raise ValueError("the four-fold loss needs the discriminator's scores (out_labels)")
        compute = {
            "image": lambda: self.image_loss(out_images, target_images),
            "adversarial": lambda: -out_labels.mean(),
            "perceptual": lambda: self.perceptual_loss(out_images, target_images),
            "tv": lambda: self.tv_loss(out_images),
        }
        terms = {name: compute[name]() for name in self.terms}
        total = sum(FOURFOLD_WEIGHTS[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}

    def perceptual_loss(self, out_images: torch.Tensor,
                        target_images: torch.Tensor) -> torch.Tensor:
        """MSE between the VGG16 features of the output and of the target."""
        with torch.no_grad():  # the target needs no graph: saves the memory of a VGG pass
            target_features = self.loss_network(target_images)
        return F.mse_loss(self.loss_network(out_images), target_features)
