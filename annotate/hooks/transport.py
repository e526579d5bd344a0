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
    started = time.monotonic()

    def answer(status_code: int | None, error: str, excerpt: str = "") -> Answer:
        return Answer(status_code, error[:300], excerpt, int((time.monotonic() - started) * 1000))

    try:
        address = webhook_address_resolve(url, allow_private=allow_private)
    except AddressRefused as refused:
        return answer(None, f"refused: {refused}")
    pinned_url, host_header = _pinned(url, address)
    hostname = urlsplit(url).hostname or ""
    timeout = httpx.Timeout(
        connect=settings.WEBHOOK_CONNECT_TIMEOUT,
        read=settings.WEBHOOK_READ_TIMEOUT,
        write=settings.WEBHOOK_READ_TIMEOUT,
        pool=settings.WEBHOOK_CONNECT_TIMEOUT,
    )
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
                excerpt = _excerpt(response, started)
                if response.is_redirect:
                    where = response.headers.get("location", "")[:100]
                    return answer(response.status_code, f"redirect to {where!r} not followed", excerpt)
                if not response.is_success:
                    return answer(response.status_code, f"answered {response.status_code}", excerpt)
                return answer(response.status_code, "", excerpt)
            finally:
                response.close()  # the rest of the body is never read
    except httpx.TimeoutException as error:
        return answer(None, f"timed out ({type(error).__name__})")
    except httpx.HTTPError as error:
        return answer(None, f"{type(error).__name__}: {error}")


def _excerpt(response: httpx.Response, started: float) -> str:
    """The first WEBHOOK_RESPONSE_MAX_BYTES of the body, read until the cap or the deadline; the rest is left."""
    limit = settings.WEBHOOK_RESPONSE_MAX_BYTES
    deadline = started + settings.WEBHOOK_TOTAL_SECONDS
    read = b""
    try:
        for chunk in response.iter_raw():
            read += chunk
            if len(read) >= limit or time.monotonic() > deadline:
                break
    except httpx.HTTPError:
        pass  # the status is what counts; a body cut short is only a shorter excerpt
    return read[:limit].decode("utf-8", errors="replace")
