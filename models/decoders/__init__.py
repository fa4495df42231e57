"""Latent-to-RGB decoders with the engine's StreamingDecoder contract."""

from models.decoders.preview import LatentPreviewDecoder
from models.decoders.taehv import TAEHVConfig, TinyVideoDecoder, TinyVideoEncoder

__all__ = ["LatentPreviewDecoder", "TAEHVConfig", "TinyVideoDecoder", "TinyVideoEncoder"]
