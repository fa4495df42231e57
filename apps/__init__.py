"""Command line, servers and demos."""
