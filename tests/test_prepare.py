"""prepare_septuplets.py on a tiny lossless video made here with PyAV."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
from PIL import Image

import prepare_septuplets
from cli import run_cli

CUT = 20  # the scene changes between frames 19 and 20
FRAMES = 40


def source_frames() -> list[np.ndarray]:
    """Frame k: texture A (B after the cut) moved k pixels right, 100x60."""
    rng = np.random.default_rng(0)
    textures = []
    for _ in range(2):
        small = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)
        textures.append(np.asarray(Image.fromarray(small).resize((160, 80), Image.BICUBIC)))
    return [textures[k >= CUT][10:70, 40 - k:140 - k] for k in range(FRAMES)]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("video") / "tiny clip.mov")
    with av.open(path, "w") as container:
        stream = container.add_stream("png", rate=25)  # lossless: decoded frames are exact
        stream.width, stream.height, stream.pix_fmt = 100, 60, "rgb24"
        for frame in source_frames():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def prepare(*argv: str) -> int:
    with pytest.raises(SystemExit) as info:
        run_cli(prepare_septuplets.main, list(argv))
    return info.value.code


def expected(k: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Frame k scaled to cover 48x32 (100x60 -> 53x32) and cropped."""
    image = Image.fromarray(source_frames()[k]).resize((53, 32), Image.LANCZOS)
    return np.asarray(image.crop(box))


def read(out, name: str, i: int) -> np.ndarray:
    return np.asarray(Image.open(out / "sequences" / name / f"im{i}.png"))


def test_windows_skip_the_scene_cut_and_hold_out_the_end(video, tmp_path):
    out = tmp_path / "out"
    assert prepare(video, "--output", str(out), "--size", "48x32", "--test_fraction", "0.25") == 0
    # windows start at 0, 7, 14, 21, 28; the one at 14 spans the cut
    assert (out / "sep_trainlist.txt").read_text().split() == [
        "tiny_clip/0001", "tiny_clip/0002", "tiny_clip/0003"]
    assert (out / "sep_testlist.txt").read_text().split() == ["tiny_clip/0004"]
    centre = (2, 0, 50, 32)
    for name, start in [("tiny_clip/0001", 0), ("tiny_clip/0003", 21), ("tiny_clip/0004", 28)]:
        for i in range(1, 8):
            np.testing.assert_array_equal(read(out, name, i), expected(start + i - 1, centre))


def test_stride_step_and_limit(video, tmp_path):
    out = tmp_path / "out"
    assert prepare(video, "--output", str(out), "--size", "48x32", "--frame_stride", "2",
                   "--window_step", "3", "--scene_cut", "0", "--max_septuplets", "4") == 0
    names = (out / "sep_trainlist.txt").read_text().split()
    assert len(names) == 4 and not (out / "sep_testlist.txt").exists()
    # sampled frames 0, 2, 4, ...; the 2nd window starts at the 3rd sampled frame (frame 6)
    for i in range(1, 8):
        np.testing.assert_array_equal(read(out, names[1], i), expected(6 + 2 * (i - 1),
                                                                       (2, 0, 50, 32)))


def test_random_crops_are_deterministic_given_the_seed(video, tmp_path):
    runs = {}
    for label, seed in [("a", "7"), ("b", "7"), ("c", "8")]:
        out = tmp_path / label
        assert prepare(video, "--output", str(out), "--size", "24x24", "--crop", "random",
                       "--crops", "3", "--seed", seed, "--max_septuplets", "6") == 0
        runs[label] = [read(out, f"tiny_clip/{n:04d}", 1) for n in range(1, 7)]
    assert all(np.array_equal(x, y) for x, y in zip(runs["a"], runs["b"], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(runs["a"], runs["c"], strict=True))


def test_bad_inputs_give_one_line_errors(video, tmp_path, capsys):
    assert prepare(video, "--output", str(tmp_path / "o"), "--size", "200x100") == 2
    assert "frames are 100x60, smaller than --size 200x100" in capsys.readouterr().err
    assert prepare(str(tmp_path / "none.mp4"), "--output", str(tmp_path / "o")) == 2
    assert "none.mp4: file not found" in capsys.readouterr().err
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    assert prepare(str(junk), "--output", str(tmp_path / "o")) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"warning: skipping {junk}: cannot open the video (invalid data found when processing "
        "input)",
        "error: no septuplet was written: the input is unreadable as a video or an image (see "
        "the warnings above)"]
    assert prepare(video, "--output", str(tmp_path / "o"), "--crops", "2") == 2
    assert "--crops > 1 needs --crop random" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o" / "sep_trainlist.txt")


