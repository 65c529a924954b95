"""frames.py: reading frames, neighbour windows, and the model inputs (Sample) of a frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import frames
from tests.test_dataset import texture


def test_sample_fields_are_named_and_batch_with_the_default_collate():
    from torch.utils.data import default_collate

    one = frames.Sample(input=torch.zeros(3, 4, 5), target=torch.ones(3, 16, 20),
                        neighbor=[torch.zeros(3, 4, 5)] * 2, flow=[torch.zeros(2, 4, 5)] * 2,
                        bicubic=torch.ones(3, 16, 20))
    batch = default_collate([one, one._replace(input=torch.ones(3, 4, 5))])
    assert isinstance(batch, frames.Sample)
    assert batch.input.shape == (2, 3, 4, 5) and batch.input[1].min() == 1
    assert [n.shape for n in batch.neighbor] == [(2, 3, 4, 5)] * 2
    assert batch.target.shape == (2, 3, 16, 20)


def test_frame_windows_clamp_at_both_ends():
    offsets = [-3, -2, -1, 1, 2, 3]
    windows = list(frames.frame_windows(range(5), offsets))
    assert [t for t, _ in windows] == [0, 1, 2, 3, 4]
    assert windows[0][1] == [0, 0, 0, 1, 2, 3]
    assert windows[1][1] == [0, 0, 0, 2, 3, 4]
    assert windows[4][1] == [1, 2, 3, 4, 4, 4]
    past = list(frames.frame_windows("abc", [-1, -2]))
    assert past == [("a", ["a", "a"]), ("b", ["a", "a"]), ("c", ["b", "a"])]
    assert list(frames.frame_windows(["only"], offsets)) == [("only", ["only"] * 6)]
    assert list(frames.frame_windows([], offsets)) == []


def test_frame_windows_stream_with_bounded_lookahead():
    produced = []

    def decoded():
        for i in range(100):
            produced.append(i)
            yield i

    for t, _ in frames.frame_windows(decoded(), [-3, -2, -1, 1, 2, 3]):
        # frame t is handed out once frames up to t+3 are read, and no further
        assert len(produced) == min(t + 4, 100)


def test_model_inputs_for_a_frame_and_its_neighbours():
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (34, 41, 3), dtype=np.uint8) for _ in range(3)]
    lr_frames = [frames.make_lr_frame(im, 4, True, pts=10 * i, index=i)
                 for i, im in enumerate(images)]
    assert lr_frames[1].hr.size == (40, 32) and lr_frames[1].lr.size == (10, 8)  # modcrop, 1/4
    sample = frames.make_sample(lr_frames[1], [lr_frames[0], lr_frames[2]], 4)
    assert sample.input.shape == (3, 8, 10) and sample.bicubic.shape == (3, 32, 40)
    assert [n.shape for n in sample.neighbor] == [(3, 8, 10)] * 2
    assert [f.shape for f in sample.flow] == [(2, 8, 10)] * 2
    torch.testing.assert_close(sample.neighbor[0], frames.to_tensor(lr_frames[0].lr))
    as_is = frames.make_lr_frame(images[0], 4, False)
    assert as_is.hr is None and as_is.lr.size == (41, 34)
    batch = frames.collate([frames.make_sample(lr_frames[1], [lr_frames[0], lr_frames[2]], 4,
                                               bicubic=False)] * 2)
    assert batch.input.shape == (2, 3, 8, 10) and batch.bicubic is None
    assert [f.shape for f in batch.flow] == [(2, 2, 8, 10)] * 2



@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "RGB16"])
def test_unusual_image_modes_become_8bit_rgb(tmp_path, mode):
    rgb = texture(16, 12)
    path = str(tmp_path / "frame.png")
    if mode == "I;16":
        grey = np.array([[0, 257, 32767, 32896, 65535, 1000]], np.uint16)
        Image.fromarray(grey).save(path)
        out = np.asarray(frames.read_rgb(path))
        assert out.dtype == np.uint8 and out.shape == (1, 6, 3)
        np.testing.assert_array_equal(out[..., 0], [[0, 1, 127, 128, 255, 4]])  # x / 257
        return
    if mode == "RGB16":  # Pillow keeps the high byte: v // 256, never clipped
        wide = rgb.astype(np.uint16) * 257 + 100
        write_png16_rgb(path, wide)
        out = np.asarray(frames.read_rgb(path))
        np.testing.assert_array_equal(out, wide >> 8)
        assert np.abs(out - wide / 257.0).max() < 1
        return
    image = Image.fromarray(rgb).convert(mode)
    image.save(path)
    out = frames.read_rgb(path)
    assert out.mode == "RGB" and out.size == (16, 12)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image.convert("RGB")))


def write_png16_rgb(path: str, array: np.ndarray) -> None:
    """A 48-bit RGB PNG (Pillow cannot write one)."""
    import struct
    import zlib

    height, width, _ = array.shape
    raw = b"".join(b"\0" + array[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
