"""Mutual TLS for fedsilo's servers: the client certificate is the caller's identity.

The orchestrator and each silo's approval endpoint serve HTTPS this way. uvicorn does not
put the peer certificate in the ASGI scope, so :class:`MutualTLSProtocol` (a subclass of
uvicorn's h11 protocol) reads it from the transport once the handshake is done and adds
the ASGI TLS extension (``scope["extensions"]["tls"]``) to every request on that
connection. The app then authorises on the certificate's SHA-256 fingerprint, which
provisioning recorded for each participant. :func:`https_config` runs an app that way.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Mapping
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "MutualTLSProtocol",
    "https_config",
    "peer_certificate",
    "peer_fingerprint",
    "server_ssl_context",
]


def server_ssl_context(*, cert_file: str, key_file: str, ca_file: str) -> ssl.SSLContext:
    """TLS 1.3 server context that requires a client certificate from the federation CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=ca_file)
    ctx.load_cert_chain(certfile=cert_file, keyfile=key_file)
    return ctx


class MutualTLSProtocol(H11Protocol):
    """h11 protocol that hands the verified client certificate to the app."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der: bytes | None = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        inner = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket"):
                extensions = dict(scope.get("extensions") or {})
                extensions["tls"] = {
                    "client_cert_chain": [der] if der else [],
                    "tls_version": 0x0304,
                }
                scope = {**scope, "extensions": extensions}
            await inner(scope, receive, send)

        self.app = with_tls


def peer_certificate(scope: Mapping[str, Any]) -> bytes | None:
    """The DER client certificate on this request, if any."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain or not isinstance(chain[0], bytes | bytearray):
        return None
    return bytes(chain[0])


def peer_fingerprint(scope: Mapping[str, Any]) -> str | None:
    """SHA-256 (hex) of the DER client certificate on this request, if any."""
    der = peer_certificate(scope)
    return None if der is None else hashlib.sha256(der).hexdigest()


def https_config(
    app: Any,
    *,
    host: str,
    port: int,
    cert_file: str,
    key_file: str,
    ca_file: str,
    log_level: str = "info",
    **options: Any,
) -> uvicorn.Config:
    """uvicorn's configuration for serving ``app`` on ``host:port`` with mutual TLS.

    The server presents ``cert_file`` and accepts clients whose certificate ``ca_file``
    issued (:func:`server_ssl_context`); each request carries the client certificate
    (:class:`MutualTLSProtocol`). No WebSockets, no access log, three seconds to finish
    requests on shutdown; ``options`` go to :class:`uvicorn.Config` as they are.
    """
    context = server_ssl_context(cert_file=cert_file, key_file=key_file, ca_file=ca_file)

    def ssl_factory(_config: uvicorn.Config, _default: Any) -> ssl.SSLContext:
        return context

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=MutualTLSProtocol,
        ws="none",
        ssl_context_factory=ssl_factory,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=3,
        **options,
    )