def locate(image: np.ndarray, crop: np.ndarray) -> tuple[int, int]:
    """(left, top) of the unique place where ``crop`` sits in ``image``."""
    h, w = crop.shape[:2]
    hits = [(x, y) for y in range(image.shape[0] - h + 1) for x in range(image.shape[1] - w + 1)
            if np.array_equal(image[y:y + h, x:x + w], crop)]
    assert len(hits) == 1
    return hits[0]


def random_still(tmp_path, seed: int, height: int, width: int) -> tuple[np.ndarray, str]:
    """A random-noise photo.png (so every crop is found in one place only) and its pixels."""
    still = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(still).save(path)
    return still, str(path)


def test_still_images_give_straight_whole_pixel_pans(tmp_path):
    still, path = random_still(tmp_path, 3, 70, 100)
    out = tmp_path / "out"
    assert prepare(path, "--output", str(out), "--size", "48x32", "--pans", "3",
                   "--pan_speed", "4", "--seed", "5") == 0
    names = (out / "sep_trainlist.txt").read_text().split()
    assert names == ["photo/0001", "photo/0002", "photo/0003"]
    velocities = set()
    for name in names:
        places = [locate(still, read(out, name, i)) for i in range(1, 8)]
        vx, vy = places[1][0] - places[0][0], places[1][1] - places[0][1]
        assert places == [(places[0][0] + t * vx, places[0][1] + t * vy) for t in range(7)]
        assert abs(vx) <= 4 and abs(vy) <= 4
        velocities.add((vx, vy))
    assert len(velocities) > 1  # random, not one fixed motion
    again = tmp_path / "again"
    assert prepare(path, "--output", str(again), "--size", "48x32", "--pans", "3",
                   "--pan_speed", "4", "--seed", "5") == 0
    assert np.array_equal(read(again, "photo/0002", 7), read(out, "photo/0002", 7))


def test_still_side_pans_over_the_scaled_down_still(tmp_path, capsys):
    still, path = random_still(tmp_path, 4, 140, 200)
    out = tmp_path / "out"
    assert prepare(path, "--output", str(out), "--size", "48x32", "--pans", "2",
                   "--still_side", "100", "--seed", "5") == 0
    small = np.asarray(Image.fromarray(still).resize((100, 70), Image.LANCZOS))
    for name in ("photo/0001", "photo/0002"):
        locate(small, read(out, name, 1))  # a crop of the 100x70 still, found exactly once
    assert prepare(path, "--output", str(tmp_path / "o"), "--still_side", "-1") == 2
    assert "--still_side -1: must be 0 or more" in capsys.readouterr().err


def test_a_still_smaller_than_the_size_is_refused(tmp_path, capsys):
    path = tmp_path / "small.jpg"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    assert prepare(str(path), "--output", str(tmp_path / "o"), "--size", "48x32") == 2
    assert "small.jpg: the image is 30x20, smaller than --size 48x32" in capsys.readouterr().err


