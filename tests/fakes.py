"""Small stand-ins shared by tests: training inputs, and a tone-making audio generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.audio import AudioPiece, InputKind
from engine.media import PhonemeMark


def fake_latent_set(path: Path, clips: int = 6, length: int = 8, hw: int = 4) -> None:
    g = torch.Generator().manual_seed(0)
    data = {
        "latents": torch.randn(clips, length, 16, hw, hw, generator=g).half(),
        "mean": torch.full((16,), 0.5),
        "std": torch.full((16,), 2.0),
        "embeds": torch.randn(5, 32, 384, generator=g).half(),
        "prompt_index": torch.randint(5, (clips, 2), generator=g),
        "prompts": [f"p{i}" for i in range(5)],
        "meta": {"config": {"size": hw * 8}, "wall_s": 0.0},
    }
    torch.save(data, path)


class ToneSpeaker:
    """A text-in AudioGenerator: each word becomes 100 ms of tone (one piece), one mark per word.

    Sample rate 1 kHz by default, so pts are easy to check by hand.
    """

    channels = 1
    takes: InputKind = "text"
    sample_rate = 1000

    def __init__(self) -> None:
        self.words: list[str] = []

    def feed_text(self, text: str) -> None:
        self.words += text.split()

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        raise TypeError("text only")

    def end_input(self) -> None:
        pass

    def next_piece(self) -> AudioPiece | None:
        if not self.words:
            return None
        word = self.words.pop(0)
        t = np.arange(self.sample_rate // 10) / self.sample_rate
        samples = (0.1 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
        n = len(samples)
        return AudioPiece(samples, (PhonemeMark(word, n // 10, n * 9 // 10),), not self.words)

    def cancel(self) -> None:
        self.words.clear()

    def reset(self) -> None:
        self.cancel()
