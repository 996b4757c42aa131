"""Secure defaults of the Triton server launcher: HTTP off, control planes behind a token, TLS pass-through.

Triton's system-shared-memory API lets any client that reaches the port register a region and
make a python model (``retrieval``) write into it (one request crashed the 2.51 server), the
model-repository API loads and unloads models, and the logging/trace APIs change server settings.
Clients of this service only need inference, health and metadata, so by default:

- HTTP is off (``--allow-http=false``); ``allow_http=True`` turns it on, with the same restrictions
  (``--http-restricted-api``).
- On gRPC the ``shared-memory``, ``model-repository``, ``logging`` and ``trace`` protocols need the
  metadata ``triton-grpc-protocol-x-recsys-admin-token: <token>`` (``--grpc-restricted-protocol`` with
  key ``x-recsys-admin-token``; Triton adds the prefix); without a token given, a
  random one is made per server, known only to the launcher and its supervisor. Requests without
  it get UNAVAILABLE ("This API is restricted") and the server keeps serving.
- TLS: ``tls_cert``/``tls_key`` (and ``tls_root_cert`` + ``tls_mutual`` for client certificates)
  are passed through as ``--grpc-use-ssl*`` flags; the launcher's own client then speaks TLS too.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

ADMIN_HEADER = "x-recsys-admin-token"
# Triton 2.51 matches the restricted key in gRPC metadata under this prefix (its error message says so).
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
RESTRICTED = ("shared-memory", "model-repository", "logging", "trace")


@dataclass
class SecurityOptions:
    """What the server exposes and who may use its control APIs.

    Args:
        allow_http: serve HTTP/REST as well as gRPC (off by default: clients use gRPC).
        admin_token: value of the ``x-recsys-admin-token`` header the restricted APIs need
            (a random one when None).
        restricted: Triton protocol/API names put behind the token.
        tls_cert, tls_key: server certificate and key (PEM) to serve gRPC over TLS.
        tls_root_cert: CA (PEM) the launcher's client trusts; with ``tls_mutual`` also the CA that
            client certificates must chain to.
        tls_mutual: require client certificates (mTLS); then ``tls_client_cert``/``tls_client_key``
            are what the launcher's own client presents.

    Raises:
        ValueError: a restricted name Triton does not know, or half a TLS configuration.
        FileNotFoundError: a TLS file that does not exist.
    """

    allow_http: bool = False
    admin_token: str | None = None
    restricted: tuple[str, ...] = RESTRICTED
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_root_cert: str | None = None
    tls_mutual: bool = False
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    _token: str = field(init=False, repr=False)

    def __post_init__(self):
        known = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
                 "statistics", "trace", "logging")
        unknown = [r for r in self.restricted if r not in known]
        if unknown:
            raise ValueError(f"unknown restricted API(s) {unknown}; Triton knows: {', '.join(known)}")
        if self.admin_token is not None and (not self.admin_token or any(c in self.admin_token for c in ",:= \n")):
            raise ValueError(f"admin token {self.admin_token!r} is empty or holds one of ',:= ' or a newline; "
                             "use letters, digits, '-' and '_' (e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))')")
        self._token = self.admin_token or secrets.token_urlsafe(32)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(f"TLS needs both a certificate and a key; got cert={self.tls_cert!r}, "
                             f"key={self.tls_key!r}")
        if self.tls_mutual and not (self.tls_cert and self.tls_root_cert):
            raise ValueError("tls_mutual needs tls_cert, tls_key and tls_root_cert (the CA of client certificates)")
        for path in (self.tls_cert, self.tls_key, self.tls_root_cert, self.tls_client_cert, self.tls_client_key):
            if path and not Path(path).is_file():
                raise FileNotFoundError(f"TLS file {path} does not exist; pass the path of a PEM file")

    @property
    def token(self) -> str:
        """The admin token (the given one or the random one)."""
        return self._token

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def admin_headers(self) -> dict[str, str]:
        """gRPC metadata that unlocks the restricted APIs (model control, shared memory, ...)."""
        return {GRPC_HEADER_PREFIX + ADMIN_HEADER: self._token}

    def server_flags(self) -> list[str]:
        """``tritonserver`` flags for these options."""
        flags = [f"--allow-http={'true' if self.allow_http else 'false'}"]
        if self.restricted:
            rule = f"{','.join(self.restricted)}:{ADMIN_HEADER}={self._token}"
            flags.append(f"--grpc-restricted-protocol={rule}")
            if self.allow_http:
                flags.append(f"--http-restricted-api={rule}")
        if self.tls:
            flags += ["--grpc-use-ssl=true", f"--grpc-server-cert={self.tls_cert}",
                      f"--grpc-server-key={self.tls_key}"]
            if self.tls_root_cert:
                flags.append(f"--grpc-root-cert={self.tls_root_cert}")
            if self.tls_mutual:
                flags.append("--grpc-use-ssl-mutual=true")
        return flags

    def client_kwargs(self) -> dict:
        """Keyword arguments of ``tritonclient.grpc.InferenceServerClient`` that reach this server."""
        if not self.tls:
            return {}
        return {"ssl": True, "root_certificates": self.tls_root_cert,
                "private_key": self.tls_client_key, "certificate_chain": self.tls_client_cert}
