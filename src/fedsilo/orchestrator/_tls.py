"""Mutual TLS for the orchestrator: the client certificate is the caller's identity.

uvicorn does not put the peer certificate in the ASGI scope, so :class:`MutualTLSProtocol`
(a subclass of uvicorn's h11 protocol) reads it from the transport once the handshake is
done and adds the ASGI TLS extension (``scope["extensions"]["tls"]``) to every request on
that connection. The app then authorises on the certificate's SHA-256 fingerprint, which
provisioning recorded for each participant.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["MutualTLSProtocol", "peer_certificate", "peer_fingerprint", "server_ssl_context"]


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
