"""Text to Piper phoneme ids with espeak-ng, the phonemiser Piper voices were trained on.

A Piper voice reads ids of IPA code points (its ``phoneme_id_map``), one
sentence at a time: ``^ _ p1 _ p2 _ ... $``. The phonemes come from espeak-ng
clause by clause; each clause keeps its punctuation (the voice was trained with
it, so ``,`` and ``?`` change the prosody), and a space follows ``, : ;``.

Two backends give the same clauses (a test checks them against each other;
their dictionaries are different espeak-ng builds, so rare words such as
"p.m." may differ by a diacritic):

- ``piper``: the espeak-ng bridge inside the ``piper-tts`` package (its own
  espeak-ng build, which reports each clause's terminator);
- ``espeak-ng``: the shared library in the ``espeakng-loader`` wheel through
  ctypes. Upstream espeak-ng has no terminator call, so the terminator is read
  from the clause's own text. This backend needs no ``onnxruntime`` package,
  so it installs beside ``onnxruntime-gpu`` (``piper-tts`` pulls the CPU one).

espeak-ng keeps one global voice per process; calls are serialised by a lock.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Backend = Literal["auto", "piper", "espeak-ng"]

BOS, EOS, PAD = "^", "$", "_"  # Piper's sentence start, end and between-phoneme ids
_PAUSE_TERMINATORS = (",", ":", ";")  # inside a sentence: followed by a space
_SENTENCE_TERMINATORS = (".", "?", "!")
_CLOSERS = "\"')]}\u00bb\u201d\u2019"  # may follow a clause's punctuation
_LANGUAGE_FLAG = re.compile(r"\([^)]+\)")  # espeak-ng marks a switch of language as "(fr)"
_ESPEAK_IPA = 0x02  # espeakPHONEMES_IPA
_ESPEAK_UTF8 = 1  # espeakCHARS_UTF8
_ESPEAK_RETRIEVAL = 2  # AUDIO_OUTPUT_RETRIEVAL: phonemes only, no sound device
_LOCK = threading.Lock()


class PhonemizerUnavailable(ImportError):
    """No espeak-ng to phonemise with: names the package that brings one."""


@dataclass(frozen=True)
class Clause:
    """One espeak-ng clause: IPA phonemes, its punctuation and whether a sentence ends."""

    phonemes: str
    terminator: str  # one of ". ? ! , : ;" or "" (none, or an ellipsis)
    end_of_sentence: bool


class EspeakPhonemizer:
    """Text -> sentences of phonemes (lists of code points), for one espeak-ng voice.

    Usage::

        ph = EspeakPhonemizer("en-us")
        for sentence in ph.sentences("Hello there, how are you?"):
            ids = phoneme_ids(sentence, voice.config.phoneme_id_map)
    """

    def __init__(self, voice: str = "en-us", backend: Backend = "auto") -> None:
        self.voice = voice
        self.backend = _pick_backend(backend)
        self._lib: ctypes.CDLL | None = None
        if self.backend == "piper":
            from piper import espeakbridge
            from piper.phonemize_espeak import ESPEAK_DATA_DIR

            with _LOCK:
                espeakbridge.initialize(str(ESPEAK_DATA_DIR))
        else:
            self._lib = _load_espeak_library()

    def clauses(self, text: str) -> list[Clause]:
        """espeak-ng's clauses of ``text`` with their terminators."""
        with _LOCK:
            if self.backend == "piper":
                from piper import espeakbridge

                espeakbridge.set_voice(self.voice)
                return [Clause(p, t, e) for p, t, e in espeakbridge.get_phonemes(text)]
            assert self._lib is not None
            return _library_clauses(self._lib, self.voice, text)

    def sentences(self, text: str) -> list[list[str]]:
        """Phonemes per sentence, each a list of NFD code points, punctuation kept."""
        sentences: list[list[str]] = []
        current: list[str] = []
        for clause in self.clauses(text):
            phonemes = _LANGUAGE_FLAG.sub("", clause.phonemes) + clause.terminator
            if clause.terminator in _PAUSE_TERMINATORS:
                phonemes += " "
            current.extend(unicodedata.normalize("NFD", phonemes))
            if clause.end_of_sentence:
                sentences.append(current)
                current = []
        if current:
            sentences.append(current)
        return [s for s in sentences if any(not c.isspace() for c in s)]


