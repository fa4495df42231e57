"""Loopback-only hosts: detection on injected interface tables, then a real connection.

The real test runs `framecast serve`'s server without --ice-loopback on a host
whose interface table (injected) has loopback only, and connects a real aiortc
viewer over 127.0.0.1 through POST /offer. The viewer, the model factory and
the helpers are test_webrtc's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, NamedTuple

import psutil
import pytest
import test_webrtc
from test_webrtc import FIRST_PROMPT, Viewer, candidates

from apps.server import ServerConfig, ServerThread, SharedStreamFactory
from streaming import ice_detect
from streaming.ice_detect import (
    LOOPBACK_HOST_ADDRESSES,
    InterfaceTable,
    describe,
    detect_host_addresses,
    host_interfaces,
    usable_for_ice,
)
from streaming.webrtc import WebRTCConfig, WebRTCGateway

factory = test_webrtc.factory  # its module-scoped fixture: the tiny "world" model

LOOPBACK_ONLY = {"lo": ["127.0.0.1", "::1"]}
LAN = {"lo": ["127.0.0.1", "::1"], "eth0": ["192.168.1.20", "fe80::1c2b:3aff:fe4d:5e6f%eth0"]}


@pytest.mark.parametrize(
    ("address", "usable"),
    [
        ("192.168.1.20", True),  # private LAN
        ("10.0.0.7", True),
        ("100.101.102.103", True),  # CGNAT range: Tailscale and other VPNs
        ("203.0.113.9", True),  # public
        ("fd00::2", True),  # IPv6 unique local
        ("2001:db8::1", True),  # IPv6 global
        ("127.0.0.1", False),
        ("127.0.1.1", False),  # all of 127/8 is loopback
        ("::1", False),
        ("169.254.10.20", False),  # self-assigned after DHCP failed
        ("fe80::1", False),
        ("fe80::1c2b:3aff:fe4d:5e6f%eth0", False),  # as psutil writes it; aioice skips it too
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        ("00:1a:2b:3c:4d:5e", False),  # a MAC address (psutil's AF_LINK entries)
        ("not an address", False),
    ],
)
def test_what_counts_as_usable_for_ice(address: str, usable: bool) -> None:
    assert usable_for_ice(address) is usable


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (LOOPBACK_ONLY, LOOPBACK_HOST_ADDRESSES),
        ({"lo": ["127.0.0.1"]}, LOOPBACK_HOST_ADDRESSES),  # IPv6 disabled
        ({}, LOOPBACK_HOST_ADDRESSES),
        ({"lo": ["127.0.0.1", "127.0.1.1", "::1"], "dummy0": []}, LOOPBACK_HOST_ADDRESSES),
        ({**LOOPBACK_ONLY, "eth0": ["fe80::1%eth0"]}, LOOPBACK_HOST_ADDRESSES),  # v6 link-local
        ({**LOOPBACK_ONLY, "eth0": ["169.254.3.4", "fe80::1%eth0"]}, LOOPBACK_HOST_ADDRESSES),
        (LAN, None),  # aioice's default: every interface but loopback
        ({**LOOPBACK_ONLY, "eth0": ["fe80::1%eth0", "2001:db8::5"]}, None),  # IPv6-only network
        ({**LOOPBACK_ONLY, "tailscale0": ["100.101.102.103"]}, None),
        ({"eth0": ["10.0.0.7"]}, None),
    ],
)
def test_detect_host_addresses_on_injected_tables(
    table: InterfaceTable, expected: tuple[str, ...] | None
) -> None:
    assert detect_host_addresses(table) == expected


def test_describe_lists_every_interface_for_the_log_line() -> None:
    assert describe({**LOOPBACK_ONLY, "ifb0": []}) == "lo 127.0.0.1 ::1, ifb0"


class FakeAddr(NamedTuple):
    """The two fields of psutil's snicaddr that host_interfaces reads."""

    family: int
    address: str


def test_host_interfaces_keeps_ip_addresses_only(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {
        "lo": [FakeAddr(socket.AF_INET, "127.0.0.1"), FakeAddr(psutil.AF_LINK, "00:00:00:00")],
        "eth0": [FakeAddr(socket.AF_INET6, "fe80::1%eth0"), FakeAddr(psutil.AF_LINK, "aa:bb")],
    }
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: table)
    assert host_interfaces() == {"lo": ["127.0.0.1"], "eth0": ["fe80::1%eth0"]}


def test_host_interfaces_reads_this_host() -> None:
    table = host_interfaces()
    assert "127.0.0.1" in {a for addresses in table.values() for a in addresses}


def inject(monkeypatch: pytest.MonkeyPatch, table: Callable[[], InterfaceTable]) -> None:
    """Make the gateway see ``table()`` as this host's interfaces (read at every offer)."""
    monkeypatch.setattr(ice_detect, "host_interfaces", table)


WARNING = "no network interface but loopback has an address usable for WebRTC"


def test_gateway_falls_back_to_loopback_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streaming.webrtc")
    tables = [LOOPBACK_ONLY]
    inject(monkeypatch, lambda: tables[-1])
    gateway = WebRTCGateway()  # detects at construction: the line appears at server start
    assert gateway.host_addresses() == gateway.host_addresses() == ("127.0.0.1",)
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line.startswith(WARNING) and "(lo 127.0.0.1 ::1)" in line, line
    assert "--ice-loopback" in line and "auto_loopback=False" in line, line  # how to override
    tables.append(LAN)  # a network comes up: aioice's default again, said once
    assert gateway.host_addresses() is None and gateway.host_addresses() is None
    assert [r.getMessage() for r in caplog.records].count(line) == 1
    assert sum("usable for WebRTC appeared" in r.getMessage() for r in caplog.records) == 1


def test_an_explicit_setting_wins_over_detection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def not_consulted() -> InterfaceTable:
        raise AssertionError("detection ran although the addresses were set explicitly")

    inject(monkeypatch, not_consulted)
    explicit = WebRTCGateway(WebRTCConfig(host_addresses=("192.168.1.20",)))
    assert explicit.host_addresses() == ("192.168.1.20",)
    off = WebRTCGateway(WebRTCConfig(auto_loopback=False))
    assert off.host_addresses() is None  # aioice's default, as before detection existed
    inject(monkeypatch, lambda: LAN)
    assert WebRTCGateway().host_addresses() is None
    assert not caplog.records


def test_loopback_only_host_streams_without_ice_loopback(
    factory: SharedStreamFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`framecast serve` with no ICE option on a loopback-only host: a viewer connects."""
    inject(monkeypatch, lambda: LOOPBACK_ONLY)
    thread = ServerThread(ServerConfig(port=0, max_sessions=1), factory)  # no ice_loopback
    handle = thread.start()

    async def main() -> dict[str, Any]:
        viewer = Viewer()  # gathers on 127.0.0.1 only, as a peer on a loopback-only host does
        try:
            await viewer.connect(f"{handle.http_url}/offer", {"prompt": FIRST_PROMPT})
            return dict(answer=viewer.answer, frames=await viewer.frames(2.0))
        finally:
            await viewer.close()

    try:
        gateway = handle.gateway
        assert isinstance(gateway, WebRTCGateway)
        assert gateway.config.host_addresses is None  # detection decides, not an option
        r = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        thread.stop()
    assert set(candidates(r["answer"])) == {"127.0.0.1"}
    assert len(r["frames"]) >= 10, len(r["frames"])  # ~16 fps for 2 s, less connection setup
    assert sum(WARNING in r.getMessage() for r in caplog.records) == 1  # at start, not per offer
