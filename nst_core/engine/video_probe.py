"""Open video inputs and read what their headers say, without decoding them.

As for photos (images.py), an input may come from a bucket and is untrusted: only the
demuxers of the containers cameras, phones and the web write may parse it (an image pipe, a
playlist that opens further URLs or a raw stream is refused before it is read), a path is
opened by Python, never handed to FFmpeg as a URL, and every failure to read one becomes one
ImageError line naming the input, never a PyAV traceback.
"""

from __future__ import annotations

import io
import os
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from typing import IO

import av
import av.error
from av.container import InputContainer
from av.video.stream import VideoStream

from nst_core.errors import ImageError

VideoSource = str | os.PathLike[str] | bytes

# FFmpeg's demuxers an input may use: "mov" reads MP4, MOV, M4V and 3GP; "matroska" MKV and WebM.
INPUT_DEMUXERS = "mov,matroska,avi,mpegts"
INPUT_FORMATS_TEXT = "MP4, MOV, MKV, WebM, AVI or MPEG-TS"


@dataclass(frozen=True)
class VideoInfo:
    """What a clip's header says of its first video stream. width and height are as stored:
    a clip with a display rotation of +-90 degrees (a phone held upright) comes out of
    read_frames with them swapped. frame_count is the stored count where the container keeps
    one (MP4), else duration x rate, rounded."""

    width: int
    height: int
    rate: Fraction
    duration: float
    frame_count: int
    has_audio: bool
    codec: str

    @property
    def total_pixels(self) -> int:
        """Frames x pixels: the work a clip asks for, bounded before it is decoded."""
        return self.width * self.height * self.frame_count


def probe(source: VideoSource, name: str | None = None) -> VideoInfo:
    """The header facts of `source` (a path, or bytes from a bucket), without decoding it, so
    that validating a manifest can bound its frames x pixels cheaply. ImageError naming the
    input (`name`, else its path) if it is not a video in an allowed container or has no
    video stream (audio only)."""
    label = source_label(source, name)
    with ExitStack() as stack:
        container = open_input(source, label, stack)
        stream = video_stream(container, label)
        rate = stream_rate(stream, label)
        duration = _duration(container, stream)
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            rate=rate,
            duration=duration,
            frame_count=stream.frames or round(duration * rate),
            has_audio=bool(container.streams.audio),
            codec=stream.codec_context.name,
        )


def source_label(source: VideoSource, name: str | None) -> str:
    """How errors name an input: `name`, else its path, else its length in bytes."""
    if name is not None:
        return name
    return f"video of {len(source):,} bytes" if isinstance(source, bytes) else os.fspath(source)


def open_input(source: VideoSource, label: str, stack: ExitStack) -> InputContainer:
    """`source` opened for reading (closed with `stack`), or ImageError naming `label`."""
    try:
        file: IO[bytes]
        if isinstance(source, bytes):
            file = io.BytesIO(source)
        else:
            file = stack.enter_context(open(source, "rb"))  # noqa: SIM115 (the stack closes it)
        options = {"format_whitelist": INPUT_DEMUXERS}
        return stack.enter_context(av.open(file, "r", container_options=options))
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except (av.error.InvalidDataError, av.error.ArgumentError):
        # ArgumentError: FFmpeg recognised a format outside INPUT_DEMUXERS (a PNG, say).
        raise ImageError(
            f"{label}: not a video in a supported format ({INPUT_FORMATS_TEXT})"
        ) from None
    except av.error.FFmpegError as exc:
        raise ImageError(f"{label}: unreadable video ({exc.strerror})") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot be read ({exc.strerror or exc})") from None


def video_stream(container: InputContainer, label: str) -> VideoStream:
    """The first video stream, or ImageError (an audio-only file, say)."""
    if not container.streams.video:
        raise ImageError(f"{label}: no video stream (audio only?)")
    stream = container.streams.video[0]
    if not stream.codec_context.width or not stream.codec_context.height:
        raise ImageError(f"{label}: video stream without a picture size")
    return stream


def stream_rate(stream: VideoStream, label: str) -> Fraction:
    """Frames per second: the stream's average, else FFmpeg's guess from its timestamps."""
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise ImageError(f"{label}: video stream without a frame rate")
    return Fraction(rate)


def _duration(container: InputContainer, stream: VideoStream) -> float:
    """Seconds: the stream's own duration, else Matroska's per-stream DURATION tag, else the
    container's (that of its longest stream)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    try:
        hours, minutes, seconds = stream.metadata.get("DURATION", "").split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return container.duration / av.time_base if container.duration else 0.0
