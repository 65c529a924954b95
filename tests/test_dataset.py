"""The data pipeline: the original's samples bit for bit, augmentation consistency, the flow
cache, and one clear error for every kind of bad data."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import cli
import data
import dataset
import frames
import optical_flow
from dataset import Augment, DataError

from .conftest import SHARED_DATA

VIMEO = "vimeo_septuplet/sequences"
TRANSFORMS = {"top-bottom": Augment(True, False, False), "left-right": Augment(False, True, False),
              "rot180": Augment(False, False, True), "all": Augment(True, True, True)}


def u8(tensor: torch.Tensor) -> np.ndarray:
    return np.round(tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture (something optical flow can track)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 4 + 3, width // 4 + 3, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((small.shape[1] * 4, small.shape[0] * 4), Image.BICUBIC)
    return np.asarray(big)[:height, :width]


def write_vimeo(root, entries=("c1/s1", "c1/s2", "c2/s1"), size=(64, 48)) -> str:
    """A tiny Vimeo-90K tree: each frame a shifted crop of a texture."""
    base = texture(size[0] + 40, size[1] + 40)
    for n, entry in enumerate(entries):
        folder = root / "sequences" / entry
        folder.mkdir(parents=True)
        for i in range(1, 8):
            dx, dy = 2 * i + n, i
            Image.fromarray(base[dy:dy + size[1], dx:dx + size[0]]).save(folder / f"im{i}.png")
    (root / "sep_trainlist.txt").write_text("".join(f"{e}\n" for e in entries))
    return str(root / "sequences")


def write_numbered(root, count=5, size=(64, 48), shift=(4, 2), clip="walk") -> str:
    """A tiny Vid4-like clip: frame k is the texture moved by k * shift (HR pixels)."""
    base = texture(size[0] + count * shift[0] + 8, size[1] + count * shift[1] + 8, seed=3)
    (root / clip).mkdir(parents=True)
    for k in range(1, count + 1):
        x0, y0 = (count - k) * shift[0], (count - k) * shift[1]  # content moves right/down
        frame = base[y0:y0 + size[1], x0:x0 + size[0]]
        Image.fromarray(frame).save(root / clip / f"{k:03d}.png")
    (root / f"{clip}.txt").write_text("".join(f"{clip}/{k:03d}.png\n" for k in range(1, count + 1)))
    return str(root)


# ---------------------------------------------------------------------------------------------
# The original's samples


@pytest.fixture(scope="module")
def vimeo_sample():
    if not (SHARED_DATA / VIMEO).is_dir():
        pytest.skip("reference data absent")
    test_set = data.get_test_set(str(SHARED_DATA / VIMEO), 7, 4, "sep_trainlist.txt", False, True)
    return test_set[0]


def check_against_fixture(sample, fixture) -> None:
    ref = np.load(fixture)
    lr, hr, neighbours, flows, bicubic = sample
    assert lr.dtype == torch.float32 and flows[0].dtype == torch.float32
    np.testing.assert_array_equal(u8(lr), ref["input"])
    np.testing.assert_array_equal(u8(hr), ref["target"])
    np.testing.assert_array_equal(u8(bicubic), ref["bicubic"])
    assert len(neighbours) == len(flows) == 6
    for j in range(6):
        np.testing.assert_array_equal(u8(neighbours[j]), ref["neighbors"][j])
        np.testing.assert_allclose(flows[j].numpy(), ref["flows"][j].transpose(2, 0, 1),
                                   rtol=0, atol=1e-5)


def test_vimeo_sample_matches_the_original(vimeo_sample, shared_fixtures):
    check_against_fixture(vimeo_sample,
                          shared_fixtures / "dataset/vimeo_00001_0001_nFrames7_x4.npz")


def test_vid4_sample_matches_the_original(shared_data, shared_fixtures):
    test_set = data.get_test_set(str(shared_data / "Vid4"), 7, 4, "calendar.txt", True, True)
    assert test_set.sample_name(1) == "calendar/002.png"
    assert test_set.image_filenames[1] == str(shared_data / "Vid4/calendar/002.png")
    check_against_fixture(test_set[1],
                          shared_fixtures / "dataset/vid4_calendar_002_nFrames7_x4.npz")


def test_flow_cache_returns_the_same_tensors(vimeo_sample, shared_data, tmp_path, monkeypatch):
    args = (str(shared_data / VIMEO), 7, 4, "sep_trainlist.txt", False, True)
    first = data.get_test_set(*args, flow_cache=str(tmp_path))[0]
    entries = list(tmp_path.rglob("*.npy"))
    assert len(entries) == 6 and not list(tmp_path.rglob("*.tmp"))

    def no_flow(*_args, **_kwargs):
        raise AssertionError("a warm cache must not compute flows")

    monkeypatch.setattr(optical_flow, "compute_flows", no_flow)
    second = data.get_test_set(*args, flow_cache=str(tmp_path))[0]
    for sample in (first, second):
        for a, b in zip(sample[3], vimeo_sample[3], strict=True):
            assert torch.equal(a, b)
        assert torch.equal(sample[0], vimeo_sample[0])

    entries[0].write_bytes(b"torn entry")  # a corrupt entry is recomputed, not fatal
    monkeypatch.undo()
    third = data.get_test_set(*args, flow_cache=str(tmp_path))[0]
    assert all(torch.equal(a, b) for a, b in zip(third[3], vimeo_sample[3], strict=True))
    assert np.load(entries[0]).shape == (2, 64, 112)


def test_patch_and_augmentation_follow_the_originals_random_draws(tmp_path, monkeypatch):
    """Same seed, same patch and flips as the original's get_patch/augment (re-stated here)."""
    monkeypatch.setattr(optical_flow, "compute_flows", lambda lr, nbs, threads=None: [
        np.zeros((2, lr.height, lr.width), np.float32) for _ in nbs])
    root = write_vimeo(tmp_path, size=(96, 80))
    train = data.get_training_set(root, 7, 4, True, "sep_trainlist.txt", False, 8, True)
    full = data.get_test_set(root, 7, 4, "sep_trainlist.txt", False, True)[1]
    for seed in range(12):
        random.seed(seed)
        lr, hr, neighbours, _, bicubic = train[1]
        random.seed(seed)  # the original: ix over rows, iy over columns, then three flips
        ix, iy = random.randrange(0, 20 - 8 + 1), random.randrange(0, 24 - 8 + 1)
        flips = [random.random() < 0.5 for _ in range(3)]

        np.testing.assert_array_equal(u8(lr), original_patch(full[0], ix, iy, 8, flips))
        np.testing.assert_array_equal(u8(hr), original_patch(full[1], 4 * ix, 4 * iy, 32, flips))
        for got, ref in zip(neighbours, full[2], strict=True):
            np.testing.assert_array_equal(u8(got), original_patch(ref, ix, iy, 8, flips))
        assert bicubic.shape == (3, 32, 32)


