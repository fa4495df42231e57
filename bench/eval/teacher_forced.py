"""Does the generator draw what the prompt asks when everything else is given?

Streaming adherence (bench/eval/evaluate.py) mixes three failures: the
first frame, drift of the model's own context, and how well one step draws an
object. This score isolates the last. For held-out prompts it renders the true
clip, encodes it, noises it to one sampling level and lets the generator
predict the clean latents in one step, with the true earlier frames in its
cache (teacher forcing, exactly the training pass); the decoded estimate is
then read by the world's detector.

At the last sampling level that estimate *is* the stream's output, so a shape
lost here is lost in every stream (measured 2026-12-06, job step 41,712: shape
97% on the true latents, 41% on the one-step estimate at level 250, 94% at 50).

    scores = teacher_forced_scores(load_bundle("out/world-candidate"), prompts=64)
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import torch

from engine.schedule import shift_sigma
from models.embedded import Bundle
from models.text import SentenceEncoder
from models.world import heldout_prompts
from models.world.detect import check, detect
from models.world.render import render_clip

LATENT_FRAMES = 6  # the generator's training clip
TEXT_TOKENS = 32


@torch.inference_mode()
def teacher_forced_scores(
    bundle: Bundle,
    *,
    prompts: int = 64,
    levels: Sequence[int] = (250,),
    seed: int = 0,
    text: SentenceEncoder | None = None,
) -> dict[str, dict[str, float]]:
    """Percent of held-out clips whose one-step estimate passes each attribute, per level.

    ``levels``: sampling steps on the 0..1000 scale, shifted as the bundle streams
    them; the key "true" scores the true latents (the decoder's own ceiling).
    """
    generator = bundle.generator().eval()
    encoder, decoder = bundle.encoder(), bundle.decoder()
    mean, std = bundle.latent_stats
    mean, std = mean.view(1, 1, -1, 1, 1), std.view(1, 1, -1, 1, 1)
    shift = float(bundle.defaults["shift"])
    size = int(bundle.defaults["height"])
    frames = LATENT_FRAMES * decoder.frames_per_latent
    text = text or SentenceEncoder()
    noise = torch.Generator().manual_seed(seed)
    tally: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    cases = heldout_prompts(prompts)
    for case in cases:
        clip = render_clip(case.scene, frames, size, size)
        x = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div(255.0)[None]
        z = (encoder(x) - mean) / std
        embed = text.encode(case.prompt)[:TEXT_TOKENS]
        context = torch.zeros(1, TEXT_TOKENS, embed.shape[-1])
        context[0, : embed.shape[0]] = embed
        estimates = {"true": z}
        for level in levels:
            sigma = shift_sigma(level / 1000, shift)
            noisy = (1 - sigma) * z + sigma * torch.randn(z.shape, generator=noise)
            flow = generator.forward_teacher(
                noisy,
                torch.full((1, LATENT_FRAMES), 1000 * sigma),
                z,
                torch.zeros(1, LATENT_FRAMES),
                context,
                block_frames=1,
            )
            estimates[str(level)] = noisy - sigma * flow
        for name, latents in estimates.items():
            decoder.reset()
            rgb = decoder.push(latents)[0].clamp(0, 1).mul(255).round().byte()
            passed = check(case.scene, detect(rgb.permute(0, 2, 3, 1).numpy()))
            tally[name].update(k for k, ok in passed.items() if ok)
    n = len(cases)
    attrs = ("background", "colour", "shape", "motion", "size", "count")
    return {name: {k: round(100 * c[k] / n, 1) for k in attrs} for name, c in tally.items()}
