"""The TAEHV-style tiny autoencoder: shapes, streaming decode versus batch decode,
bounded stream memory, reset, encoder causality and weight round trips."""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor

from engine.protocols import StreamingDecoder
from models.decoders import TAEHVConfig, TinyVideoDecoder, TinyVideoEncoder
from models.decoders.taehv import TimeGrow, load_taehv_state_dict

TINY = TAEHVConfig.tiny()
C = TINY.latent_channels
H = W = 4  # latent pixels: 32x32 frames keep every test fast


def _latents(b: int, f: int, seed: int = 1) -> Tensor:
    return torch.randn(b, f, C, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def dec() -> TinyVideoDecoder:
    return TinyVideoDecoder(TINY).eval()


def _stream(dec: TinyVideoDecoder, z: Tensor, chunks: list[int]) -> Tensor:
    assert sum(chunks) == z.shape[1]
    dec.reset()
    out, t = [], 0
    for n in chunks:
        rgb = dec.push(z[:, t : t + n])
        assert rgb.shape[1] == 4 * n - (TINY.trim_start_frames if t == 0 else 0)
        out.append(rgb)
        t += n
    out.append(dec.flush())
    return torch.cat(out, dim=1)


def test_decoder_shapes_and_protocol(dec: TinyVideoDecoder) -> None:
    assert isinstance(dec, StreamingDecoder)
    assert (dec.frames_per_latent, dec.upscale) == (4, 8)
    z = _latents(2, 3)
    with torch.no_grad():
        rgb = dec.decode(z)
    assert rgb.shape == (2, 12, 3, 8 * H, 8 * W) and rgb.dtype == torch.float32
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0
    # Untrained weights still give structure, not a clamped constant.
    assert rgb.std() > 0.05 and ((rgb > 0) & (rgb < 1)).float().mean() > 0.5
    dec.reset()
    assert dec.push(z[:, :1]).shape == (2, 4, 3, 8 * H, 8 * W)
    assert dec.flush().shape == (2, 0, 3, 8 * H, 8 * W)


@pytest.mark.parametrize(
    "chunks", [[1] * 12, [3] * 4, [2, 5, 1, 4], [12]], ids=["ones", "threes", "uneven", "whole"]
)
def test_streaming_equals_batch(dec: TinyVideoDecoder, chunks: list[int]) -> None:
    z = _latents(2, 12)
    with torch.no_grad():
        ref = dec.decode(z)
    got = _stream(dec, z, chunks)
    assert got.shape == ref.shape == (2, 48, 3, 8 * H, 8 * W)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_stream_memory_matters(dec: TinyVideoDecoder) -> None:
    """Guards the parity test: later frames really depend on earlier pushes."""
    z = _latents(1, 2)
    both = _stream(dec, z, [1, 1])[:, 4:]
    alone = _stream(dec, z[:, 1:], [1])
    assert (both - alone).abs().max() > 1e-2


def test_trimmed_stream_equals_batch() -> None:
    """The taew2_1 frame count (4F - 3): the first push returns 4F - 3 frames."""
    cfg = TAEHVConfig(encoder_width=8, decoder_widths=(16, 8, 8, 8), trim_start_frames=3)
    d = TinyVideoDecoder(cfg).eval()
    z = _latents(1, 5)
    with torch.no_grad():
        ref = d.decode(z)
    assert ref.shape[1] == 4 * 5 - 3
    d.reset()
    parts = [d.push(z[:, :1]), d.push(z[:, 1:3]), d.push(z[:, 3:])]
    assert [p.shape[1] for p in parts] == [1, 8, 8]
    torch.testing.assert_close(torch.cat(parts, 1), ref, atol=1e-5, rtol=0)
    d.reset()  # trimming starts over with every stream
    assert d.push(z[:, :2]).shape[1] == 5


def test_memory_bounded_and_reused(dec: TinyVideoDecoder) -> None:
    z = _latents(1, 1)
    dec.reset()
    dec.push(z)
    size, ptrs = dec.memory_bytes(), [m.data_ptr() for m in dec._memory]
    assert size > 0
    for i in range(200):
        dec.push(z * (1 + i % 3))
        assert dec.memory_bytes() == size
    assert [m.data_ptr() for m in dec._memory] == ptrs  # written in place, never reallocated
    # One frame of features per memory block, nothing that grows with the stream.
    assert len(dec._memory) == 3 * TINY.blocks_per_stage


def test_reset_equals_fresh_decoder(dec: TinyVideoDecoder) -> None:
    first, second = _latents(1, 5, seed=2), _latents(1, 4, seed=3)
    _stream(dec, first, [2, 3])
    after_reset = _stream(dec, second, [1, 3])
    fresh = TinyVideoDecoder(TINY).eval()
    assert torch.equal(after_reset, _stream(fresh, second, [1, 3]))


def test_shape_change_needs_reset(dec: TinyVideoDecoder) -> None:
    dec.reset()
    dec.push(_latents(1, 1))
    with pytest.raises(ValueError, match="reset"):
        dec.push(torch.randn(1, 1, C, H + 1, W))
    dec.reset()  # a new stream may have a new shape
    assert dec.push(torch.randn(1, 1, C, 2, 3)).shape == (1, 4, 3, 16, 24)
    assert dec.push(torch.randn(1, 2, C, 2, 3)).shape == (1, 8, 3, 16, 24)


def test_encoder_shapes() -> None:
    enc = TinyVideoEncoder(TINY).eval()
    with torch.no_grad():
        z = enc(torch.rand(2, 8, 3, 32, 48))
        assert z.shape == (2, 2, C, 4, 6)
        assert enc(torch.rand(1, 9, 3, 32, 32)).shape == (1, 3, C, 4, 4)  # padded to 12
    assert 0.3 < z.std() < 3.0
    cfg8 = TAEHVConfig(latent_channels=8, encoder_width=8, decoder_widths=(8, 8, 8, 8))
    with torch.no_grad():
        z8 = TinyVideoEncoder(cfg8)(torch.rand(1, 4, 3, 16, 16))
        assert z8.shape == (1, 1, 8, 2, 2)
        assert TinyVideoDecoder(cfg8)(z8).shape == (1, 4, 3, 16, 16)


def test_encoder_is_causal() -> None:
    enc = TinyVideoEncoder(TINY).eval()
    x = torch.rand(1, 12, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = enc(x)
        for t in (4, 7, 8, 11):  # latent k covers frames 4k .. 4k + 3
            y = x.clone()
            y[:, t] = 1.0 - y[:, t]
            z = enc(y)
            k = t // 4
            assert torch.equal(z[:, :k], ref[:, :k]), f"frame {t} leaked into earlier latents"
            assert (z[:, k] - ref[:, k]).abs().max() > 1e-4


def test_autoencoder_trains() -> None:
    """The batch paths carry gradients (the training entry points)."""
    enc, d = TinyVideoEncoder(TINY), TinyVideoDecoder(TINY)
    x = torch.rand(1, 4, 3, 16, 16)
    loss = (d(enc(x)) - x).square().mean()
    loss.backward()
    for m in (enc, d):
        assert all(p.grad is not None for p in m.parameters())


def test_state_dict_round_trip(dec: TinyVideoDecoder) -> None:
    sd = dec.state_dict()
    assert all(k.startswith("layers.") for k in sd), "stream memory must stay out of weights"
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    other = TinyVideoDecoder(TINY, seed=123).eval()
    z = _latents(1, 3)
    with torch.no_grad():
        assert not torch.equal(other.decode(z), dec.decode(z))
        other.load_state_dict(torch.load(buf, weights_only=True))
        assert torch.equal(other.decode(z), dec.decode(z))


def test_load_taehv_layout() -> None:
    """Checkpoint keys ``encoder.<i>`` / ``decoder.<i>``; a wider stride-1 TGrow is sliced."""
    src_enc, src_dec = TinyVideoEncoder(TINY, seed=5), TinyVideoDecoder(TINY, seed=5)
    ckpt = {f"encoder.{k[len('layers.') :]}": v for k, v in src_enc.state_dict().items()}
    ckpt |= {f"decoder.{k[len('layers.') :]}": v for k, v in src_dec.state_dict().items()}
    i = next(i for i, m in enumerate(src_dec.layers) if isinstance(m, TimeGrow) and m.stride == 1)
    key = f"decoder.{i}.conv.weight"
    ckpt[key] = torch.cat([torch.randn_like(ckpt[key]), ckpt[key]])  # stored as stride 2
    enc, d = TinyVideoEncoder(TINY), TinyVideoDecoder(TINY)
    load_taehv_state_dict(enc, ckpt)
    load_taehv_state_dict(d, ckpt)
    for a, b in ((enc, src_enc), (d, src_dec)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb), ka
    del ckpt["decoder.1.weight"]
    with pytest.raises(RuntimeError, match=r"decoder|layers\.1\.weight"):
        load_taehv_state_dict(TinyVideoDecoder(TINY), ckpt)


def test_config_validation() -> None:
    assert TAEHVConfig.wan2_1().trim_start_frames == 3
    with pytest.raises(ValueError, match="4x"):
        TAEHVConfig(decoder_time_upscale=(True, True, True))
    with pytest.raises(ValueError, match="trim"):
        TAEHVConfig(trim_start_frames=4)
    with pytest.raises(ValueError, match="decoder_widths"):
        TAEHVConfig(decoder_widths=(8, 8, 8))  # type: ignore[arg-type]
