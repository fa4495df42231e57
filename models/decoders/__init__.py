"""Latent-to-RGB decoders with the engine's StreamingDecoder contract."""

from models.decoders.preview import LatentPreviewDecoder

__all__ = ["LatentPreviewDecoder"]
