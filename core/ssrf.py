"""Server-side request forgery guard for the URLs clients give: callback URLs (POSTed to)
and audio input URLs (fetched).

Both come from a client, and the service calls them from inside its own network. A URL whose
host is (or resolves to) a loopback, link-local (cloud metadata at 169.254.169.254), private,
unspecified, multicast or reserved address is refused, unless the allow-list setting
(``CALLBACK_ALLOWLIST``, ``AUDIO_URL_ALLOWLIST``) names the host or a range holding the
address. The check runs when a task is submitted and again right before each request (DNS
answers can change in between), and the request then goes to the checked address
(:func:`pinned`), so a DNS answer that changes between check and connect cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., Sequence[tuple[Any, ...]]]


class UnsafeURL(ValueError):
    """The URL must not be called; the message says why (safe to show to the client)."""


class Unresolvable(UnsafeURL):
    """The host has no address now: not proven unsafe, and maybe a passing DNS failure."""


@dataclass(frozen=True)
class Allowlist:
    """Host names (lower case, no trailing dot) and address ranges exempt from the check."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def parse(cls, entries: str | Iterable[str] | Allowlist | None) -> Allowlist:
        """From ``CALLBACK_ALLOWLIST``: hosts and CIDR ranges separated by commas (an IP
        address alone is a range of one)."""
        if isinstance(entries, Allowlist):
            return entries
        if entries is None:
            return cls()
        items = entries.split(",") if isinstance(entries, str) else list(entries)
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                hosts.add(_norm_host(item))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return _norm_host(host) in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)


def _norm_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def unsafe_reason(address: IPAddress) -> str | None:
    """Why an address must not be called, or None when it is a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return unsafe_reason(address.ipv4_mapped)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None


def safe_addresses(
    url: str,
    allowlist: str | Iterable[str] | Allowlist | None,
    resolve: Resolver = socket.getaddrinfo,
    *,
    what: str = "callback_url",
    setting: str = "CALLBACK_ALLOWLIST",
) -> list[IPAddress] | None:
    """The addresses ``url`` may be called at, all checked.

    None means "connect by name": the host is allow-listed by name. Raises UnsafeURL for a
    URL that is not http(s), has no host, does not resolve (:class:`Unresolvable`), or
    resolves to any address that is neither public nor allow-listed (one bad answer is
    enough: a client could otherwise make the service pick it). ``what`` and ``setting`` name
    the URL and its allow-list in the messages, which are safe to show to the client.
    """
    allowed = Allowlist.parse(allowlist)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeURL(f"{what} must be an http(s) URL with a host")
    host = _norm_host(parts.hostname)
    if allowed.allows_host(host):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL(f"{what} has an invalid port") from None
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = resolve(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise Unresolvable(f"{what} host '{host}' does not resolve ({exc})") from None
        addresses = []
        for info in infos:
            text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise Unresolvable(f"{what} host '{host}' does not resolve") from None
    for address in addresses:
        reason = unsafe_reason(address)
        if reason is not None and not allowed.allows_address(address):
            shown = host if str(address) == host else f"{host} ({address})"
            raise UnsafeURL(
                f"{what} points at a {reason} address: {shown}; such addresses are "
                f"refused unless {setting} names them"
            )
    return addresses


def check_url(
    url: str,
    allowlist: str | Iterable[str] | Allowlist | None,
    resolve: Resolver = socket.getaddrinfo,
    *,
    what: str = "callback_url",
    setting: str = "CALLBACK_ALLOWLIST",
) -> None:
    """Raises UnsafeURL unless ``url`` may be called (see :func:`safe_addresses`)."""
    safe_addresses(url, allowlist, resolve, what=what, setting=setting)


def pinned(
    url: str, addresses: list[IPAddress] | None
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(URL, extra headers, httpx extensions) that make a request go to the checked address
    itself, so a DNS answer that changes after the check (rebinding) cannot send it elsewhere.
    The Host header and TLS SNI (hence certificate checks) keep the name. ``addresses`` None
    (allow-listed by name) connects by name."""
    import httpx

    target = httpx.URL(url)
    if addresses is None:
        return url, {}, {}
    host = target.host
    if host == str(addresses[0]):  # an IP literal already
        return url, {}, {}
    netloc = target.netloc.decode("ascii").rsplit("@", 1)[-1]
    return (
        str(target.copy_with(host=str(addresses[0]))),
        {"host": netloc},
        {"sni_hostname": host} if target.scheme == "https" else {},
    )
