"""Streaming video input and output with PyAV: frames in, frames out, audio carried along.

``VideoReader`` decodes one frame at a time (RGB uint8 with its timestamp), so memory does
not grow with the length of the video; ``timestamps()`` and ``span()`` read any run of frames
after a seek, exactly as one pass reads them. ``VideoWriter`` encodes H.264 (yuv420p) with the
input's frame rate and timestamps and copies the input's audio packets into the output
without re-encoding when the output container accepts the codec (else re-encodes to AAC),
trimmed to the span of the video frames written. ``join`` puts videos written that way one
after the other into one file without re-encoding, with the audio. Outputs are written to a
temporary file beside the target and renamed into place when complete
(``atomic.PendingFile``), so a failed run leaves no broken file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import accumulate, chain
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


def reason(err: BaseException) -> str:
    """What went wrong, without the ``[Errno N]`` and the file name that PyAV's (and the OS's)
    errors add (the message names the file already): ``[Errno 1094995529] Invalid data found
    when processing input: 'x.mp4'`` -> ``invalid data found when processing input``."""
    text = (getattr(err, "strerror", None) or str(err)).strip()
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _open_input(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video not found: {path}")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoError(f"cannot read video {path}: {reason(err)}") from None
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
        tb = self.info.time_base
        for index, (pts, frame) in enumerate(self._frames(self._container)):
            yield Frame(frame.to_ndarray(format="rgb24"), pts, float(pts * tb), index)

    def timestamps(self) -> list[int]:
        """The timestamps of the frames iteration returns, in order, without converting a
        picture. They are found by decoding, not from the packets: only the decoder knows which
        packets become frames (edit lists, dropped leading pictures), and decoding alone is a
        small fraction of the time upscaling takes."""
        container = _open_input(self.path)
        try:
            return [pts for pts, _ in self._frames(container)]
        finally:
            container.close()

    def span(self, timestamps: Sequence[int], first: int = 0, end: int | None = None
             ) -> Iterator[Frame]:
        """The frames iteration returns at positions ``first`` to ``end - 1`` (default: the
        last), given the timestamps of all of them (``timestamps()``). Decoding starts at the
        keyframe before the first, so a span in the middle of a long video costs no more than
        the span; the frames are those of one pass over the whole video (checked: VideoError
        otherwise)."""
        end = len(timestamps) if end is None else end
        container = _open_input(self.path)
        try:
            # Seek to a frame whose timestamp no earlier frame reaches: the first frame at or
            # after it is then that one (with a repeated timestamp it could be an earlier one).
            start = _seek_point(timestamps, first)
            frames = None if start == 0 else self._after_seek(container, timestamps[start])
            if frames is None:  # the first frames, or a file that cannot seek exactly
                container.close()
                container = _open_input(self.path)
                start, frames = 0, self._frames(container)
            tb = self.info.time_base
            for index, pts, frame in self._checked(frames, timestamps[start:end], start):
                if index >= first:  # those before only lead up to it: not converted
                    yield Frame(frame.to_ndarray(format="rgb24"), pts, float(pts * tb), index)
        finally:
            container.close()

    def _checked(self, frames: Iterator[tuple[int, av.VideoFrame]], timestamps: Sequence[int],
                 first_index: int) -> Iterator[tuple[int, int, av.VideoFrame]]:
        """(index, pts, frame) of ``frames``, checked to have ``timestamps``."""
        index = first_index
        try:
            for (pts, frame), expected in zip(frames, timestamps, strict=False):
                if pts != expected:
                    raise VideoError(f"cannot split {self.path} into segments: frame {index} "
                                     f"decodes at {pts}, not {expected} as in one pass (add "
                                     "--restart --segment_frames N, N above its frame count, "
                                     "to upscale it in one segment)")
                yield index, pts, frame
                index += 1
        except av.FFmpegError as err:
            raise VideoError(f"cannot decode video {self.path} at frame {index}: "
                             f"{reason(err)}") from None
        if index - first_index < len(timestamps):
            raise VideoError(f"cannot read video {self.path}: it ends at frame {index}, before "
                             f"frame {first_index + len(timestamps) - 1} (add --restart if it "
                             "was replaced since the work began)")

    def _after_seek(self, container: av.container.InputContainer, pts: int
                    ) -> Iterator[tuple[int, av.VideoFrame]] | None:
        """(pts, frame) from the frame at ``pts`` on, decoded after a seek to the keyframe at
        or before it; None when the stream has no timestamps or the seek went past ``pts``."""
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            container.seek(pts, stream=stream)  # backward: the keyframe at or before pts
            decoded = container.decode(stream)
            first = next((f for f in decoded if f.pts is None or f.pts >= pts), None)
        except av.FFmpegError:
            return None
        if first is None or first.pts != pts:
            return None
        rest = ((-1 if f.pts is None else int(f.pts), f) for f in decoded)
        return chain([(int(first.pts), first)], rest)

    def _frames(self, container: av.container.InputContainer
                ) -> Iterator[tuple[int, av.VideoFrame]]:
        """(pts, frame) of the frames of the span, decoded from its start."""
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # decode with FFmpeg's frame threads
        if self.start_time > 0:
            container.seek(int(self.start_time / stream.time_base), stream=stream)
        frame_ticks = 1 / (self.info.fps * self.info.time_base)
        half_frame = 0.5 / float(self.info.fps)
        count = 0
        try:
            for frame in container.decode(stream):
                if self.max_frames is not None and count >= self.max_frames:
                    return
                # Streams without timestamps (raw H.264, some AVIs): count frames instead.
                pts = frame.pts if frame.pts is not None else round(count * frame_ticks)
                if float(pts * self.info.time_base) < self.start_time - half_frame:
                    continue
                yield int(pts), frame
                count += 1
        except av.FFmpegError as err:
            raise VideoError(f"cannot decode video {self.path} after {count} frames: "
                             f"{reason(err)}") from None
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


def _seek_point(timestamps: Sequence[int], first: int) -> int:
    """The last position at or before ``first`` whose timestamp is above every earlier one
    (0 when there is none): after a seek to its timestamp, the first frame decoded at or past
    it is that very frame, even when the video repeats timestamps or has them out of order."""
    highest = list(accumulate(timestamps[:first], max))  # highest[i]: of frames 0 to i
    for position in range(first, 0, -1):
        if timestamps[position] > highest[position - 1]:
            return position
    return 0


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
        check_output_format(self.path)
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
            raise VideoError(f"cannot write {self.path}: {reason(err)}") from None
        self._audio = None
        try:
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
            raise VideoError(f"cannot write {self.path}: {reason(err)}") from None
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
            raise VideoError(f"cannot write {self.path}: {reason(err)}") from None
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


@dataclass(frozen=True)
class Joined:
    """What ``join`` wrote.

    Args:
        path: the output file.
        frames: video frames (packets) written.
        audio_codec: the audio codec written (None: no audio).
        audio_copied: whether the audio packets were copied (False: re-encoded to AAC).
    """

    path: Path
    frames: int
    audio_codec: str | None
    audio_copied: bool


def join(parts: Sequence[tuple[Path, int]], path: str | os.PathLike, *, time_base: Fraction,
         fps: Fraction, audio_source: str | os.PathLike | None = None,
         audio_offset: float = 0.0) -> Joined:
    """Put the videos ``parts`` (made by ``VideoWriter`` with the same size and encoder
    settings, each starting at 0) one after the other into ``path`` without re-encoding.

    Args:
        parts: (file, start) pairs: each part's frames are shifted by ``start`` ticks of
            ``time_base`` (the input's), so the output has the timestamps the frames had.
        path: the output; written to a temporary file and renamed into place when complete.
        time_base: the unit of the starts.
        fps: the frame rate; the audio runs to one frame after the last frame.
        audio_source: a file whose first audio stream is copied (as ``VideoWriter`` does).
        audio_offset: input time (seconds) of output time 0; audio before it is dropped.
    """
    path = check_writable(path)
    pending = atomic.PendingFile(path, VideoError)
    audio = None
    output = None
    try:
        output = av.open(str(pending.tmp), "w", format=_format_for(path))
        with av.open(str(parts[0][0])) as first:
            template = first.streams.video[0]
            stream = output.add_stream_from_template(template)
            stream.codec_context.framerate = Fraction(fps)  # else Matroska takes the tick rate
        if audio_source is not None:
            audio = _AudioCopy(Path(audio_source), output)
            audio.offset = audio_offset
        copier = _PartCopier(output, stream, audio, Fraction(time_base), parts)
        copier.copy_all()
        if audio is not None:
            audio.finish(copier.end + audio_offset + 1 / float(fps))
        output.close()
        pending.commit()
    except (av.FFmpegError, OSError, ValueError) as err:
        _discard(output, audio, pending)
        raise VideoError(f"cannot write {path}: {reason(err)}") from None
    except BaseException:
        _discard(output, audio, pending)
        raise
    return Joined(path, copier.frames, None if audio is None else audio.codec,
                  audio is not None and audio.copied)


def _discard(output: av.container.OutputContainer | None, audio: _AudioCopy | None,
             pending: atomic.PendingFile) -> None:
    if audio is not None:
        audio.close()
    if output is not None:
        try:
            output.close()
        except (av.FFmpegError, ValueError, OSError):
            pass
    pending.abort()


class _PartCopier:
    """Copies the video packets of parts into one stream, each part shifted to its start.

    The decode timestamps are made anew for the whole stream: each part's encoder chose its
    own B-frame delay (none for a part too short for B-frames), so the parts' own would
    collide at the seams. Packet j (decode order) gets the presentation time of frame j - D
    (presentation order), D being the largest reordering of any part: increasing, and never
    after the packet's own presentation time.

    Args:
        output: the container being written.
        stream: its video stream (made from the first part).
        audio: the audio being copied alongside (None: no audio).
        time_base: the unit of the parts' starts.
        parts: (file, start) pairs, in order.
    """

    def __init__(self, output: av.container.OutputContainer, stream: av.VideoStream,
                 audio: _AudioCopy | None, time_base: Fraction,
                 parts: Sequence[tuple[Path, int]]):
        self.output, self.stream, self.audio = output, stream, audio
        self.frames = 0
        self.end = 0.0  # output time of the last frame so far (seconds)
        self._extradata = bytes(stream.codec_context.extradata or b"")
        with av.open(str(parts[0][0])) as first:
            self._unit = first.streams.video[0].time_base
        # Whole ticks: the MP4 muxer made the parts' time base the input's times a power of 2.
        self._parts = [(Path(part), round(start * Fraction(time_base) / self._unit))
                       for part, start in parts]
        times, self._delay = [], 0
        for part, shift in self._parts:
            shown = [pts + shift for pts in self._timestamps(part)]
            rank = {pts: r for r, pts in enumerate(sorted(shown))}
            self._delay = max([self._delay, *(j - rank[pts] for j, pts in enumerate(shown))])
            times.extend(shown)
        self._times = sorted(times)

    def _timestamps(self, part: Path) -> list[int]:
        """The presentation timestamps of a part's packets, in decode order."""
        with av.open(str(part)) as container:
            source = container.streams.video[0]
            if bytes(source.codec_context.extradata or b"") != self._extradata or \
                    source.time_base != self._unit:
                raise VideoError(f"cannot join {part}: it was encoded with other settings "
                                 "than the first part")
            return [packet.pts for packet in container.demux(source) if packet.pts is not None]

    def _decode_time(self, j: int) -> int:
        """Packet j's decode timestamp: frame j - delay's presentation time (extrapolated
        back from the first frame's for the first packets)."""
        if j >= self._delay:
            return self._times[j - self._delay]
        step = self._times[1] - self._times[0] if len(self._times) > 1 else 1
        return self._times[0] - (self._delay - j) * step

    def copy_all(self) -> None:
        for part, shift in self._parts:
            with av.open(str(part)) as container:
                source = container.streams.video[0]
                for packet in container.demux(source):
                    if packet.pts is not None:  # not the demuxer's flush packet
                        self._write(packet, shift)

    def _write(self, packet: av.Packet, shift: int) -> None:
        packet.pts += shift
        packet.dts = self._decode_time(self.frames)
        time = float(packet.pts * packet.time_base)
        if self.audio is not None:  # keep audio and video interleaved in the file
            self.audio.advance(time + self.audio.offset)
        self.end = max(self.end, time)
        packet.stream = self.stream
        self.output.mux(packet)
        self.frames += 1


_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi",
           ".webm": "webm", ".ts": "mpegts", ".flv": "flv"}


