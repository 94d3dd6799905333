"""Video probing, decoding and encoding (nst_core/engine/video_*.py) on tiny clips made here
with PyAV itself: 8 frames of 64 x 48 px of moving squares at 12 fps, with a 440 Hz tone."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from nst_core.engine.video_io import encode_video, read_frames, selected_rate, write_video
from nst_core.engine.video_probe import probe
from nst_core.errors import ImageError, ParamsError

WIDTH, HEIGHT, RATE, FRAMES = 64, 48, 12, 8
TONE_HZ = 440
AUDIO_FRAME = 1024  # samples in an AAC frame (an Opus one has 960): the audio's granularity
# (container, video codec, audio codec, audio sample rate) of the clips made here
CLIPS = {
    "mp4": ("mp4", "libx264", "aac", 44100),
    "webm": ("webm", "libvpx-vp9", "libopus", 48000),
}


def picture(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Frame `index`: a red square moving right and a green one moving down, on blue."""
    array = np.zeros((height, width, 3), np.uint8)
    array[...] = (30, 40, 140)
    array[4:20, 4 * index : 4 * index + 16] = (230, 40, 40)
    array[3 * index : 3 * index + 14, 40:54] = (40, 220, 60)
    return array[:height, :width]


def make_clip(
    path: Path,
    kind: str = "mp4",
    *,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    video: bool = True,
    audio: bool = True,
    rotation: int = 0,
) -> Path:
    muxer, video_codec, audio_codec, sample_rate = CLIPS[kind]
    with av.open(str(path), "w", format=muxer) as output:
        if video:
            stream = output.add_stream(video_codec, rate=RATE)
            stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
            if rotation:
                stream.set_display_rotation(rotation)
        if audio:
            sound = output.add_stream(audio_codec, rate=sample_rate)
            sound.layout = "stereo"
        if video:
            for index in range(FRAMES):
                frame = av.VideoFrame.from_ndarray(picture(index, *size), format="rgb24")
                frame.pts = index
                output.mux(stream.encode(frame))
            output.mux(stream.encode())
        if audio:
            samples = sample_rate * FRAMES // RATE
            tone = 0.3 * np.sin(2 * np.pi * TONE_HZ * np.arange(samples) / sample_rate)
            for begin in range(0, samples, AUDIO_FRAME):
                part = tone[begin : begin + AUDIO_FRAME].astype(np.float32)
                frame = av.AudioFrame.from_ndarray(np.stack([part, part]), "fltp", "stereo")
                frame.sample_rate, frame.pts = sample_rate, begin
                output.mux(sound.encode(frame))
            output.mux(sound.encode())
    return path


@pytest.fixture(params=sorted(CLIPS))
def clip(request, tmp_path) -> Path:
    return make_clip(tmp_path / f"clip.{request.param}", request.param)


def decoded_audio(source: Path | bytes) -> tuple[np.ndarray, int, str]:
    """(samples of the first channel, sample rate, layout) of a clip's audio."""
    opened = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with av.open(opened) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        layout = stream.layout.name
        rate = stream.codec_context.sample_rate
    channels = [frame[0] if frame.shape[0] > 1 else frame[0, ::2] for frame in frames]
    return np.concatenate(channels).astype(np.float64), rate, layout


