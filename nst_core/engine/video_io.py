"""Decode a clip to RGB frames and encode stylised frames back to a clip, with the FFmpeg
bundled in PyAV's wheel (no system ffmpeg). Frames are decoded and encoded one at a time, so
a long clip never sits in memory whole; inputs are opened as video_probe.py allows.
"""

from __future__ import annotations

import io
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from itertools import chain
from pathlib import Path
from typing import IO

import av
import av.error
from av.container import InputContainer
from av.video.stream import VideoStream
from PIL import Image

from nst_core.engine.video_audio import copy_audio
from nst_core.engine.video_probe import (
    VideoInfo,
    VideoSource,
    open_input,
    source_label,
    stream_rate,
    video_stream,
)
from nst_core.errors import ImageError, ParamsError


@dataclass(frozen=True)
class OutputFormat:
    muxer: str
    video_codec: str
    video_options: dict[str, str]
    audio_codec: str
    muxer_options: dict[str, str]


# H.264 in MP4 plays everywhere; CRF 18 is about visually lossless, which the fine texture of
# a stylised frame needs, and preset "slow" costs little beside seconds of stylising a frame.
# faststart puts the MP4 index first, so a clip served from a bucket starts playing at once.
# VP9 with Opus is the open pair browsers play in WebM; CRF 24 with b=0 is constant quality.
OUTPUT_FORMATS = {
    ".mp4": OutputFormat(
        "mp4", "libx264", {"crf": "18", "preset": "slow"}, "aac", {"movflags": "+faststart"}
    ),
    ".webm": OutputFormat(
        "webm",
        "libvpx-vp9",
        {"crf": "24", "b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "2"},
        "libopus",
        {},
    ),
}
# Outputs are converted with the BT.709 matrix to limited range and tagged so (with BT.709
# primaries, sRGB's, and transfer): what players assume of web video, stated, not left to them.
_BT709, _LIMITED_RANGE = 1, 1
# A display matrix's counter-clockwise rotation, undone by PIL's (counter-clockwise) turns.
_UPRIGHT = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


def selected_rate(info: VideoInfo, max_fps: float | Fraction | None) -> Fraction:
    """The frame rate of what read_frames yields with this cap: the source's, or the cap
    when it is lower (frames are then dropped evenly, so the clip keeps its length)."""
    return _capped(info.rate, max_fps)


def read_frames(
    source: VideoSource,
    *,
    max_fps: float | Fraction | None = None,
    start: float = 0.0,
    end: float | None = None,
    max_frames: int | None = None,
    name: str | None = None,
) -> Iterator[Image.Image]:
    """RGB frames, upright, decoded one at a time, whose presentation times (counted from
    the first frame) lie in [start, end), at most `max_frames` of them. With `max_fps` below
    the source rate, each 1/max_fps slot keeps the frame nearest its time. The input is
    opened, and refused, at the call; the frames come as they are iterated."""
    _check_selection(max_fps, start, end, max_frames)
    label = source_label(source, name)
    with ExitStack() as opening:  # closes the input if it is refused
        container = open_input(source, label, opening)
        stream = video_stream(container, label)
        rate = stream_rate(stream, label)
        stack = opening.pop_all()
    cap = _capped(rate, max_fps)
    step = None if cap >= rate else 1 / cap
    frames = _selected(stack, container, stream, label, rate, step, start, end, max_frames)
    weakref.finalize(frames, stack.close)  # also when the frames are dropped unread
    return frames


def _capped(rate: Fraction, max_fps: float | Fraction | None) -> Fraction:
    if max_fps is None:
        return rate
    return min(rate, Fraction(max_fps).limit_denominator(1001))


def _check_selection(
    max_fps: float | Fraction | None, start: float, end: float | None, max_frames: int | None
) -> None:
    problems = {
        f"max_fps: must be > 0, not {max_fps}": max_fps is not None and max_fps <= 0,
        f"start: must be >= 0, not {start}": start < 0,
        f"end: must be after start ({start}), not {end}": end is not None and end <= start,
        f"max_frames: must be >= 1, not {max_frames}": max_frames is not None and max_frames < 1,
    }
    if any(problems.values()):
        raise ParamsError([problem for problem, found in problems.items() if found])


def _selected(
    stack: ExitStack,
    container: InputContainer,
    stream: VideoStream,
    label: str,
    rate: Fraction,
    step: Fraction | None,
    start: float,
    end: float | None,
    max_frames: int | None,
) -> Iterator[Image.Image]:
    # Times are compared within half a frame: containers round them (WebM to 1 ms).
    tolerance = 1 / (2 * rate)
    first, last = Fraction(start), None if end is None else Fraction(end)
    next_slot, kept, index = first, 0, -1
    origin = stream.start_time or 0
    time_base = stream.time_base or 1 / rate
    with stack:
        try:
            if start > 0:  # to the key frame before `start`; the frames before it are skipped
                container.seek(origin + int(first / time_base), stream=stream)
            for frame in container.decode(stream):
                index += 1
                time = (frame.pts - origin) * time_base if frame.pts is not None else index / rate
                if time < first - tolerance:
                    continue
                if last is not None and time >= last - tolerance:
                    return
                if step is not None:
                    if time < next_slot - tolerance:
                        continue
                    while next_slot <= time + tolerance:  # past any gap, without bursts
                        next_slot += step
                image = frame.to_image(src_color_range=frame.color_range)
                turn = _UPRIGHT.get(frame.rotation % 360)
                yield image if turn is None else image.transpose(turn)
                kept += 1
                if kept == max_frames:
                    return
        except av.error.FFmpegError as exc:
            raise ImageError(f"{label}: corrupt video ({exc.strerror})") from None


def output_format(name: str) -> OutputFormat:
    """The output format for the suffix of `name`, or ImageError naming the allowed ones."""
    suffix = Path(name).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        allowed = ", ".join(sorted(OUTPUT_FORMATS))
        raise ImageError(f"{name}: unsupported video format {suffix or '(none)'}; use {allowed}")
    return OUTPUT_FORMATS[suffix]


def write_video(
    destination: str | os.PathLike[str],
    frames: Iterable[Image.Image],
    rate: Fraction,
    *,
    audio_from: VideoSource | None = None,
    start: float = 0.0,
    end: float | None = None,
) -> None:
    """Encode `frames` (frame i at exactly i / rate) to `destination`, whose suffix picks the
    format (OUTPUT_FORMATS). With `audio_from`, the source clip's audio of [start, end) (pass
    the range its frames were read with) goes beside them (video_audio.py). yuv420p needs
    even sides: an odd width or height is cropped by one pixel at the right or bottom, which
    loses an edge line nobody misses, where padding would add a line that is not in the
    picture and stretch its aspect. A failed write leaves no partial file."""
    path = Path(destination)
    fmt = output_format(path.name)
    written = False
    with path.open("wb") as file:
        try:
            reread = lambda: path.open("rb")  # noqa: E731
            _encode(file, reread, fmt, path.name, frames, rate, audio_from, start, end)
            written = True
        finally:
            if not written:
                path.unlink(missing_ok=True)


def encode_video(
    frames: Iterable[Image.Image],
    rate: Fraction,
    name: str,
    *,
    audio_from: VideoSource | None = None,
    start: float = 0.0,
    end: float | None = None,
) -> bytes:
    """write_video's bytes, in the format of the suffix of `name`, for an upload."""
    buffer = io.BytesIO()
    fmt = output_format(name)
    # A copy of what was written, for the muxer to read back (see _encode).
    reread = lambda: io.BytesIO(buffer.getvalue())  # noqa: E731
    _encode(buffer, reread, fmt, name, frames, rate, audio_from, start, end)
    return buffer.getvalue()


def _encode(
    file: IO[bytes],
    reread: Callable[[], IO[bytes]],
    fmt: OutputFormat,
    name: str,
    frames: Iterable[Image.Image],
    rate: Fraction,
    audio_from: VideoSource | None,
    start: float,
    end: float | None,
) -> None:
    remaining = iter(frames)
    first = next(remaining, None)
    if first is None:
        raise ImageError(f"{name}: no frames to write")
    size = first.size
    width, height = size[0] - size[0] % 2, size[1] - size[1] % 2
    if not width or not height:
        raise ImageError(f"{name}: frames of {size[0]} x {size[1]} px are too small for video")
    with ExitStack() as stack:
        # The MP4 muxer reads back what it wrote to move its index to the front (faststart),
        # the only file a muxer here opens: FFmpeg would reopen it by name, which a buffer
        # has not, and a path is never handed to FFmpeg.
        opened = av.open(
            file,
            "w",
            format=fmt.muxer,
            container_options=fmt.muxer_options,
            io_open=lambda _url, _flags, _options: reread(),
        )
        output = stack.enter_context(opened)
        video = output.add_stream(fmt.video_codec, rate=rate, options=fmt.video_options)
        assert isinstance(video, VideoStream)  # the codec is a video codec
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        context = video.codec_context
        context.colorspace = context.color_primaries = context.color_trc = _BT709
        context.color_range = _LIMITED_RANGE
        audio = None
        if audio_from is not None:  # added before the first packet is muxed
            label = source_label(audio_from, None)
            source = open_input(audio_from, label, stack)
            audio = copy_audio(source, label, output, fmt.audio_codec, start, end)
        for index, image in enumerate(chain([first], remaining)):
            if image.size != size:
                raise ImageError(f"{name}: frame {index} is {image.size}, frame 0 was {size}")
            picture = image.convert("RGB").crop((0, 0, width, height))
            frame = av.VideoFrame.from_image(picture).reformat(
                format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG"
            )
            frame.pts = index
            output.mux(video.encode(frame))
            if audio is not None:  # interleaved: the audio up to this frame's end
                output.mux(audio.packets_before(Fraction(index + 1) / rate))
        output.mux(video.encode())
        if audio is not None:
            output.mux(audio.packets_before(None))
