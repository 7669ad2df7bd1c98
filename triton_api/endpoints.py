"""Server addresses as users type them: ``HOST:PORT``, ``http://HOST:PORT`` or ``grpc://HOST:PORT``.

tritonclient wants a bare ``HOST:PORT`` (an ``http://`` prefix makes its HTTP client fail with an
unrelated error). Anything else is refused with a UsageError that says what was expected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from build_tools.errors import UsageError

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


def parse_endpoint(value: str, protocol: str, flag: str = "--url") -> str:
    """``HOST:PORT`` for tritonclient, from what a user passed for ``protocol`` (http or grpc)."""
    text = value.strip()
    if not text:
        raise UsageError(f"{flag} is empty; expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORTS[protocol]}")
    scheme = ""
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme in ("https", "grpcs"):
            raise UsageError(f"{flag} {value}: TLS endpoints are not supported by this client; expected "
                             f"HOST:PORT of a plain {protocol} endpoint")
        if scheme not in DEFAULT_PORTS:
            raise UsageError(f"{flag} {value}: unknown scheme {scheme!r}; expected HOST:PORT (or http:// / grpc://)")
        if scheme != protocol:
            raise UsageError(f"{flag} {value} is a {scheme} address but the protocol is {protocol}; pass the "
                             f"{protocol} endpoint (default port {DEFAULT_PORTS[protocol]}) or --protocol {scheme}")
    parts = urlsplit(text if scheme else f"//{text}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"{flag} {value}: a path is not allowed; expected HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{flag} {value}: the port is not a number in 1..65535; expected HOST:PORT") from None
    if not parts.hostname:
        raise UsageError(f"{flag} {value}: no host name; expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORTS[protocol]}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port or DEFAULT_PORTS[protocol]}"
