"""Where workers are: host:port addresses and DNS names whose addresses are workers.

``--workers`` takes host:port entries and DNS names (``dns:///NAME:PORT``, or
``dns://NAMESERVER[:PORT]/NAME:PORT`` to ask one server), re-resolved by the registry every
``dns_interval_s``: every address a name resolves to is a worker (a Kubernetes headless service
gives one per ready pod).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from dataclasses import dataclass

from evalfleet.common.errors import InvalidArgumentError


def parse_host_port(address: str, field_name: str) -> str:
    """``address`` if it is host:port: a host name or IPv4 address (letters, digits, ``.-_``) or
    an IPv6 address in brackets ([::1]:port), and a port 1-65535; INVALID_ARGUMENT naming the
    field otherwise."""
    host, sep, port = address.rpartition(":")
    valid = bool(sep) and re.fullmatch(r"[0-9]{1,5}", port) is not None \
        and 0 < int(port) < 65536
    if valid and host.startswith("[") and host.endswith("]"):
        try:
            valid = ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            valid = False
    elif valid:
        valid = re.fullmatch(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})", host) is not None
    if not valid:
        raise InvalidArgumentError(
            f"{field_name}: {address[:200]!r} is not host:port (a host name, IPv4 address or "
            "[IPv6] address, and a port 1-65535)")
    return address


def join_host_port(host: str, port: int) -> str:
    """host:port, with brackets around an IPv6 host."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    return f"{host}:{port}"



@dataclass(frozen=True)
class DnsTarget:
    """A DNS name whose addresses are workers: ``dns:[//NAMESERVER[:PORT]/]NAME:PORT``."""

    name: str
    port: int
    nameserver: str | None = None
    nameserver_port: int = 53

    @classmethod
    def parse(cls, text: str, field_name: str = "--workers") -> DnsTarget:
        rest = text.removeprefix("dns:")
        nameserver, ns_port = None, 53
        if rest.startswith("//"):
            authority, slash, rest = rest[2:].partition("/")
            if not slash:
                raise InvalidArgumentError(f"{field_name}: '{text}': expected "
                                           "dns://[NAMESERVER[:PORT]]/NAME:PORT")
            if authority:
                host, sep, port = authority.rpartition(":")
                if sep and port.isdigit():
                    nameserver, ns_port = host.strip("[]"), int(port)
                else:
                    nameserver = authority.strip("[]")
        name, sep, port = rest.rpartition(":")
        if not sep or not name or not port.isdigit():
            raise InvalidArgumentError(f"{field_name}: '{text}': give the workers' port, as in "
                                       "dns:///workers.ns.svc.cluster.local:50061")
        return cls(name, int(port), nameserver, ns_port)

    @property
    def source(self) -> str:
        return f"dns:{self.name}"

    async def resolve(self) -> set[str]:
        """The worker addresses the name resolves to now."""
        if self.nameserver is None:
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(self.name, self.port, type=0,
                                           proto=6)  # TCP, either family
            return {join_host_port(i[4][0], self.port) for i in infos}
        import dns.asyncresolver
        import dns.resolver

        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.nameserver]
        resolver.port = self.nameserver_port
        resolver.lifetime = 5.0
        found: set[str] = set()
        for rdtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(self.name, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            found.update(join_host_port(r.address, self.port) for r in answer)
        return found
