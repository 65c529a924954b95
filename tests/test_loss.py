"""Losses: TV against the original's value, each four-fold term alone and together, the
perceptual-only loss, and gradient flow (the VGG16's weights: test_backbones.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import loss
from SRGAN.model import Discriminator


@pytest.fixture(scope="module")
def random_vgg_loss() -> loss.GeneratorLoss:
    torch.manual_seed(0)
    return loss.GeneratorLoss("fourfold", random_vgg=True)


def test_tv_loss_matches_the_original(shared_fixtures):
    data = np.load(shared_fixtures / "models" / "tv_loss.npz")
    value = loss.TVLoss()(torch.from_numpy(data["x"]))
    assert abs(value.item() - float(data["value"])) < 1e-5
    assert loss.TVLoss(tv_loss_weight=3.0)(torch.from_numpy(data["x"])).item() == \
        pytest.approx(3 * float(data["value"]), rel=1e-6)


def test_tv_loss_formula_on_a_ramp():
    # A horizontal ramp with step 1: dh = 0, dw = 1, summed over the batch and divided by the
    # per-image count: 2 * (0 + batch) / batch.
    x = torch.arange(5.0).expand(2, 3, 4, 5)
    assert loss.TVLoss()(x).item() == pytest.approx(2.0)


def test_discriminator_loss():
    real, fake = torch.tensor([0.9, 0.7]), torch.tensor([0.2, 0.4])
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(1 - 0.8 + 0.3)


@pytest.mark.parametrize("loss_type, reference", [("l1", F.l1_loss), ("mse", F.mse_loss)])
def test_pixel_losses_are_the_image_term_alone(loss_type, reference):
    criterion = loss.GeneratorLoss(loss_type)
    assert criterion.loss_network is None  # no VGG needed, none built
    sr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    total, terms = criterion(None, sr, hr)
    assert set(terms) == {"image"}
    torch.testing.assert_close(total, reference(sr, hr))


def test_fourfold_terms_separately_and_together(random_vgg_loss):
    torch.manual_seed(1)
    sr, hr = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    labels = torch.tensor([0.3, 0.6])
    total, terms = random_vgg_loss(labels, sr, hr)
    vgg = random_vgg_loss.loss_network
    expected = {
        "image": F.mse_loss(sr, hr),
        "adversarial": -labels.mean(),
        "perceptual": F.mse_loss(vgg(sr), vgg(hr)),
        "tv": loss.TVLoss()(sr),
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, msg=name)
        assert not terms[name].requires_grad
    assert terms["perceptual"] > 0 and terms["tv"] > 0
    weighted = (expected["image"] + 0.001 * expected["adversarial"]
                + 0.006 * expected["perceptual"] + 2e-8 * expected["tv"])
    torch.testing.assert_close(total, weighted)


def test_fourfold_weights_are_the_papers():
    assert loss.FOURFOLD_WEIGHTS == {"image": 1, "adversarial": 0.001, "perceptual": 0.006,
                                     "tv": 2e-8}


def test_gradients_reach_the_generator_not_the_vgg(random_vgg_loss):
    torch.manual_seed(2)
    generator = torch.nn.Conv2d(3, 3, 3, padding=1)
    discriminator = Discriminator().eval()
    discriminator.requires_grad_(False)
    random_vgg_loss.train()  # must not put the VGG in train mode
    sr = generator(torch.rand(1, 3, 32, 32))
    total, _ = random_vgg_loss(discriminator(sr), sr, torch.rand(1, 3, 32, 32))
    total.backward()
    assert generator.weight.grad is not None and generator.weight.grad.abs().sum() > 0
    vgg = random_vgg_loss.loss_network
    assert not vgg.training
    assert all(not p.requires_grad and p.grad is None for p in vgg.parameters())


def test_fourfold_needs_the_discriminator_scores(random_vgg_loss):
    with pytest.raises(ValueError, match="out_labels"):
        random_vgg_loss(None, torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError, match="loss_type"):
        loss.GeneratorLoss("vgg")


def test_perceptual_loss_is_mse_plus_vgg_without_a_discriminator(random_vgg_loss):
    torch.manual_seed(6)
    criterion = loss.GeneratorLoss("perceptual", random_vgg=True)
    criterion.loss_network = random_vgg_loss.loss_network  # the same VGG as the four-fold's
    sr, hr = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    total, terms = criterion(None, sr, hr)  # needs no D(fake)
    assert set(terms) == {"image", "perceptual"} and criterion.terms == ("image", "perceptual")
    vgg = criterion.loss_network
    with torch.no_grad():
        perceptual = F.mse_loss(vgg(sr), vgg(hr))
    torch.testing.assert_close(terms["perceptual"], perceptual)
    torch.testing.assert_close(total, F.mse_loss(sr, hr) + 0.006 * perceptual)
    _, fourfold = random_vgg_loss(torch.rand(2, 1), sr, hr)
    torch.testing.assert_close(fourfold["perceptual"], terms["perceptual"])
    assert loss.ADVERSARIAL_LOSSES == ("fourfold",)


def test_vgg_refuses_images_too_small_for_its_five_poolings(random_vgg_loss):
    with pytest.raises(ValueError, match="at least 32x32"):
        random_vgg_loss.loss_network(torch.rand(1, 3, 31, 40))