def original_patch(image: torch.Tensor, row: int, col: int, size: int,
                   flips: list[bool]) -> np.ndarray:
    out = u8(image)[row:row + size, col:col + size]
    if flips[0]:
        out = out[::-1]
    if flips[1]:
        out = out[:, ::-1]
    if flips[2]:
        out = out[::-1, ::-1]
    return out


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_lr_patch_is_bit_identical_to_cropping_the_whole_lr_frame(scale):
    image = Image.fromarray(texture(24 * scale, 20 * scale, seed=scale))
    whole = np.asarray(frames.downscale(image, scale))
    rng = random.Random(scale)
    owner = dataset.DatasetFromFolder.__new__(dataset.DatasetFromFolder)
    owner.upscale_only, owner.upscale_factor = False, scale
    for _ in range(30):
        size = rng.choice([4, 8, 20])
        patch = dataset.random_patch((24, 20), size, rng)
        got = np.asarray(owner._lr(image, patch, (24, 20)))
        top, left = patch.top, patch.left
        np.testing.assert_array_equal(got, whole[top:top + size, left:left + size])


# ---------------------------------------------------------------------------------------------
# Augmentation and flows


def sample_with(train_set, index, aug, monkeypatch):
    monkeypatch.setattr(dataset, "random_augment", lambda rng=None: aug)
    return train_set[index]