def write_video(path, frames: list[np.ndarray]) -> str:
    """A lossless video of ``frames`` (HxWx3 uint8, all the same size)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "rgb24"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


FIRST_CLIP = ["tiny_clip/0001", "tiny_clip/0002", "tiny_clip/0003", "tiny_clip/0004"]


def test_a_later_input_too_small_is_skipped_with_a_warning(video, tmp_path, capsys):
    small = write_video(tmp_path / "small.mov", [f[:30, :40] for f in source_frames()[:14]])
    out = tmp_path / "out"
    assert prepare(video, small, "--output", str(out), "--size", "48x32") == 0
    assert (out / "sep_trainlist.txt").read_text().split() == FIRST_CLIP
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: skipping {small}: frames are 40x30, smaller than --size 48x32"]
    assert "error" not in err
    assert not (out / "sequences" / "small").exists()


def test_a_video_shorter_than_seven_sampled_frames_is_skipped_with_a_warning(video, tmp_path,
                                                                             capsys):
    short = write_video(tmp_path / "short.mov", source_frames()[:8])
    out = tmp_path / "out"
    # with --frame_stride 2, 8 frames give only 4 sampled frames
    assert prepare(short, video, "--output", str(out), "--size", "48x32",
                   "--frame_stride", "2", "--scene_cut", "0") == 0
    assert (out / "sep_trainlist.txt").read_text().split() == ["tiny_clip/0001", "tiny_clip/0002"]
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: skipping {short}: ")
    assert "4 sampled frames" in warnings[0]
    # alone, it is still the one-line error
    assert prepare(short, "--output", str(tmp_path / "o"), "--size", "48x32",
                   "--frame_stride", "2") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: no septuplet was written: the videos are shorter than 7 sampled frames or every "
        "window spans a scene cut")
    assert not (tmp_path / "o" / "sep_trainlist.txt").exists()


def test_when_every_input_is_unreadable_the_error_says_so(video, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("some notes\nmore notes\n")
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"not a png")
    assert prepare(str(notes), str(photo), "--output", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == ["warning", "warning", "error"]
    assert err[-1] == ("error: no septuplet was written: all 2 inputs are unreadable as a video "
                       "or an image (see the warnings above)")
    short = write_video(tmp_path / "short.mov", source_frames()[:3])
    assert prepare(str(notes), short, "--output", str(tmp_path / "p"), "--size", "48x32") == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "spans a scene cut (1 of 2 inputs unreadable)")


def test_inputs_after_the_limit_are_never_opened(video, tmp_path, capsys, monkeypatch):
    broken = tmp_path / "x.mp4"
    broken.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    still = tmp_path / "photo.png"
    Image.fromarray(np.zeros((70, 100, 3), np.uint8)).save(still)
    opened = []
    real_open, real_image_open = av.open, Image.open
    monkeypatch.setattr(av, "open", lambda path, *a, **k: (opened.append(str(path)),
                                                          real_open(path, *a, **k))[1])
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: (opened.append(str(path)),
                                                             real_image_open(path, *a, **k))[1])
    out = tmp_path / "out"
    assert prepare(video, str(broken), str(still), "--output", str(out), "--size", "48x32",
                   "--max_septuplets", "2") == 0
    assert opened == [video]
    assert (out / "sep_trainlist.txt").read_text().split() == FIRST_CLIP[:2]
    err = capsys.readouterr().err
    assert "x.mp4" not in err and "photo" not in err and "warning" not in err
    assert sorted(os.listdir(out / "sequences")) == ["tiny_clip"]


@pytest.mark.parametrize("failure, code", [(OSError("No space left on device"), 1),
                                           (KeyboardInterrupt(), 130)])
def test_a_failure_mid_way_still_lists_the_complete_septuplets(video, tmp_path, capsys,
                                                               monkeypatch, failure, code):
    still = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (70, 100, 3), np.uint8)).save(still)
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if os.path.join("photo", "0002", "im4.png") in str(fp):
            raise failure
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "out"
    assert prepare(video, str(still), "--output", str(out), "--size", "48x32",
                   "--pans", "3") == code
    assert (out / "sep_trainlist.txt").read_text().split() == [*FIRST_CLIP, "photo/0001"]
    assert (out / "sequences" / "photo" / "0002" / "im3.png").exists()  # half-written: unlisted
    assert not (out / "sep_testlist.txt").exists()