def mean_difference(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def test_probe_reports_size_rate_frames_duration_and_audio_from_path_and_bytes(clip):
    for source in (clip, clip.read_bytes()):
        info = probe(source)
        assert (info.width, info.height, info.rate) == (WIDTH, HEIGHT, RATE)
        assert info.frame_count == FRAMES
        assert info.duration == pytest.approx(FRAMES / RATE, abs=0.01)
        assert info.has_audio
        assert info.codec == {"mp4": "h264", "webm": "vp9"}[clip.suffix[1:]]
        assert info.total_pixels == WIDTH * HEIGHT * FRAMES


@pytest.mark.parametrize(
    "source_kind, output_suffix", [("mp4", ".mp4"), ("webm", ".webm"), ("mp4", ".webm")]
)
def test_read_then_write_keeps_frames_rate_audio_and_pictures(tmp_path, source_kind, output_suffix):
    source = make_clip(tmp_path / f"source.{source_kind}", source_kind)
    info = probe(source)
    output = tmp_path / f"styled{output_suffix}"
    inputs = list(read_frames(source))
    write_video(output, iter(inputs), selected_rate(info, None), audio_from=source)

    written = probe(output)
    assert (written.width, written.height, written.rate) == (WIDTH, HEIGHT, RATE)
    assert written.frame_count == FRAMES and written.has_audio
    frames = list(read_frames(output))
    assert len(frames) == FRAMES
    for index, frame in enumerate(frames):  # each looks like its own input frame, no other
        differences = [mean_difference(frame, other) for other in inputs]
        assert differences[index] < 2.5, differences
        assert int(np.argmin(differences)) == index

    source_audio, source_rate, _ = decoded_audio(source)
    audio, rate, layout = decoded_audio(output)
    # AAC keeps the 44.1 kHz; Opus runs at 48 kHz.
    assert (rate, layout) == ({".mp4": source_rate, ".webm": 48000}[output_suffix], "stereo")
    assert len(audio) / rate == pytest.approx(
        len(source_audio) / source_rate, abs=AUDIO_FRAME / rate
    )
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)] == pytest.approx(
        TONE_HZ, abs=3
    )


def test_encode_video_returns_the_clip_as_bytes(tmp_path):
    source = make_clip(tmp_path / "source.mp4")
    data = encode_video(read_frames(source), Fraction(RATE), "styled.webm", audio_from=source)
    assert data[:4] == b"\x1a\x45\xdf\xa3"  # Matroska's (WebM's) magic number
    written = probe(data)
    assert (written.codec, written.frame_count, written.has_audio) == ("vp9", FRAMES, True)
    mp4 = encode_video(read_frames(source), Fraction(RATE), "styled.mp4", audio_from=source)
    assert probe(mp4).frame_count == FRAMES
    assert 0 < mp4.index(b"moov") < mp4.index(b"mdat")  # index first: plays while it loads


def test_max_fps_halves_a_12_fps_clip(clip):
    every = list(read_frames(clip))
    assert selected_rate(probe(clip), 6) == 6
    assert selected_rate(probe(clip), 24) == RATE
    halved = list(read_frames(clip, max_fps=6))
    assert len(halved) == FRAMES // 2
    for kept, index in zip(halved, range(0, FRAMES, 2), strict=True):
        assert np.array_equal(np.asarray(kept), np.asarray(every[index]))
    assert len(list(read_frames(clip, max_fps=RATE))) == FRAMES


def test_start_and_end_select_the_frames_inside_the_range(clip):
    every = list(read_frames(clip))
    # Frames 3, 4 and 5 are at 0.25, 0.333 and 0.417 s; frame 6, at 0.5 s, is outside.
    inside = list(read_frames(clip, start=0.25, end=0.5))
    assert len(inside) == 3
    for kept, index in zip(inside, (3, 4, 5), strict=True):
        assert np.array_equal(np.asarray(kept), np.asarray(every[index]))
    assert len(list(read_frames(clip, start=0.25))) == FRAMES - 3
    assert len(list(read_frames(clip, start=0.25, max_frames=2))) == 2


