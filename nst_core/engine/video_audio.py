"""A source clip's audio, cut to the range of frames that was stylised and re-encoded for the
output (video_io.write_video), one packet at a time so that it interleaves with the video.

Re-encoding rather than copying packets lets any source codec go into either output (an MP4
from a phone may carry AAC, Opus, AC-3 or PCM), and cuts the range to the sample, not to the
nearest packet. The sample rate and channel layout are kept where the output's codec can
carry them: Opus only runs at 48, 24, 16, 12 or 8 kHz, so other rates become 48 kHz, and a
layout neither AAC nor Opus names is mixed to 5.1 (six channels or more) or stereo.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import av
import av.error
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.packet import Packet

from nst_core.errors import ImageError

KEPT_LAYOUTS = ("mono", "stereo", "quad", "5.1", "7.1")
OPUS_RATE = 48000


class AudioCopy:
    """Encoded packets of the output's audio stream, handed out in time order."""

    def __init__(self, packets: Iterator[Packet]) -> None:
        self._packets = packets
        self._held: Packet | None = None

    def packets_before(self, seconds: Fraction | None) -> list[Packet]:
        """The packets not yet handed out that start before `seconds` (all with None)."""
        ready: list[Packet] = []
        while True:
            packet = self._held if self._held is not None else next(self._packets, None)
            self._held = None
            if packet is None:
                return ready
            if seconds is not None and _start(packet) >= seconds:
                self._held = packet
                return ready
            ready.append(packet)


def copy_audio(
    source: InputContainer,
    label: str,
    output: OutputContainer,
    codec: str,
    start: float,
    end: float | None,
) -> AudioCopy | None:
    """The [start, end) audio of `source` (times from its first video frame, as read_frames
    counts them) as a new `codec` stream of `output`; None if `source` has no audio. Call
    before the first packet is muxed: the stream is added at once."""
    if not source.streams.audio:
        return None
    stream = source.streams.audio[0]
    rate, layout = stream.codec_context.sample_rate, stream.codec_context.layout
    rates = av.codec.Codec(codec, "w").audio_rates
    if rates and rate not in rates:
        rate = OPUS_RATE if OPUS_RATE in rates else max(rates)
    if layout.name not in KEPT_LAYOUTS:
        channels = len(layout.channels)
        layout = av.AudioLayout("mono" if channels == 1 else "5.1" if channels >= 6 else "stereo")
    encoder = output.add_stream(codec, rate=rate)
    assert isinstance(encoder, AudioStream)  # the codec is an audio codec
    encoder.layout = layout
    # The origin of times is the video's first frame, so the audio stays in sync with it.
    timed = source.streams.video[0] if source.streams.video else stream
    origin = float((timed.start_time or 0) * (timed.time_base or 0))
    return AudioCopy(_encoded(source, stream, label, encoder, start, end, origin))


def _encoded(
    source: InputContainer,
    stream: AudioStream,
    label: str,
    encoder: AudioStream,
    start: float,
    end: float | None,
    origin: float,
) -> Iterator[Packet]:
    rate = stream.codec_context.sample_rate
    first = round(start * rate)
    last = None if end is None else round(end * rate)
    resampler = av.AudioResampler(
        format=encoder.codec_context.format, layout=encoder.layout, rate=encoder.rate
    )
    written, position = 0, 0
    try:
        if start > 0 and stream.time_base:
            # To a packet at or before the start; samples before it are cut below.
            source.seek(int((start + origin) / stream.time_base), stream=stream)
        for frame in source.decode(stream):
            if frame.time is not None:
                position = round((frame.time - origin) * rate)
            begin, count = position, frame.samples
            position += count
            if last is not None and begin >= last:
                break
            low, high = max(first - begin, 0), count if last is None else min(last - begin, count)
            if low >= high:
                continue
            if (low, high) != (0, count):
                frame = _sliced(frame, low, high)
            frame.pts = None
            for resampled in resampler.resample(frame):
                resampled.pts, written = written, written + resampled.samples
                yield from encoder.encode(resampled)
        for resampled in resampler.resample(None):
            resampled.pts, written = written, written + resampled.samples
            yield from encoder.encode(resampled)
        yield from encoder.encode(None)
    except av.error.FFmpegError as exc:
        raise ImageError(f"{label}: corrupt audio ({exc.strerror})") from None


def _sliced(frame: av.AudioFrame, low: int, high: int) -> av.AudioFrame:
    """Samples [low, high) of `frame`, in its own format and layout."""
    array = frame.to_ndarray()
    # Planar formats hold one row per channel; packed ones one row of interleaved samples.
    per_sample = 1 if frame.format.is_planar else len(frame.layout.channels)
    part = array[:, low * per_sample : high * per_sample].copy()
    sliced = av.AudioFrame.from_ndarray(part, format=frame.format.name, layout=frame.layout.name)
    sliced.sample_rate = frame.sample_rate
    return sliced


def _start(packet: Packet) -> Fraction:
    if packet.pts is None or packet.time_base is None:
        return Fraction(0)
    return packet.pts * packet.time_base
