"""Transports (WebRTC, WebSocket) and recording. Imports engine types only."""