def test_flipped_flow_sign_on_a_known_motion(tmp_path, monkeypatch):
    """Content moving right/down by (2, 1) LR px per frame: the next frame's flow is about
    (+2, +1); mirroring negates u, flipping negates v, the rotation both."""
    root = write_numbered(tmp_path, size=(128, 96), shift=(4, 2))
    train = data.get_training_set(root, 3, 2, True, "walk.txt", True, 0, True)
    for aug, sign in [(Augment(), (1, 1)), (Augment(flip_lr=True), (-1, 1)),
                      (Augment(flip_tb=True), (1, -1)), (Augment(rot180=True), (-1, -1))]:
        flows = sample_with(train, 2, aug, monkeypatch)[3]  # frame 003: neighbours 002, 004
        after = flows[1].numpy()[:, 8:-8, 8:-8]  # away from the borders
        assert np.median(after[0]) == pytest.approx(2 * sign[0], abs=0.1)
        assert np.median(after[1]) == pytest.approx(1 * sign[1], abs=0.1)


def test_fresh_flow_of_a_flipped_sample_is_the_flipped_flow(shared_data, monkeypatch):
    """pyflow is not exactly flip-equivariant (its SOR sweeps run in raster order and its
    pyramid grid, x = (j + 1) / r - 1, is not symmetric), so a tolerance is needed. Measured on
    this sample (00001/0003, centre 64x64 patch, 18 flows): mean end-point error per flow
    0.004-0.032 px, 95th percentile over the six flows 0.017-0.031 px; a missing sign change
    gives a mean error of 2.1 px or more. The bounds (0.1 px) are 3x the worst measurement and
    20x below a sign error."""
    eval_set = data.get_eval_set(str(shared_data / VIMEO), 7, 4, False, "sep_trainlist.txt",
                                 False, 64, True)
    base = eval_set[2]
    eval_set.data_augmentation = True  # centre patch, forced flips
    for name in ("top-bottom", "left-right", "rot180"):
        aug = TRANSFORMS[name]
        flipped = sample_with(eval_set, 2, aug, monkeypatch)
        np.testing.assert_array_equal(u8(flipped[0]), u8_aug(base[0], aug))
        np.testing.assert_array_equal(u8(flipped[1]), u8_aug(base[1], aug))
        np.testing.assert_array_equal(u8(flipped[4]), u8_aug(base[4], aug))
        errors = []
        for got, ref, nb_got, nb_ref in zip(flipped[3], base[3], flipped[2], base[2], strict=True):
            np.testing.assert_array_equal(u8(nb_got), u8_aug(nb_ref, aug))
            epe = np.sqrt(((got.numpy() - dataset.augment_flow(ref.numpy(), aug)) ** 2).sum(0))
            assert epe.mean() < 0.1, name
            errors.append(epe)
        assert np.percentile(np.stack(errors), 95) < 0.1, name


def u8_aug(image: torch.Tensor, aug: Augment) -> np.ndarray:
    return np.asarray(dataset.augment_image(Image.fromarray(u8(image)), aug))


def test_cached_flow_with_patch_and_augmentation_is_the_transformed_cached_flow(tmp_path,
                                                                                monkeypatch):
    root = write_vimeo(tmp_path / "d", size=(128, 96))
    cache = tmp_path / "cache"
    train = data.get_training_set(root, 7, 4, True, "sep_trainlist.txt", False, 16, True,
                                  flow_cache=str(cache))
    full = data.get_test_set(root, 7, 4, "sep_trainlist.txt", False, True,
                             flow_cache=str(cache))[0][3]  # fills the cache: full-frame flows
    for seed, aug in enumerate(TRANSFORMS.values()):
        random.seed(seed)
        patch = dataset.random_patch((32, 24), 16)
        random.seed(seed)
        flows = sample_with(train, 0, aug, monkeypatch)[3]
        box = np.s_[:, patch.top:patch.top + 16, patch.left:patch.left + 16]
        for got, whole in zip(flows, full, strict=True):
            expected = dataset.augment_flow(whole.numpy()[box], aug)
            np.testing.assert_array_equal(got.numpy(), expected)


