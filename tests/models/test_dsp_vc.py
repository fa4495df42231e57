"""The WORLD voice converter, live: 20 ms pieces in, the same words at a new pitch out."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio import AudioStream
from models.audio.asr import SpeechRecognizer, word_error_rate
from models.audio.dsp_vc import ConverterConfig, WorldVoiceConverter
from models.audio.pitch import pitch_shift
from models.audio.tts import PiperSpeech, SpeechConfig

TEXT = (
    "Please bring a warm coat, because the wind is strong tonight. "
    "She painted the old fence a bright shade of green."
)


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """A held-out sentence in the packaged voice: the 'microphone' input."""
    voice = PiperSpeech.load(config=SpeechConfig(noise_scale=0.0, noise_w=0.0))
    stream = AudioStream(voice, clock=lambda: 0.0)
    stream.feed_text(TEXT)
    stream.end_input()
    audio = np.concatenate([c.samples[:, 0] for c in iter(stream.next_chunk, None)])
    return audio, voice.sample_rate


def convert(x: np.ndarray, rate: int, config: ConverterConfig, piece: float = 0.02) -> np.ndarray:
    vc = WorldVoiceConverter(config)
    out = []
    step = round(piece * rate)
    for i in range(0, len(x), step):
        vc.feed_audio(x[i : i + step], rate)
        while (p := vc.next_piece()) is not None:
            out.append(p.samples)
    vc.end_input()
    while (p := vc.next_piece()) is not None:
        out.append(p.samples)
    return np.concatenate(out)


def test_a_harmonic_tone_moves_by_exactly_the_asked_interval() -> None:
    rate = 16_000
    t = np.arange(2 * rate) / rate
    tone = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 15)) * 0.1
    config = ConverterConfig(semitones=4)
    out = convert(tone.astype(np.float32), rate, config)
    assert abs(len(out) - len(tone)) <= round(config.block * rate)
    median, spread = pitch_shift(tone, rate, out, rate, delay=config.crossfade)
    assert median == pytest.approx(4.0, abs=0.1) and spread < 0.2


@pytest.mark.parametrize(("semitones", "formant"), [(4.0, 1.0), (-3.0, 0.9)])
def test_speech_keeps_its_words_at_the_new_pitch(
    speech: tuple[np.ndarray, int], semitones: float, formant: float
) -> None:
    x, rate = speech
    config = ConverterConfig(semitones=semitones, formant=formant)
    out = convert(x, rate, config)
    median, _ = pitch_shift(x, rate, out, config.sample_rate, delay=config.crossfade)
    assert median == pytest.approx(semitones, abs=0.5)
    heard = SpeechRecognizer().transcribe(out, config.sample_rate)
    assert word_error_rate(TEXT, heard) <= 0.15, heard


def test_formant_stretch_moves_the_spectrum_up(speech: tuple[np.ndarray, int]) -> None:
    x, rate = speech

    def centroid(y: np.ndarray) -> float:
        mag = np.abs(np.fft.rfft(y))
        return float((np.fft.rfftfreq(len(y), 1 / 16_000) * mag).sum() / mag.sum())

    same = convert(x, rate, ConverterConfig(semitones=0, formant=1.0))
    higher = convert(x, rate, ConverterConfig(semitones=0, formant=1.25))
    assert centroid(higher) > 1.1 * centroid(same)


def test_output_is_seamless_and_cancel_forgets(speech: tuple[np.ndarray, int]) -> None:
    x, rate = speech
    config = ConverterConfig(semitones=0)
    out = convert(x, rate, config)
    hop = round(config.block * config.sample_rate)
    # no click where blocks meet: the sample-to-sample step at a seam is like elsewhere
    steps = np.abs(np.diff(out))
    seams = steps[hop - 1 :: hop]
    assert seams.max() < 4 * np.percentile(steps, 99.5)
    vc = WorldVoiceConverter(config)
    vc.feed_audio(x[:rate], rate)
    vc.cancel()
    assert vc.next_piece() is None
    with pytest.raises(TypeError, match="no text"):
        vc.feed_text("hello")


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="semitones"):
        ConverterConfig(semitones=30)
    with pytest.raises(ValueError, match="formant"):
        ConverterConfig(formant=3.0)
    with pytest.raises(ValueError, match="whole number"):
        ConverterConfig(block=0.0833)
