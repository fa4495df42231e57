"""The causal Wan DiT against the reference code's own outputs (float32, <= 1e-4).

Fixtures (tests/fixtures/reference/make_wan_dit.py, from guandeh17/Self-Forcing and
NVlabs/LongLive): a tiny random DiT in the reference's key layout, the noise each
reference pipeline drew, and the latents it produced. Here the same weights load
through our loader, the same noise is replayed in the same order, and the loop runs
with the model profile's settings (models/profiles.py), which say in our terms:

- Self-Forcing: global attention over its 21-frame cache = a window of 18 committed
  frames + the 3-frame block, no sinks, absolute positions;
- LongLive: ``local_attn_size 12, sink_size 3`` = 3 sinks + 6 window frames + the
  3-frame block, absolute positions, KV-recache as one forward over the last 12
  frames ("span"), keeping the old sinks when ``global_sink`` is True.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from engine.cache import CacheConfig
from engine.loop import DenoisingLoop, LoopConfig
from models.profiles import profile
from models.wan.config import PRESETS
from models.wan.loader import compare_keys, merge_lora, unwrap_state_dict
from models.wan.model import CausalWanModel

FIXTURES = Path(__file__).parents[1] / "fixtures" / "reference"
TOLERANCE = 1e-4
BLOCK = 3


class ReplayedNoise:
    """The reference's noise in the order our loop asks for it: per block, the block's
    initial noise, then one draw per re-noised step."""

    def __init__(self, noise: Tensor, draws: Tensor, steps: int) -> None:
        self.queue: list[Tensor] = []
        per_block = steps - 1
        for b in range(noise.shape[1] // BLOCK):
            self.queue.append(noise[:, b * BLOCK : (b + 1) * BLOCK])
            for d in draws[b * per_block : (b + 1) * per_block]:
                self.queue.append(d.view(1, BLOCK, *d.shape[1:]))

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        out = self.queue.pop(0)
        assert tuple(out.shape) == shape, f"{out.shape=} {shape=}"
        return out.clone()


def load_fixture(name: str) -> dict[str, Tensor]:
    return load_file(str(FIXTURES / f"{name}.safetensors"))


def reference_model(tensors: dict[str, Tensor], lora: bool = False) -> CausalWanModel:
    sd = unwrap_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("dit.")})
    if lora:  # LongLive's lora.pt layout, folded in at load time
        adapter = {k[8:]: v for k, v in tensors.items() if k.startswith("adapter.base_model")}
        sd = merge_lora(sd, adapter, alpha=tensors["adapter.alpha"].item())
    with torch.device("meta"):
        model = CausalWanModel(PRESETS["nano"])
    report = compare_keys(model, sd)
    assert report.ok, report.describe()
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def run(
    tensors: dict[str, Tensor],
    name: str,
    case: str,
    cache: CacheConfig,
    switches: dict[int, str] | None = None,
    lora: bool = False,
) -> Tensor:
    model = reference_model(tensors, lora)
    schedule = profile(name).schedule()
    noise = tensors[f"{case}.noise"]
    frames = noise.shape[1]
    replay = ReplayedNoise(noise, tensors[f"{case}.draws"], len(schedule.steps))
    loop = DenoisingLoop(model, schedule, LoopConfig(BLOCK, tuple(noise.shape[-2:])), cache, replay)
    loop.set_context(tensors["prompt0"].unsqueeze(0))
    out = []
    for frame in range(0, frames, BLOCK):
        if switches and frame in switches:
            loop.recache(tensors[switches[frame]].unsqueeze(0))
        out.append(loop.next_block())
    assert not replay.queue, "the loop drew less noise than the reference"
    return torch.cat(out, dim=1)


def test_self_forcing_cached_inference_matches_the_reference() -> None:
    t = load_fixture("dit_self_forcing")
    cache = profile("self-forcing").cache_config()
    assert (cache.sink_frames, cache.window_frames, cache.positions) == (0, 18, "absolute")
    latents = run(t, "self-forcing", "plain", cache)
    err = (latents - t["plain.latents"]).abs().max().item()
    assert err <= TOLERANCE, f"max abs error {err:.2e}"


def longlive_cache(global_sink: bool) -> CacheConfig:
    cache = replace(profile("longlive"), global_sink=global_sink).cache_config()
    assert (cache.sink_frames, cache.window_frames, cache.recache_frames) == (3, 6, 12)
    return cache


def test_longlive_window_and_sink_inference_matches_the_reference() -> None:
    t = load_fixture("dit_longlive")
    latents = run(t, "longlive", "plain", longlive_cache(True))
    err = (latents - t["plain.latents"]).abs().max().item()
    assert err <= TOLERANCE, f"max abs error {err:.2e}"


@pytest.mark.parametrize("global_sink", [True, False])
def test_longlive_prompt_switch_matches_the_reference(global_sink: bool) -> None:
    t = load_fixture("dit_longlive")
    case = "switch_global_sink" if global_sink else "switch_local_sink"
    switches = dict(zip(t[f"{case}.switches"].tolist(), ["prompt1", "prompt2"], strict=True))
    latents = run(t, "longlive", case, longlive_cache(global_sink), switches)
    ref = t[f"{case}.latents"]
    err = (latents - ref).abs().max().item()
    assert err <= TOLERANCE, f"max abs error {err:.2e}"
    # the switch changed the output: the fixture is not blind to recache
    plain = t["plain.latents"]
    assert (ref[:, 9:] - plain[:, 9:]).abs().max() > 1e-2


def test_longlive_with_its_lora_matches_the_reference() -> None:
    """LongLive ships longlive_base.pt + lora.pt; the reference applies the LoRA with peft
    at every forward, we fold it into the weights once."""
    t = load_fixture("dit_longlive")
    latents = run(t, "longlive", "lora", longlive_cache(True), lora=True)
    err = (latents - t["lora.latents"]).abs().max().item()
    assert err <= TOLERANCE, f"max abs error {err:.2e}"
    assert (t["lora.latents"] - t["plain.latents"]).abs().max() > 1e-2  # the LoRA matters