def test_augment_flow_matches_the_pixel_motion():
    """Moving a point by the flow and then flipping lands where the flipped flow moves the
    flipped point (checked for every transform on random flows)."""
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(2, 5, 7)).astype(np.float32)
    for aug in TRANSFORMS.values():
        out = dataset.augment_flow(flow, aug)
        for y, x in [(0, 0), (1, 3), (4, 6)]:
            fy = 4 - y if aug.flip_tb != aug.rot180 else y
            fx = 6 - x if aug.flip_lr != aug.rot180 else x
            u, v = flow[:, y, x]
            target_x = x + u
            target_y = y + v
            moved_x = 6 - target_x if aug.flip_lr != aug.rot180 else target_x
            moved_y = 4 - target_y if aug.flip_tb != aug.rot180 else target_y
            assert out[0, fy, fx] == pytest.approx(moved_x - fx, abs=1e-5)
            assert out[1, fy, fx] == pytest.approx(moved_y - fy, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Layouts and frame selection


def test_frame_selection(tmp_path):
    seq = str(tmp_path)
    name = lambda paths: [os.path.basename(p) if p else None for p in paths]  # noqa: E731
    assert name(dataset.vimeo_frames(seq, 7, True)[1]) == [f"im{i}.png" for i in (1, 2, 3, 5, 6, 7)]
    assert name(dataset.vimeo_frames(seq, 5, True)[1]) == [f"im{i}.png" for i in (2, 3, 5, 6)]
    assert name(dataset.vimeo_frames(seq, 3, True)[1]) == ["im3.png", "im5.png"]
    target, past = dataset.vimeo_frames(seq, 5, False)
    assert os.path.basename(target) == "im5.png"
    assert name(past) == ["im4.png", "im3.png", "im2.png", "im1.png"]
    root = write_numbered(tmp_path / "v", count=5)
    clip = os.path.join(root, "walk")
    _, future = dataset.numbered_frames(os.path.join(clip, "002.png"), 5, True)
    assert name(future) == [None, "001.png", "003.png", "004.png"]
    _, past = dataset.numbered_frames(os.path.join(clip, "004.png"), 5, False)
    assert name(past) == ["003.png", "002.png", "001.png", None]


@pytest.mark.parametrize("nFrames, future, other, flag_text", [
    (4, True, False, "must be odd"), (9, True, False, "only 7 frames"), (1, True, True, "at least"),
    (8, False, False, "only 7 frames")])
def test_unsupported_frame_counts_are_refused(tmp_path, nFrames, future, other, flag_text):
    root = write_vimeo(tmp_path)
    with pytest.raises(cli.ParameterError, match=f"nFrames={nFrames}: .*{flag_text}"):
        data.get_training_set(root, nFrames, 4, False, "sep_trainlist.txt", other, 0, future)


def test_past_frames_and_five_frames_on_vimeo(tmp_path):
    root = write_vimeo(tmp_path)
    ref = data.get_test_set(root, 7, 4, "sep_trainlist.txt", False, False)[0]
    lr, hr, neighbours, flows, bicubic = data.get_test_set(root, 5, 4, "sep_trainlist.txt",
                                                           False, False)[0]
    assert len(neighbours) == len(flows) == 4 and hr.shape == (3, 48, 64)
    assert lr.shape == (3, 12, 16) and flows[0].shape == (2, 12, 16)
    assert torch.equal(neighbours[0], ref[2][2])  # im4 is the nearest past frame of im5
    assert bicubic.shape == hr.shape


def test_batches_feed_the_generator_interface(tmp_path):
    root = write_vimeo(tmp_path)
    train = data.get_training_set(root, 7, 2, True, "sep_trainlist.txt", False, 8, True)
    lr, hr, neighbours, flows, bicubic = next(iter(DataLoader(train, batch_size=2)))
    assert lr.shape == (2, 3, 8, 8) and hr.shape == bicubic.shape == (2, 3, 16, 16)
    assert len(neighbours) == len(flows) == 6
    assert neighbours[0].shape == (2, 3, 8, 8) and flows[0].shape == (2, 2, 8, 8)
    assert 0 <= float(lr.min()) and float(lr.max()) <= 1


def test_upscale_only_takes_the_frames_as_lr_input(tmp_path):
    root = write_numbered(tmp_path, count=3, size=(32, 24))
    test_set = data.get_test_set(root, 3, 4, "walk.txt", True, True, upscale_only=True)
    lr, target, neighbours, flows, bicubic = test_set[0]
    frame = np.asarray(Image.open(os.path.join(root, "walk/001.png")))
    np.testing.assert_array_equal(u8(lr), frame)
    assert target.numel() == 0 and bicubic.shape == (3, 96, 128)
    assert torch.equal(neighbours[0], lr)  # frame 000 does not exist: the input itself
    assert flows[1].shape == (2, 24, 32)
    Image.fromarray(frame[:20]).save(os.path.join(root, "walk/002.png"))
    with pytest.raises(DataError, match=r"walk/002.png: frame size 32x20 differs from 32x24"):
        test_set[0]


def test_eval_set_is_repeatable(tmp_path):
    root = write_vimeo(tmp_path, size=(96, 64))
    eval_set = data.get_eval_set(root, 3, 4, True, "sep_trainlist.txt", False, 8, True)
    first, second = eval_set[1], eval_set[1]
    for a, b in zip(first[:2] + first[4:], second[:2] + second[4:], strict=True):
        assert torch.equal(a, b)
    whole = data.get_test_set(root, 3, 4, "sep_trainlist.txt", False, True)[1][0]
    assert torch.equal(first[0], whole[:, 4:12, 8:16])  # the centre 8x8 of a 24x16 LR frame


def test_file_list_is_found_beside_the_sequences_folder(tmp_path):
    root = write_vimeo(tmp_path)  # the list lies in tmp_path, the data in tmp_path/sequences
    train = data.get_training_set(root, 3, 4, False, "sep_trainlist.txt", False, 0, True)
    assert len(train) == 3 and train.sample_name(2) == "c2/s1/im4.png"


# ---------------------------------------------------------------------------------------------
# Bad data


@pytest.fixture
def fast_flows(monkeypatch):
    monkeypatch.setattr(optical_flow, "compute_flows", lambda lr, nbs, threads=None: [
        np.zeros((2, lr.height, lr.width), np.float32) for _ in nbs])


def test_missing_and_empty_file_lists(tmp_path):
    root = write_vimeo(tmp_path)
    with pytest.raises(cli.ParameterError, match=r"file_list='nope.txt': not found \(looked for"):
        data.get_training_set(root, 7, 4, False, "nope.txt", False, 0, True)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match=r"empty.txt: the file list is empty"):
        data.get_training_set(root, 7, 4, False, "empty.txt", False, 0, True)
    with pytest.raises(cli.ParameterError, match=r"image_dir='.*missing': folder not found"):
        data.get_training_set(str(tmp_path / "missing"), 7, 4, False, "empty.txt", False, 0, True)


