"""TLS for the TCP listener: the server's context from ``[http.tls]``.

Rules:
- TLS 1.2 at least. With ``client_ca``, client certificates are verified
  (required when ``require_client_cert``); a verified one names the caller.
- A certificate, key or CA that cannot be loaded stops start-up, naming the section.
"""

from __future__ import annotations

import ssl

from pymgr.config import HttpConfig

__all__ = ["TlsError", "server_context"]


class TlsError(Exception):
    """``[http.tls]`` cannot be put in force; the message says what failed."""


def server_context(http: HttpConfig) -> ssl.SSLContext | None:
    """The TLS context of the TCP listener; None when there is no TCP listener or no ``[http.tls]``.

    Raises:
        TlsError: the certificate, key or CA cannot be loaded.
    """
    tls = http.tls
    if tls is None or http.tcp is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile)
        if tls.client_ca is not None:
            context.load_verify_locations(cafile=tls.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"[http.tls]: cannot load the certificate, key or CA: {exc}") from None
    return context
