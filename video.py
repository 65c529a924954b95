"""Streaming video input and output with PyAV: frames in, frames out, audio carried along.

``VideoReader`` decodes one frame at a time (RGB uint8 with its timestamp), so memory does
not grow with the length of the video. ``VideoWriter`` encodes H.264 (yuv420p) with the
input's frame rate and timestamps and copies the input's audio packets into the output
without re-encoding when the output container accepts the codec (else re-encodes to AAC),
trimmed to the span of the video frames written. The output is written to a temporary file
beside the target and renamed into place when complete (``atomic.PendingFile``), so a failed
run leaves no broken file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

import atomic
from cli import CLIError


class VideoError(CLIError):
    """A video file that cannot be read or written (names the file)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds.

    Args:
        path: the file.
        width, height: frame size in pixels.
        fps: average frame rate.
        time_base: unit of the frame timestamps (seconds per tick).
        frames: number of frames when the container says so, else estimated from the duration.
        duration: seconds (0.0 when unknown).
        audio_codec: codec name of the first audio stream, or None when there is none.
    """

    path: Path
    width: int
    height: int
    fps: Fraction
    time_base: Fraction
    frames: int
    duration: float
    audio_codec: str | None


@dataclass
class Frame:
    """One decoded frame.

    Args:
        image: RGB uint8 array (H, W, 3).
        pts: presentation timestamp in the stream's time base.
        time: presentation time in seconds.
        index: position in the decoded sequence (0 = first frame returned).
    """

    image: np.ndarray
    pts: int
    time: float
    index: int


def _open_input(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video not found: {path}")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoError(f"cannot read video {path}: {err}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"cannot read video {path}: it has no video stream")
    return container


class VideoReader:
    """Decode the frames of a video one by one, as RGB uint8 with their timestamps.

    Args:
        path: any file FFmpeg can demux (mp4, mkv, mov, avi, webm, ...).
        start_time: skip the frames before this time (seconds).
        max_frames: stop after this many frames (None: all).
    """

    def __init__(self, path: str | os.PathLike, start_time: float = 0.0,
                 max_frames: int | None = None):
        self.path = Path(path)
        self.start_time = float(start_time)
        self.max_frames = max_frames
        self._container = _open_input(self.path)
        stream = self._container.streams.video[0]
        ctx = stream.codec_context
        if not ctx.width or not ctx.height:
            self.close()
            raise VideoError(f"cannot read video {self.path}: unknown frame size")
        fps = stream.average_rate or stream.guessed_rate or Fraction(25)
        time_base = stream.time_base or Fraction(1, 1000)
        duration = (float(stream.duration * time_base) if stream.duration
                    else (self._container.duration or 0) / av.time_base)
        frames = stream.frames or round(duration * fps)
        audio = self._container.streams.audio
        self.info = VideoInfo(self.path, ctx.width, ctx.height, Fraction(fps), Fraction(time_base),
                              int(frames), duration, audio[0].codec_context.name if audio else None)
        self._stream = stream

    def expected_frames(self) -> int:
        """How many frames iteration will return (an estimate when the container has no count)."""
        left = self.info.frames - round(self.start_time * self.info.fps)
        left = max(left, 0)
        return left if self.max_frames is None else min(left, self.max_frames)

    def __iter__(self) -> Iterator[Frame]:
        stream = self._stream
        stream.thread_type = "AUTO"  # decode with FFmpeg's frame threads
        if self.start_time > 0:
            self._container.seek(int(self.start_time / stream.time_base), stream=stream)
        frame_ticks = 1 / (self.info.fps * self.info.time_base)
        half_frame = 0.5 / float(self.info.fps)
        count = 0
        try:
            for frame in self._container.decode(stream):
                if self.max_frames is not None and count >= self.max_frames:
                    return
                # Streams without timestamps (raw H.264, some AVIs): count frames instead.
                pts = frame.pts if frame.pts is not None else round(count * frame_ticks)
                time = float(pts * self.info.time_base)
                if time < self.start_time - half_frame:
                    continue
                yield Frame(frame.to_ndarray(format="rgb24"), int(pts), time, count)
                count += 1
        except av.FFmpegError as err:
            raise VideoError(f"cannot decode video {self.path} after {count} frames: "
                             f"{err}") from None
        if count == 0:
            raise VideoError(f"cannot read video {self.path}: no frames"
                             + (f" after --start_time {self.start_time:g}" if self.start_time
                                else ""))

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_writable(path: str | os.PathLike) -> Path:
    """Create the parent folder and make sure a file can be written there; return the path.

    Raises VideoError naming the path otherwise (a parent that is a file, no permission, ...).
    """
    path = Path(path)
    if path.is_dir():
        raise VideoError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.{os.getpid()}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise VideoError(f"cannot write {path}: {err.strerror or err}") from None
    return path


class _AudioCopy:
    """Feeds the input's audio into the output container, up to a given time.

    Packets are copied as they are when the output container accepts the codec; otherwise
    the audio is decoded and re-encoded to AAC. Only audio in [offset, end) is kept, shifted
    by ``offset`` seconds, so it stays in sync with the video frames written.

    Args:
        source: the file whose first audio stream is copied.
        output: the container being written.
    """

    def __init__(self, source: Path, output: av.container.OutputContainer):
        self._input = _open_input(source)
        self._in_stream = self._input.streams.audio[0]
        self.offset = 0.0  # set by the writer before the first packet is written
        self._done = False
        name = self._in_stream.codec_context.name
        self.copied = name in output.supported_codecs
        if self.copied:
            self._out_stream = output.add_stream_from_template(self._in_stream)
            self._items = self._input.demux(self._in_stream)
        elif "aac" in output.supported_codecs:
            ctx = self._in_stream.codec_context
            self._out_stream = output.add_stream("aac", rate=ctx.sample_rate)
            self._out_stream.layout = ctx.layout.name
            self._resampler = av.AudioResampler(format="fltp", layout=ctx.layout.name,
                                                rate=ctx.sample_rate, frame_size=1024)
            self._samples = 0
            self._items = self._input.decode(self._in_stream)
        else:
            self._input.close()
            raise VideoError(f"cannot put audio into {output.name}: the container takes neither "
                             f"{name} nor AAC (pass --no-audio to drop the sound)")
        self.codec = self._out_stream.codec_context.name
        self._pending = None
        self._output = output

    def _time(self, item: av.Packet | av.AudioFrame) -> float | None:
        return None if item.pts is None else float(item.pts * item.time_base)

    def advance(self, until: float) -> None:
        """Write the audio that starts before ``until`` seconds (input time)."""
        while not self._done:
            item = self._pending if self._pending is not None else next(self._items, None)
            self._pending = None
            if item is None:
                self._done = True
                break
            start = self._time(item)
            if start is None:  # demuxer flush packets carry no data
                continue
            if start >= until:
                self._pending = item
                return
            # A trimmed span starts at the first whole audio packet/frame inside it: one that
            # began earlier would get a negative timestamp, which muxers "fix" by delaying
            # every stream.
            if self.offset > 0 and start < self.offset - 1e-6:
                continue
            self._write(item)

    def _write(self, item: av.Packet | av.AudioFrame) -> None:
        if self.copied:
            shift = round(self.offset / item.time_base)
            item.pts -= shift
            if item.dts is not None:
                item.dts -= shift
            item.stream = self._out_stream
            self._output.mux(item)
            return
        item.pts = None
        for frame in self._resampler.resample(item):
            self._encode(frame)

    def _encode(self, frame: av.AudioFrame | None) -> None:
        if frame is not None:
            frame.pts = self._samples
            frame.time_base = Fraction(1, frame.sample_rate)
            self._samples += frame.samples
        self._output.mux(self._out_stream.encode(frame))

    def finish(self, end: float) -> None:
        """Write the audio up to ``end`` seconds and flush the encoder."""
        self.advance(end)
        if not self.copied:
            for frame in self._resampler.resample(None):
                self._encode(frame)
            self._encode(None)
        self._input.close()

    def close(self) -> None:
        self._input.close()


class VideoWriter:
    """Encode RGB frames to H.264 (yuv420p), keeping timestamps, with the source's audio.

    Args:
        path: output file; the container follows the suffix (.mp4, .mkv, .mov, ...).
        width, height: frame size (even numbers, as yuv420p needs).
        fps: frame rate written into the stream.
        time_base: unit of the ``pts`` passed to ``write`` (the input stream's).
        audio_source: a video/audio file whose first audio stream is copied (None: no audio).
        trim_start: shift all timestamps so that the first frame written is at 0 and drop the
            audio before it (for a span that starts inside the video); otherwise the input's
            timestamps are kept as they are.
        crf: x264 constant rate factor (0 lossless, 18 visually lossless, 23 x264's default).
        preset: x264 speed/size preset (ultrafast ... veryslow).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: Fraction,
                 time_base: Fraction, *, audio_source: str | os.PathLike | None = None,
                 trim_start: bool = False, crf: int = 18, preset: str = "medium"):
        self.path = check_writable(path)
        if width % 2 or height % 2:
            raise VideoError(f"cannot write {self.path}: H.264 yuv420p needs an even frame size, "
                             f"got {width}x{height}")
        self._pending = atomic.PendingFile(self.path, VideoError)
        self._time_base = Fraction(time_base)
        self._fps = Fraction(fps)
        self._trim_start = trim_start
        self._offset_ticks = 0
        self._last_pts: int | None = None
        self.frames = 0
        try:
            self._container = av.open(str(self._pending.tmp), "w", format=_format_for(self.path))
        except (av.FFmpegError, ValueError, OSError) as err:
            raise VideoError(f"cannot write {self.path}: {err}") from None
        self._audio = None
        try:
            if "libx264" not in self._container.supported_codecs:
                raise VideoError(f"cannot write H.264 into {self.path.suffix} files "
                                 f"({self.path}); use .mp4, .mkv or .mov")
            stream = self._container.add_stream("libx264", rate=self._fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = self._time_base
            stream.options = {"crf": str(crf), "preset": preset}
            self._stream = stream
            if audio_source is not None:
                self._audio = _AudioCopy(Path(audio_source), self._container)
        except BaseException:
            self.abort()
            raise

    @property
    def audio_codec(self) -> str | None:
        """The audio codec written (None: no audio)."""
        return None if self._audio is None else self._audio.codec

    @property
    def audio_copied(self) -> bool:
        """Whether the audio packets were copied (False: re-encoded to AAC, or no audio)."""
        return self._audio is not None and self._audio.copied

    def write(self, image: np.ndarray, pts: int) -> None:
        """Encode one RGB uint8 frame (H, W, 3) shown at ``pts`` (input time base)."""
        if self._last_pts is None and self._trim_start:
            self._offset_ticks = int(pts)
            if self._audio is not None:
                self._audio.offset = float(pts * self._time_base)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = int(pts) - self._offset_ticks
        if self._last_pts is not None and frame.pts <= self._last_pts:
            frame.pts = self._last_pts + 1  # a repeated timestamp would stop the muxer
        frame.time_base = self._time_base
        self._last_pts = frame.pts
        if self._audio is not None:  # keep audio and video interleaved in the file
            self._audio.advance(float((frame.pts + self._offset_ticks) * self._time_base))
        try:
            self._container.mux(self._stream.encode(frame))
        except (av.FFmpegError, OSError) as err:
            raise VideoError(f"cannot write {self.path}: {err}") from None
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder, add the audio up to one frame after the last frame written, and
        move the finished file into place."""
        try:
            self._container.mux(self._stream.encode(None))
            if self._audio is not None:
                last = 0 if self._last_pts is None else self._last_pts
                self._audio.finish(float((last + self._offset_ticks) * self._time_base
                                         + 1 / self._fps))
            self._container.close()
            self._pending.commit()
        except (av.FFmpegError, OSError) as err:
            self.abort()
            raise VideoError(f"cannot write {self.path}: {err}") from None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Give up: close everything and delete the unfinished file."""
        if self._audio is not None:
            self._audio.close()
        try:
            self._container.close()
        except (av.FFmpegError, AttributeError, ValueError, OSError):
            pass
        self._pending.abort()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi",
           ".webm": "webm", ".ts": "mpegts", ".flv": "flv"}


def _format_for(path: Path) -> str:
    """The muxer for the output's suffix."""
    try:
        return _MUXERS[path.suffix.lower()]
    except KeyError:
        raise VideoError(f"cannot write {path}: unknown video file type "
                         f"{path.suffix or '(no suffix)'!r}; use .mp4, .mkv or .mov") from None
