"""Addresses at their sinks: URL hosts, ssh and known_hosts. Pure functions, no Pulumi.

Config values are data: the schema normalises them once, and each sink encodes
them again for its own syntax (a URL needs IPv6 in brackets; ssh expands `%`
tokens and splits on spaces), so a value that slipped past one check still
cannot change what a sink means.
"""

from __future__ import annotations

import ipaddress
import re

_DNS_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def url_host(address: str) -> str:
    """The host part of a URL or `host:port`: IPv6 in brackets (`ssh://u@[2001:db8::1]:22`)."""
    return f"[{address}]" if ":" in address else address


def host_port(address: str, port: int) -> str:
    """`address:port`, IPv6 bracketed: `[2001:db8::1]:8443`."""
    return f"{url_host(address)}:{int(port)}"


def ssh_address(address: str) -> str:
    """An address as ssh and known_hosts take it: an IP in Python's spelling (no zone) or a DNS name."""
    if "%" not in address:
        try:
            return str(ipaddress.ip_address(address))
        except ValueError:
            if _DNS_NAME.fullmatch(address):
                return address
    raise ValueError(f"ssh address {address!r}: must be an IP address without a zone, or a DNS name")