def phoneme_ids(phonemes: Sequence[str], id_map: Mapping[str, Sequence[int]]) -> list[int]:
    """``^ _ p1 _ p2 _ ... $`` as ids; phonemes the voice does not know are skipped."""
    ids = [*id_map[BOS], *id_map[PAD]]
    for p in phonemes:
        if p in id_map:
            ids.extend(id_map[p])
            ids.extend(id_map[PAD])
    ids.extend(id_map[EOS])
    return ids


def _pick_backend(backend: Backend) -> Literal["piper", "espeak-ng"]:
    has_piper = importlib.util.find_spec("piper") is not None
    has_loader = importlib.util.find_spec("espeakng_loader") is not None
    if backend == "piper" or (backend == "auto" and has_piper):
        if not has_piper:
            raise PhonemizerUnavailable(
                "the piper phonemiser needs the piper-tts package: pip install 'framecast[piper]'"
            )
        return "piper"
    if not has_loader:
        raise PhonemizerUnavailable(
            "text-to-speech needs espeak-ng: pip install 'framecast[tts]' (espeakng-loader),"
            " or 'framecast[piper]' for Piper's own build"
        )
    return "espeak-ng"


def _load_espeak_library() -> ctypes.CDLL:
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_int,
        ctypes.c_int,
    ]
    data = espeakng_loader.get_data_path().encode()
    with _LOCK:
        if lib.espeak_Initialize(_ESPEAK_RETRIEVAL, 0, data, 0) <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data at {data.decode()}")
    return lib


def _library_clauses(lib: ctypes.CDLL, voice: str, text: str) -> list[Clause]:
    """Clauses from espeak_TextToPhonemes, which advances a text pointer one clause a call.

    The pointer stops one character past the clause (espeak-ng reads ahead), so
    a clause's own text is the previous look-ahead character plus what this call
    consumed, less its own look-ahead character.
    """
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f"espeak-ng has no voice {voice!r}")
    raw = text.encode()
    buffer = ctypes.create_string_buffer(raw)
    base = ctypes.addressof(buffer)
    pointer = ctypes.c_void_p(base)
    clauses: list[Clause] = []
    start = 0
    while pointer.value:
        phonemes = lib.espeak_TextToPhonemes(ctypes.byref(pointer), _ESPEAK_UTF8, _ESPEAK_IPA)
        end = len(raw) if not pointer.value else _char_start(raw, pointer.value - base - 1)
        ipa = (phonemes or b"").decode()
        terminator, sentence_end = _terminator(raw[start:end].decode(errors="replace"))
        if not ipa:
            terminator = ""  # punctuation alone is no clause (as Piper's bridge reports it)
        clauses.append(Clause(ipa, terminator, sentence_end or not pointer.value))
        start = end
    return clauses


def _char_start(raw: bytes, index: int) -> int:
    """The start of the UTF-8 character whose last byte is at ``index``."""
    while index > 0 and raw[index] & 0xC0 == 0x80:
        index -= 1
    return index


def _terminator(clause_text: str) -> tuple[str, bool]:
    """The punctuation that ends a clause, as espeak-ng classifies it."""
    tail = clause_text.rstrip().rstrip(_CLOSERS)
    run = len(tail) - len(tail.rstrip(".?!,:;\u2026"))
    if run == 0:
        return "", False
    marks = tail[len(tail) - run :]
    if marks.startswith(("...", "\u2026")):
        return "", False  # an ellipsis is a pause, not a sentence end
    mark = marks[0]
    return mark, mark in _SENTENCE_TERMINATORS
