"""Streaming text-to-speech with a Piper voice: text in pieces, audio out as it is made.

Text goes through three stages, each releasing work as early as it safely can:
1. PhraseChunker: pieces -> phrases at clause boundaries (the voice starts on
   the first phrase, not the first sentence);
2. the voice's front, once per sentence of a phrase (phonemes, durations, latent);
3. the voice's decoder over windows of that latent: the first window is short
   (first audio sooner), the rest longer (fewer calls, same audio).

Each piece carries the phonemes that start in it (PhonemeMark), timed by the
voice's own duration predictor, for an avatar's lips. ``cancel`` (barge-in)
drops all pending text and audio; a piece being decoded when it comes is thrown
away, so no audio of the old text leaves after the cancel returns.

Usage::

    speech = PiperSpeech.load()
    stream = AudioStream(speech)            # engine.audio: pts on a clock
    stream.feed_text("Hello there, how are you?")
    stream.end_input()
    while (chunk := stream.next_chunk()) is not None:
        ...
"""

from __future__ import annotations

import collections
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.audio import AudioPiece, InputKind
from engine.media import PhonemeMark
from models.audio.chunker import ChunkerConfig, PhraseChunker
from models.audio.phonemes import BOS, PAD, Backend, EspeakPhonemizer, phoneme_ids
from models.audio.piper import PiperVoice, SentenceLatent, window_spans


@dataclass(frozen=True)
class SpeechConfig:
    """How text becomes pieces of audio."""

    first_window: int = 8  # decoder frames in an utterance's first piece (8 x 256 / 22050 = 93 ms)
    window: int = 64  # most decoder frames in a piece (0.74 s at 22.05 kHz); pieces double to it
    length_scale: float | None = None  # None: the voice's own (> 1 speaks slower)
    noise_scale: float | None = None  # None: the voice's own; 0 gives the same audio every time
    noise_w: float | None = None
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)

    def __post_init__(self) -> None:
        if self.first_window < 1 or self.window < 1:
            raise ValueError(f"windows must be >= 1 frame, got {self.first_window}, {self.window}")


@dataclass
class _Sentence:
    latent: SentenceLatent
    marks: list[tuple[str, int, int]]  # phoneme, start, end in samples from the sentence start
    spans: list[tuple[int, int]]  # decoder-frame windows, one piece each
    next: int = 0  # the next span to decode


def phoneme_spans(phonemes: list[str], id_map: dict[str, list[int]]) -> list[tuple[str, int, int]]:
    """Each phoneme's [start, end) in the id sequence Piper builds (its pad included)."""
    spans, at = [], len(id_map[BOS]) + len(id_map[PAD])
    for p in phonemes:
        if p not in id_map:
            continue
        n = len(id_map[p]) + len(id_map[PAD])
        spans.append((p, at, at + n))
        at += n
    return spans


def _is_phone(p: str) -> bool:
    """IPA letters only: not stress, length, spaces or punctuation (no mouth shape of their own)."""
    return unicodedata.category(p) in ("Ll", "Lu", "Lo")


class PiperSpeech:
    """An engine AudioGenerator (text in) over a PiperVoice."""

    channels = 1
    takes: InputKind = "text"

    def __init__(
        self,
        voice: PiperVoice,
        phonemizer: EspeakPhonemizer | None = None,
        config: SpeechConfig | None = None,
    ) -> None:
        self.voice = voice
        self.config = config or SpeechConfig()
        self.phonemizer = phonemizer or EspeakPhonemizer(voice.config.espeak_voice)
        self._chunker = PhraseChunker(self.config.chunker)
        self._phrases: collections.deque[str] = collections.deque()
        self._sentences: collections.deque[list[str]] = collections.deque()
        self._current: _Sentence | None = None
        self._generation = 0  # bumped by cancel: work begun before it is dropped
        self._cold = True  # nothing is playing: the next sentence starts with a short piece
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        voice: Path | None = None,
        *,
        config: SpeechConfig | None = None,
        threads: int | None = None,
        phonemizer: Backend = "auto",
    ) -> PiperSpeech:
        """The packaged English voice (or a Piper ``.onnx`` path) with its phonemiser."""
        v = PiperVoice.load(voice, threads=threads)
        return cls(v, EspeakPhonemizer(v.config.espeak_voice, phonemizer), config)

    @property
    def sample_rate(self) -> int:
        return self.voice.sample_rate

    @property
    def idle(self) -> bool:
        """Nothing to say: no phrase, sentence or window pending (text may be held back)."""
        with self._lock:
            return not (self._phrases or self._sentences or self._current)

    def feed_text(self, text: str) -> None:
        with self._lock:
            self._phrases.extend(self._chunker.push(text))

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        raise TypeError("PiperSpeech speaks text; it takes no audio input")

    def end_input(self) -> None:
        with self._lock:
            self._phrases.extend(self._chunker.flush())

    def cancel(self) -> None:
        with self._lock:
            self._generation += 1
            self._chunker.reset()
            self._phrases.clear()
            self._sentences.clear()
            self._current = None
            self._cold = True

    def reset(self) -> None:
        self.cancel()

    def next_piece(self) -> AudioPiece | None:
        cold = self._cold
        while True:
            phrase: str | None = None
            phonemes: list[str] | None = None
            with self._lock:
                generation, current = self._generation, self._current
                if current is None:
                    if self._sentences:
                        phonemes = self._sentences.popleft()
                    elif self._phrases:
                        phrase = self._phrases.popleft()
                    else:
                        self._cold = True  # what plays now may run out before more text
                        return None
            # model work runs outside the lock, so feed_text and cancel stay instant
            if phrase is not None:
                sentences = self.phonemizer.sentences(phrase)
                with self._lock:
                    if generation != self._generation:
                        return None
                    self._sentences.extendleft(reversed(sentences))
                continue
            if current is None:
                assert phonemes is not None
                current = self._start(phonemes, cold)
                cold = False
                if not current.spans:
                    continue
            lo, hi = current.spans[current.next]
            audio = self.voice.decode_span(current.latent, lo, hi)
            with self._lock:
                if generation != self._generation:
                    return None  # cancelled while this piece was made: it never leaves
                current.next += 1
                finished = current.next == len(current.spans)
                self._current = None if finished else current
                last = finished and not (self._phrases or self._sentences or self._chunker.pending)
            self._cold = last
            hop = self.voice.config.hop_length
            start, end = lo * hop, hi * hop
            marks = tuple(
                PhonemeMark(p, a - start, b - start)
                for p, a, b in current.marks
                if start <= a < end
            )
            return AudioPiece(audio, marks, end_of_utterance=last)

    def _start(self, phonemes: list[str], cold: bool) -> _Sentence:
        """The front for one sentence, and its phonemes' times in samples."""
        c, v = self.config, self.voice
        id_map = v.config.phoneme_id_map
        latent = v.encode(
            phoneme_ids(phonemes, id_map),
            length_scale=c.length_scale,
            noise_scale=c.noise_scale,
            noise_w=c.noise_w,
        )
        edges = np.concatenate([[0], np.cumsum(latent.frames_per_id)]) * v.config.hop_length
        marks = [
            (p, int(edges[a]), int(edges[b]))
            for p, a, b in phoneme_spans(phonemes, id_map)
            if _is_phone(p) and b < len(edges)
        ]
        first = c.first_window if cold else c.window  # audio already queued: no hurry
        return _Sentence(latent, marks, window_spans(latent.frames, first, c.window))
