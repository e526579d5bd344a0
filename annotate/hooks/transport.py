"""Sending one signed request to a receiver: only to the registered host, at an address checked when it is sent,
no redirects followed, short timeouts, and only the start of the answer read."""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings

SCHEMES = ("http", "https")
URL_MAX_LENGTH = 500


class AddressRefused(Exception):
    """The URL's host is (or resolves to) an address webhooks may not reach."""


@dataclass(frozen=True)
class Answer:
    """What one attempt got: the answer's status (None when there was none) and an error (empty: delivered)."""

    status_code: int | None
    error: str
    excerpt: str
    milliseconds: int
    truncated: bool = False  # more of the answer was left unread (the cap or the deadline)


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook URL (scheme, host, credentials, length), or None when it may."""
    if len(url) > URL_MAX_LENGTH:
        return f"at most {URL_MAX_LENGTH} characters"
    if any(character.isspace() or ord(character) < 32 for character in url):
        return "no spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"not a valid URL: {error}"
    if parts.scheme.lower() not in SCHEMES:
        return "must start with http:// or https://"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "no user name or password in the URL (the signature authenticates each delivery)"
    if port == 0:
        return "not a valid port"
    return None


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return f"{address} is not an address a receiver can have"
    if not address.is_global and not allow_private:
        return f"{address} is a private, loopback or link-local address (allow private addresses to send there)"
    return None


def webhook_address_resolve(url: str, *, allow_private: bool) -> str:
    """The address to send to for `url`'s host: every address the host resolves to must be allowed (a name that
    also resolves to a private address is refused), so a second lookup cannot pick another. AddressRefused
    otherwise, saying why."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as error:
        raise AddressRefused(f"{host} does not resolve: {error}") from None
    addresses = [ipaddress.ip_address(str(entry[4][0]).split("%")[0]) for entry in found]
    if not addresses:
        raise AddressRefused(f"{host} does not resolve")
    for address in addresses:
        refusal = _refusal(address, allow_private=allow_private)
        if refusal:
            raise AddressRefused(refusal)
    return str(addresses[0])


def _pinned(url: str, address: str) -> tuple[str, str]:
    """`url` with its host replaced by the checked `address`, and the Host header the receiver expects."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    host_header = parts.netloc
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, "")), host_header


def webhook_post(*, url: str, body: bytes, headers: dict[str, str], allow_private: bool) -> Answer:
    """POST `body` to `url` once. Never raises for what a receiver does: a refused address, a timeout, a redirect, a
    non-2xx status or a broken connection is an Answer with its error."""
    return outbound_post(
        url=url,
        body=body,
        headers=headers,
        allow_private=allow_private,
        max_bytes=settings.WEBHOOK_RESPONSE_MAX_BYTES,
        connect_seconds=settings.WEBHOOK_CONNECT_TIMEOUT,
        read_seconds=settings.WEBHOOK_READ_TIMEOUT,
        total_seconds=settings.WEBHOOK_TOTAL_SECONDS,
    )


def outbound_post(
    *,
    url: str,
    body: bytes,
    headers: dict[str, str],
    allow_private: bool,
    max_bytes: int,
    connect_seconds: float,
    read_seconds: float,
    total_seconds: float,
) -> Answer:
    """POST `body` to `url` once, under the rules every request the app sends out follows (webhooks, the AI judge):
    the address checked when sent and pinned, no redirects, no proxy, and at most `max_bytes` of the answer read
    before `total_seconds` (the Answer says `truncated` when more was left). Never raises for what a server does."""
    started = time.monotonic()

    def answer(status_code: int | None, error: str, excerpt: str = "", truncated: bool = False) -> Answer:
        return Answer(status_code, error[:300], excerpt, int((time.monotonic() - started) * 1000), truncated)

    try:
        address = webhook_address_resolve(url, allow_private=allow_private)
    except AddressRefused as refused:
        return answer(None, f"refused: {refused}")
    pinned_url, host_header = _pinned(url, address)
    hostname = urlsplit(url).hostname or ""
    timeout = httpx.Timeout(connect=connect_seconds, read=read_seconds, write=read_seconds, pool=connect_seconds)
    # trust_env=False: no proxy from the environment, which would send to an address this module never checked.
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            request = client.build_request(
                "POST",
                pinned_url,
                content=body,
                headers={**headers, "Host": host_header},
                extensions={"sni_hostname": hostname},  # TLS checks the certificate against the registered name
            )
            response = client.send(request, stream=True)
            try:
                excerpt, truncated = _excerpt(response, started + total_seconds, max_bytes)
                if response.is_redirect:
                    where = response.headers.get("location", "")[:100]
                    return answer(response.status_code, f"redirect to {where!r} not followed", excerpt, truncated)
                if not response.is_success:
                    return answer(response.status_code, f"answered {response.status_code}", excerpt, truncated)
                return answer(response.status_code, "", excerpt, truncated)
            finally:
                response.close()  # the rest of the body is never read
    except httpx.TimeoutException as error:
        return answer(None, f"timed out ({type(error).__name__})")
    except httpx.HTTPError as error:
        return answer(None, f"{type(error).__name__}: {error}")


def own_address_problem(url: str, *, app_hosts: list[str]) -> str | None:
    """Why `url` would send the app's requests back to the app itself (its host is one the app answers to, by
    ALLOWED_HOSTS or `app_hosts`, the Host of the request that configures it), or None."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    for own in app_hosts:
        try:
            own_parts = urlsplit(f"//{own}")
            own_host, own_port = (own_parts.hostname or "").lower().rstrip("."), own_parts.port
        except ValueError:
            continue
        if own_host and host == own_host and (own_port == port or (own_port is None and port in (80, 443))):
            return f"{parts.netloc} is this app itself"
    for pattern in settings.ALLOWED_HOSTS:
        pattern = pattern.lower()
        if pattern in ("*", "localhost", "127.0.0.1", "[::1]"):
            continue  # loopback: the private-address rule covers it (a model server on this host may be meant)
        if host == pattern or (pattern.startswith(".") and (host.endswith(pattern) or host == pattern[1:])):
            return f"{host} is a name this app answers to (ALLOWED_HOSTS)"
    return None


def _excerpt(response: httpx.Response, deadline: float, limit: int) -> tuple[str, bool]:
    """The first `limit` bytes of the body, read until the cap or the deadline, and whether more was left."""
    read = b""
    truncated = False
    try:
        for chunk in response.iter_raw():
            read += chunk
            if len(read) > limit or time.monotonic() > deadline:
                truncated = True
                break
    except httpx.HTTPError:
        truncated = True  # the status is what counts for a webhook; a body cut short is only a shorter excerpt
    return read[:limit].decode("utf-8", errors="replace"), truncated
