"""scripts/: the recipes parse, and crop_compare.py builds README's comparison images."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from tests.conftest import ROOT


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
