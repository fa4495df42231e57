"""Generators, decoders and conditioning. Imports engine, never streaming or apps."""
