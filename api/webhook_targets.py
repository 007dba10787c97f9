"""Where a webhook may be sent: public addresses only, so an endpoint is no way into the service's own network.

A URL whose host is a loopback, private, link-local (the cloud metadata service among them), multicast, reserved or
otherwise non-public address is refused when it is registered (:func:`url_problem`). A host name is checked when
each attempt is sent: :func:`public_addresses` resolves it once and checks every address it resolves to, and the
attempt connects to the checked address itself (the Host header and TLS SNI keep the name, so certificates are
verified against it), so a name that resolves elsewhere a second time (DNS rebinding) changes nothing.
``MOL_WEBHOOK_ALLOW_HOSTS`` lets an operator reach internal receivers: host names, addresses or networks.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import httpx

IPAddress = IPv4Address | IPv6Address
# cloud metadata services (AWS IPv4 and IPv6, Alibaba): refused even when a network holding them is allowed
METADATA = frozenset(ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
NAT64 = ip_network("64:ff9b::/96")  # IPv4 addresses embedded in IPv6 (RFC 6052)
HINT = "webhooks go to public addresses only (an operator can allow internal receivers: MOL_WEBHOOK_ALLOW_HOSTS)"


class NoPublicAddress(Exception):
    """An attempt's host resolves to no address a webhook may go to (or to none at all)."""


@dataclass(frozen=True)
class AllowList:
    """What ``MOL_WEBHOOK_ALLOW_HOSTS`` allows besides public addresses: host names (any address they resolve to)
    and networks (a single address is a network of one)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPv4Network | IPv6Network, ...] = ()

    @classmethod
    def parse(cls, entries: list[str]) -> AllowList:
        """The allow list of ``entries``, each a network (``10.0.0.0/8``), an address or a host name."""
        hosts, networks = set(), []
        for entry in (e.strip().lower().rstrip(".") for e in entries):
            try:
                networks.append(ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry)
        return cls(frozenset(hosts), tuple(networks))

    def admits(self, address: IPAddress) -> bool:
        """Whether ``address`` lies in an allowed network."""
        return any(address in network for network in self.networks if network.version == address.version)


def address_kind(address: IPAddress) -> str | None:
    """What makes ``address`` not public ('loopback', 'private', 'cloud metadata', ...), or None for a public one;
    an IPv6 address embedding an IPv4 one (mapped, NAT64, 6to4, Teredo) is judged by that one too."""
    if address in METADATA:
        return "cloud metadata"
    if isinstance(address, IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and address in NAT64:
            embedded = IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (kind := address_kind(embedded)):
            return kind
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-public"  # e.g. 100.64.0.0/10, shared by carriers


def refusal(address: IPAddress, allow: AllowList) -> str | None:
    """Why an attempt may not connect to ``address`` (its kind), or None when it may."""
    kind = address_kind(address)
    if kind is None or (kind != "cloud metadata" and allow.admits(address)):
        return None
    return kind


def url_problem(url: str, allow: AllowList) -> str | None:
    """What keeps ``url`` from being registered (its host is a non-public address that is not allowed), naming
    ``url``; None when it may be. A host name is checked at each attempt instead (it may resolve elsewhere then)."""
    try:
        host = httpx.URL(url).raw_host.decode("ascii").lower()
    except (httpx.InvalidURL, UnicodeError):
        return "url: its host name cannot be used (not a valid internationalised domain name)"
    try:
        address = ip_address(host)
    except ValueError:
        return None
    kind = refusal(address, allow)
    return f"url: {host} is a {kind} address; {HINT}" if kind else None


async def public_addresses(host: str, port: int, allow: AllowList) -> list[IPAddress]:
    """The addresses ``host`` resolves to, once, when every one may be connected to (all of them when the host is
    allowed by name, but the cloud metadata service); else NoPublicAddress (saying which kind, not which address)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise NoPublicAddress("the host does not resolve") from None
    addresses = list(dict.fromkeys(ip_address(info[4][0].split("%")[0]) for info in infos))
    by_name = host.lower().rstrip(".") in allow.hosts
    for address in addresses:
        kind = "cloud metadata" if address in METADATA else None if by_name else refusal(address, allow)
        if kind:
            raise NoPublicAddress(f"the host resolves to a {kind} address")
    if not addresses:
        raise NoPublicAddress("the host does not resolve")
    return addresses


async def pinned_request(url: str, allow: AllowList) -> tuple[list[httpx.URL], dict[str, str], dict[str, object]]:
    """(the URL with its host replaced by each checked address, the Host header, the request extensions that keep
    the TLS server name) of an attempt at ``url``; NoPublicAddress when its host may not be reached."""
    parsed = httpx.URL(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await public_addresses(host, port, allow)
    extensions: dict[str, object] = {"sni_hostname": host} if parsed.scheme == "https" else {}
    return [parsed.copy_with(host=str(a)) for a in addresses], {"host": parsed.netloc.decode("ascii")}, extensions
