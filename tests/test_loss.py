"""Losses: TV against the original's value, each four-fold term alone and together, gradient
flow, and how the VGG16 weights are found (or clearly not found)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import cli
import loss
from SRGAN.model import Discriminator


@pytest.fixture(scope="module")
def random_vgg_loss() -> loss.GeneratorLoss:
    torch.manual_seed(0)
    return loss.GeneratorLoss("fourfold", random_vgg=True)


@pytest.fixture
def no_vgg_anywhere(tmp_path, monkeypatch) -> Path:
    """Neither the repository's weights/ nor the torch hub cache holds the VGG file."""
    monkeypatch.setattr(loss, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


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
        loss.GeneratorLoss("perceptual")


def test_vgg_refuses_images_too_small_for_its_five_poolings(random_vgg_loss):
    with pytest.raises(ValueError, match="at least 32x32"):
        random_vgg_loss.loss_network(torch.rand(1, 3, 31, 40))


def test_random_vgg_is_announced_loudly(capsys):
    loss.build_vgg(random_init=True)
    assert "RANDOMLY INITIALISED VGG16" in capsys.readouterr().err


def test_imagenet_normalisation_option():
    torch.manual_seed(3)
    vgg = loss.build_vgg(random_init=True, imagenet_norm=True)
    x = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(vgg(x), vgg.features((x - mean) / std))
    assert not loss.VGG16Features().imagenet_norm  # the original's default: no normalisation


def fake_torchvision_file(path: Path) -> dict[str, torch.Tensor]:
    """A file laid out like torchvision's vgg16 weights (features.* plus classifier.*)."""
    torch.manual_seed(4)
    features = loss.build_vgg(random_init=True).state_dict()
    state = {**features, "classifier.0.weight": torch.zeros(2, 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return features


def test_vgg_weights_load_from_a_path_and_from_the_search_folders(no_vgg_anywhere):
    features = fake_torchvision_file(no_vgg_anywhere / "elsewhere" / loss.VGG16_FILE)
    vgg = loss.build_vgg(no_vgg_anywhere / "elsewhere" / loss.VGG16_FILE, download=False)
    for key, value in vgg.state_dict().items():
        torch.testing.assert_close(value, features[key])
    assert loss.find_vgg_weights(no_vgg_anywhere / "elsewhere") == \
        no_vgg_anywhere / "elsewhere" / loss.VGG16_FILE  # a folder holding the file works too
    hub_file = no_vgg_anywhere / "torch_home" / "hub" / "checkpoints" / loss.VGG16_FILE
    hub_file.parent.mkdir(parents=True)
    (no_vgg_anywhere / "elsewhere" / loss.VGG16_FILE).rename(hub_file)
    assert loss.find_vgg_weights(download=False) == hub_file
    loss.WEIGHTS_DIR.mkdir()
    (loss.WEIGHTS_DIR / loss.VGG16_FILE).write_bytes(b"")
    assert loss.find_vgg_weights(download=False) == loss.WEIGHTS_DIR / loss.VGG16_FILE


def test_missing_vgg_weights_give_one_clear_error(no_vgg_anywhere, monkeypatch):
    with pytest.raises(cli.CLIError) as err:
        loss.GeneratorLoss("fourfold", vgg_weights=no_vgg_anywhere / "nope.pth")
    assert "--vgg_weights" in str(err.value) and "nope.pth" in str(err.value)

    with pytest.raises(cli.CLIError) as err:
        loss.build_vgg(download=False)
    message = str(err.value)
    assert loss.VGG16_FILE in message and "--vgg_weights" in message
    assert "--random_vgg" in message and "\n" not in message

    def offline(target):
        raise OSError("network is unreachable")

    monkeypatch.setattr(loss, "_download_vgg", offline)
    with pytest.raises(cli.CLIError, match="could not be downloaded.*unreachable.*--random_vgg"):
        loss.build_vgg()


def test_a_wrong_vgg_file_is_refused(tmp_path):
    path = tmp_path / loss.VGG16_FILE
    torch.save({"features.0.weight": torch.zeros(64, 3, 5, 5)}, path)
    with pytest.raises(checkpoint.CheckpointError, match="VGG16 weights.*missing 25 keys.*"
                                                         "shapes differ"):
        loss.build_vgg(path)