# The output file types (by suffix).
WRITABLE_SUFFIXES = frozenset(_MUXERS)


def _format_for(path: Path) -> str:
    """The muxer for the output's suffix."""
    try:
        return _MUXERS[path.suffix.lower()]
    except KeyError:
        raise VideoError(f"cannot write {path}: unknown video file type "
                         f"{path.suffix or '(no suffix)'!r}; use .mp4, .mkv or .mov") from None


def check_output_format(path: str | os.PathLike, audio_codec: str | None = None) -> None:
    """Refuse, before any work, an output whose container cannot hold what will be written:
    H.264 video and, with ``audio_codec`` (the input's), that audio or AAC (VideoError naming
    the file). The muxer is asked on a container in memory: nothing is written."""
    path = Path(path)
    muxer = _format_for(path)
    try:
        with av.open(io.BytesIO(), "w", format=muxer) as probe:
            codecs = set(probe.supported_codecs)
    except (av.FFmpegError, ValueError) as err:
        raise VideoError(f"cannot write {path}: {reason(err)}") from None
    if "libx264" not in codecs:
        raise VideoError(f"cannot write H.264 into {path.suffix} files ({path}); use .mp4, "
                         ".mkv or .mov")
    if audio_codec is not None and audio_codec not in codecs and "aac" not in codecs:
        raise VideoError(f"cannot put audio into {path}: {path.suffix} files take neither "
                         f"{audio_codec} nor AAC (use .mkv, or --no-audio to drop the sound)")