def test_audio_of_a_range_is_that_range(clip):
    frames = read_frames(clip, start=0.25, end=0.5)
    data = encode_video(frames, Fraction(RATE), "part.mp4", audio_from=clip, start=0.25, end=0.5)
    audio, rate, _ = decoded_audio(data)
    assert len(audio) / rate == pytest.approx(0.25, abs=AUDIO_FRAME / rate)
    assert probe(data).frame_count == 3


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_odd_sizes_are_cropped_to_even_at_the_right_and_bottom(tmp_path, suffix):
    frames = [Image.fromarray(picture(index, 63, 47)) for index in range(4)]
    output = tmp_path / f"odd{suffix}"
    write_video(output, frames, Fraction(RATE))
    info = probe(output)
    assert (info.width, info.height, info.frame_count) == (62, 46, 4)
    first = next(read_frames(output))
    assert mean_difference(first, picture(0, 63, 47)[:46, :62]) < 3.0


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture(0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "kind", ["random bytes", "png bytes", "png file", "empty bytes", "text file", "audio only"]
)
def test_an_input_that_is_not_a_video_raises_one_line_naming_it(tmp_path, kind):
    random = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    name = f"inputs/{kind.replace(' ', '-')}"
    source: Path | bytes
    if kind == "random bytes":
        source = random
    elif kind in ("png bytes", "png file"):
        source = _png_bytes()
    elif kind == "empty bytes":
        source = b""
    elif kind == "text file":
        source = b"not a video\n"
    else:
        source = make_clip(tmp_path / "sound.m4a", video=False).read_bytes()
    if kind.endswith("file"):
        (tmp_path / "input.mp4").write_bytes(source)
        source, name = tmp_path / "input.mp4", str(tmp_path / "input.mp4")
    for call in (
        lambda: probe(source, name) if isinstance(source, bytes) else probe(source),
        lambda: (
            read_frames(source, name=name) if isinstance(source, bytes) else read_frames(source)
        ),
    ):
        with pytest.raises(ImageError) as raised:
            call()
        message = str(raised.value)
        assert message.startswith(f"{name}: ") and "\n" not in message
        assert ("no video stream" if kind == "audio only" else "not a video") in message


def test_a_missing_file_and_an_unknown_output_format_are_one_line_errors(tmp_path):
    with pytest.raises(ImageError, match=r"missing\.mp4: no such file$"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(ImageError, match=r"out\.avi: unsupported video format \.avi; use "):
        write_video(tmp_path / "out.avi", [Image.new("RGB", (8, 8))], Fraction(RATE))
    assert not (tmp_path / "out.avi").exists()


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    frames = [Image.new("RGB", (16, 16)), Image.new("RGB", (18, 16))]
    with pytest.raises(ImageError, match=r"frame 1 is \(18, 16\), frame 0 was \(16, 16\)"):
        write_video(tmp_path / "out.mp4", frames, Fraction(RATE))
    assert not (tmp_path / "out.mp4").exists()


def test_a_clip_without_audio_writes_without_audio(tmp_path):
    silent = make_clip(tmp_path / "silent.mp4", audio=False)
    assert not probe(silent).has_audio
    output = tmp_path / "styled.mp4"
    write_video(output, read_frames(silent), Fraction(RATE), audio_from=silent)
    with av.open(str(output)) as container:
        assert len(container.streams.audio) == 0 and len(container.streams.video) == 1
    assert probe(output).frame_count == FRAMES


def test_frames_of_a_rotated_clip_come_upright(tmp_path):
    # A display rotation of 90 degrees counter-clockwise, as a phone held upright records.
    rotated = make_clip(tmp_path / "rotated.mp4", audio=False, rotation=90)
    assert (probe(rotated).width, probe(rotated).height) == (WIDTH, HEIGHT)  # as stored
    first = next(read_frames(rotated))
    assert first.size == (HEIGHT, WIDTH)
    upright = Image.fromarray(picture(0)).transpose(Image.Transpose.ROTATE_90)
    assert mean_difference(first, upright) < 3.0


def test_frame_selections_that_cannot_be_met_are_parameter_errors(clip):
    with pytest.raises(ParamsError) as raised:
        read_frames(clip, max_fps=0, start=-1, end=-2, max_frames=0)
    assert [problem.split(":")[0] for problem in raised.value.problems] == [
        "max_fps",
        "start",
        "end",
        "max_frames",
    ]
