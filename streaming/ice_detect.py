"""Can a WebRTC peer reach this host on anything but loopback? If not, ICE uses loopback.

aioice (aiortc's ICE agent) gathers host candidates on every interface address
except 127.0.0.1 and except IPv6 addresses with a scope id (fe80::/10 link-local),
see ``aioice.ice.get_host_addresses``. On a host whose only interface is
loopback (a container with ``--network none``, a sandbox, an offline machine)
that leaves no candidate a peer can use, and the connection never comes up.
``detect_host_addresses`` decides from an interface table whether that is the
case; the table is injected, so the decision is a pure function::

    detect_host_addresses({"lo": ["127.0.0.1", "::1"]})            # ("127.0.0.1",)
    detect_host_addresses({"lo": ["127.0.0.1"], "eth0": ["192.168.1.20"]})  # None
    detect_host_addresses(host_interfaces())                       # this host, via psutil

An address counts as usable for ICE when a peer on another machine could reach
it: not loopback (127.0.0.0/8, ::1), not link-local (169.254.0.0/16, which a
host gives itself when DHCP fails and which reaches only machines on the same
cable that did the same; fe80::/10, which aioice never gathers), not
unspecified or multicast. Private, CGNAT/VPN and ULA addresses count. Interface
state is not consulted, as aioice does not consult it either.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping

import psutil

# Host candidates when nothing else is usable: the same list as `framecast serve --ice-loopback`.
LOOPBACK_HOST_ADDRESSES: tuple[str, ...] = ("127.0.0.1",)

InterfaceTable = Mapping[str, Iterable[str]]  # interface name -> its IPv4/IPv6 addresses (text)


def usable_for_ice(address: str) -> bool:
    """Whether a peer on another machine could reach ``address`` (see the module docstring)."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # psutil writes fe80::1%eth0
    except ValueError:
        return False  # a MAC address or other non-IP entry
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)


def detect_host_addresses(table: InterfaceTable) -> tuple[str, ...] | None:
    """LOOPBACK_HOST_ADDRESSES when no address in ``table`` is usable for ICE, else None.

    None means "leave it to aioice": it gathers on every interface but loopback.
    """
    usable = any(usable_for_ice(a) for addresses in table.values() for a in addresses)
    return None if usable else LOOPBACK_HOST_ADDRESSES


def describe(table: InterfaceTable) -> str:
    """``table`` for a log line: "lo 127.0.0.1 ::1, eth0 fe80::1%eth0"."""
    return ", ".join(f"{name} {' '.join(addresses)}".strip() for name, addresses in table.items())


def host_interfaces() -> dict[str, list[str]]:
    """This host's IPv4 and IPv6 interface addresses, from ``psutil.net_if_addrs()``."""
    families = (socket.AF_INET, socket.AF_INET6)
    return {
        name: [a.address for a in addresses if a.family in families]
        for name, addresses in psutil.net_if_addrs().items()
    }