def test_missing_target_is_reported_when_the_set_is_built(tmp_path):
    root = write_vimeo(tmp_path)
    os.remove(os.path.join(root, "c1/s2/im4.png"))
    with pytest.raises(DataError, match=r"c1/s2/im4.png: missing frame, listed in .*trainlist"):
        data.get_training_set(root, 7, 4, False, "sep_trainlist.txt", False, 0, True)


@pytest.mark.parametrize("damage, message", [
    ("missing", r"c1/s2/im2.png: missing frame"),
    ("truncated", r"c1/s2/im2.png: unreadable or truncated image"),
    ("garbage", r"c1/s2/im2.png: unreadable or truncated image"),
    ("size", r"c1/s2/im2.png: frame size 60x48 differs from 64x48 of .*c1/s2/im4.png"),
    ("float", r"c1/s2/im2.png: F images .*not supported"),
])
def test_bad_frames_give_one_clear_error(tmp_path, fast_flows, damage, message):
    root = write_vimeo(tmp_path)
    path = os.path.join(root, "c1/s2/im2.png")
    if damage == "missing":
        os.remove(path)
    elif damage == "truncated":
        blob = open(path, "rb").read()
        open(path, "wb").write(blob[: len(blob) // 2])
    elif damage == "garbage":
        open(path, "wb").write(b"not a png at all")
    elif damage == "size":
        Image.open(path).crop((0, 0, 60, 48)).save(path)
    elif damage == "float":
        os.remove(path)
        path = path[:-4] + ".tif"
        Image.fromarray(np.zeros((48, 64), np.float32)).save(path)
        os.rename(path, path[:-4] + ".png")
    train = data.get_training_set(root, 7, 4, False, "sep_trainlist.txt", False, 0, True)
    train[0]
    with pytest.raises(DataError, match=message):
        train[1]


def test_frame_smaller_than_the_patch(tmp_path):
    root = write_vimeo(tmp_path)
    train = data.get_training_set(root, 7, 4, True, "sep_trainlist.txt", False, 16, True)
    with pytest.raises(DataError, match=r"im4.png: LR frame 16x12 is smaller than --patch_size 16"):
        train[0]


def test_other_dataset_entry_without_a_frame_number(tmp_path):
    write_numbered(tmp_path)
    (tmp_path / "bad.txt").write_text("walk/001.png\nwalk/first.png\n")
    with pytest.raises(DataError, match="walk/first.png: an --other_dataset list entry must"):
        data.get_test_set(str(tmp_path), 3, 4, "bad.txt", True, True)


def test_error_from_a_dataloader_worker_is_one_line(tmp_path, fast_flows):
    root = write_vimeo(tmp_path)
    os.remove(os.path.join(root, "c1/s1/im7.png"))
    train = data.get_training_set(root, 7, 4, False, "sep_trainlist.txt", False, 0, True)
    with pytest.raises(DataError) as info:
        next(iter(DataLoader(train, batch_size=1, num_workers=1)))
    assert cli._one_line(info.value).endswith("c1/s1/im7.png: missing frame")


def test_skip_bad_counts_across_workers(tmp_path, fast_flows):
    entries = [f"c{i}/s1" for i in range(6)]
    root = write_vimeo(tmp_path, entries=entries)
    os.remove(os.path.join(root, "c1/s1/im2.png"))
    open(os.path.join(root, "c4/s1/im6.png"), "wb").write(b"broken")
    train = data.get_training_set(root, 7, 4, False, "sep_trainlist.txt", False, 0, True,
                                  skip_bad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len([train[i] for i in range(6)]) == 6
    assert train.skipped == 2
    assert sum(issubclass(w.category, dataset.BadSampleWarning) for w in caught) == 2
    assert any("c4/s1/im6.png" in str(w.message) for w in caught)
    loader = DataLoader(train, batch_size=2, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sum(batch[0].shape[0] for batch in loader) == 6
    assert train.skipped == 4  # two more, counted in the worker processes


def test_skip_bad_with_nothing_good_left(tmp_path, fast_flows):
    root = write_vimeo(tmp_path, entries=["a/1"])
    os.remove(os.path.join(root, "a/1/im1.png"))
    train = data.get_training_set(root, 7, 4, False, "sep_trainlist.txt", False, 0, True,
                                  skip_bad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="every sample is bad"):
            train[0]




def test_a_test_set_finds_a_missing_neighbour_before_any_work(tmp_path):
    """A Vimeo-layout test set checks every frame it will read when it is built, so the test
    script stops before printing partial results (a training set finds it when loading)."""
    root = write_vimeo(tmp_path)
    os.remove(os.path.join(root, "c1/s2/im6.png"))
    with pytest.raises(DataError, match=r"c1/s2/im6.png: missing frame, listed in .*trainlist"):
        data.get_test_set(root, 7, 4, "sep_trainlist.txt", False, True)
    data.get_training_set(root, 7, 4, False, "sep_trainlist.txt", False, 0, True)  # builds
