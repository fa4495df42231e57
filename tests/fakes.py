"""Small stand-ins for expensive training inputs, shared by tests."""

from __future__ import annotations

from pathlib import Path

import torch


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
