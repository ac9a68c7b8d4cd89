"""TLS: the server's SSLContext, and the ASGI `tls` scope extension of a connection.

Defaults and why:
- TLS 1.2 is the minimum (RFC 8996 deprecates 1.0 and 1.1);
- the TLS 1.2 cipher list is Python's own (forward-secret AEAD suites only) unless
  --ssl-ciphers says otherwise; TLS 1.3 suites are all strong and not configurable here;
- ALPN offers `http/1.1` only, so a client never believes it negotiated h2;
- renegotiation is off (a client-initiated renegotiation costs the server a handshake).

Every mistake in the files (missing, unreadable, wrong password, key not matching the
certificate) is a `ConfigError` with one line that names the file: the CLI prints it and
exits with code 3 instead of a traceback.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from .config import Config, ConfigError

log = logging.getLogger("fastserve.error")

# ssl.TLSVersion values are the protocol numbers the ASGI TLS extension asks for (0x0303...).
_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


class ServerSSLContext(ssl.SSLContext):
    """An SSLContext that also remembers the PEM of the server certificate (for the scope)."""

    server_cert: str | None = None
    cipher_ids: dict[str, int] | None = None


def create_ssl_context(config: Config) -> ssl.SSLContext:
    """The server's context: from the --ssl-* options, or what the embedding program's
    `ssl_context_factory(config, default_factory)` returns (uvicorn's Config API: it may
    call `default_factory()` for the context the options describe, and change it)."""
    factory = config.ssl_context_factory
    if factory is None:
        return options_context(config)

    def default_factory() -> ssl.SSLContext:
        if not config.ssl_certfile:
            raise ConfigError(
                "ssl_context_factory called the default factory, which needs ssl_certfile"
            )
        return options_context(config)

    ctx = factory(config, default_factory)
    if not isinstance(ctx, ssl.SSLContext):
        raise ConfigError(
            f"ssl_context_factory must return an ssl.SSLContext, not {type(ctx).__name__}"
        )
    return ctx


def options_context(config: Config) -> ServerSSLContext:
    """The context the --ssl-* options describe."""
    if not config.ssl_certfile:
        raise ConfigError("TLS needs --ssl-certfile")
    if config.ssl_cert_reqs not in (0, 1, 2):
        raise ConfigError("--ssl-cert-reqs must be 0 (none), 1 (optional) or 2 (required)")
    ctx = ServerSSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = _maximum_version(config.ssl_version)
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    _load_chain(ctx, config)
    if config.ssl_ca_certs:
        try:
            ctx.load_verify_locations(cafile=config.ssl_ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot use --ssl-ca-certs {config.ssl_ca_certs}: {_why(exc)}"
            ) from None
    if config.ssl_cert_reqs:
        if not config.ssl_ca_certs:
            raise ConfigError("--ssl-cert-reqs needs --ssl-ca-certs to verify client certificates")
        ctx.verify_mode = ssl.VerifyMode(config.ssl_cert_reqs)
    if config.ssl_ciphers:
        try:
            ctx.set_ciphers(config.ssl_ciphers)
        except ssl.SSLError:
            raise ConfigError(f"--ssl-ciphers {config.ssl_ciphers!r} selects no cipher") from None
    # h2 first when HTTP/2 is served (RFC 9113 §3.2); http/1.1 for everyone else.
    from .protocols import http2_upgrade

    ctx.set_alpn_protocols(["h2", "http/1.1"] if http2_upgrade(config) else ["http/1.1"])
    ctx.server_cert = _first_pem(_read(config.ssl_certfile, "--ssl-certfile"))
    # OpenSSL's cipher ids are 0x0300XXXX, XXXX being the IANA number the extension wants.
    ctx.cipher_ids = {c["name"]: c["id"] & 0xFFFF for c in ctx.get_ciphers()}
    return ctx


# --ssl-version (uvicorn's, an ssl.PROTOCOL_* number) -> the highest version offered.
_SSL_VERSIONS = {
    int(ssl.PROTOCOL_TLS_SERVER): ssl.TLSVersion.MAXIMUM_SUPPORTED,
    int(ssl.PROTOCOL_TLS): ssl.TLSVersion.MAXIMUM_SUPPORTED,
    int(ssl.PROTOCOL_TLSv1_2): ssl.TLSVersion.TLSv1_2,  # TLS 1.2 only, as uvicorn pins it
}
# TLS 1.0 and 1.1 are never offered (RFC 8996); uvicorn would serve that one version.
_OBSOLETE = {int(ssl.PROTOCOL_TLSv1): "TLS 1.0", int(ssl.PROTOCOL_TLSv1_1): "TLS 1.1"}


def without_obsolete_version(config: Config) -> Config:
    """`config` with an obsolete --ssl-version replaced by what is served instead, once its
    warning is logged: workers and --reload children get this one and do not warn again."""
    if config.ssl_version in _OBSOLETE:
        return config.replace(ssl_version=int(ssl.PROTOCOL_TLS_SERVER))
    return config


def _maximum_version(ssl_version: int) -> ssl.TLSVersion:
    if ssl_version in _SSL_VERSIONS:
        return _SSL_VERSIONS[ssl_version]
    if ssl_version in _OBSOLETE:
        log.warning(
            "--ssl-version %d (%s only) is not served: TLS 1.0 and 1.1 are deprecated "
            "(RFC 8996); serving TLS 1.2 and 1.3 instead",
            ssl_version,
            _OBSOLETE[ssl_version],
        )
        return ssl.TLSVersion.MAXIMUM_SUPPORTED
    raise ConfigError(
        f"--ssl-version {ssl_version}: not a server protocol (17 or 2: TLS 1.2 and 1.3; "
        "5: TLS 1.2 only)"
    )


def _load_chain(ctx: ssl.SSLContext, config: Config) -> None:
    certfile = config.ssl_certfile
    assert certfile is not None
    keyfile = config.ssl_keyfile or certfile
    cert_text = _read(certfile, "--ssl-certfile")
    key_text = _read(keyfile, "--ssl-keyfile") if config.ssl_keyfile else cert_text
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise ConfigError(f"--ssl-certfile {certfile} holds no PEM certificate")
    if "PRIVATE KEY-----" not in key_text:
        raise ConfigError(f"{keyfile} holds no PEM private key (--ssl-keyfile)")
    password = config.ssl_keyfile_password
    try:
        # A callable password: OpenSSL would otherwise prompt on the terminal for an
        # encrypted key, hanging a server that runs without one.
        ctx.load_cert_chain(certfile, config.ssl_keyfile, password or _no_password)
    except _EncryptedKey:
        raise ConfigError(
            f"the TLS key {keyfile} is encrypted: pass --ssl-keyfile-password"
        ) from None
    except ssl.SSLError as exc:
        if password and "ENCRYPTED" in key_text:
            raise ConfigError(f"wrong --ssl-keyfile-password for {keyfile}") from None
        raise ConfigError(f"cannot load TLS certificate/key {keyfile}: {_why(exc)}") from None


def _read(path: str, flag: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {flag} {path}: {exc.strerror}") from None


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey


def _why(exc: BaseException) -> str:
    """A one-line reason: the OS error, or OpenSSL's reason (`bad decrypt`, `key values
    mismatch`...) rather than its error stack."""
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        return reason.replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _first_pem(text: str) -> str | None:
    """The server certificate: the first PEM block of --ssl-certfile."""
    marker = "-----END CERTIFICATE-----"
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find(marker, begin)
    if begin < 0 or end < 0:
        return None
    return text[begin : end + len(marker)] + "\n"


def tls_extension(transport: Any) -> dict[str, Any]:
    """The ASGI TLS extension for one connection (asgiref's "TLS Extension" spec).

    `client_cert_chain` holds the client's own certificate only: Python 3.11's ssl module
    does not expose the rest of the verified chain."""
    ssl_object = transport.get_extra_info("ssl_object")
    ctx = transport.get_extra_info("sslcontext")
    info: dict[str, Any] = {
        "server_cert": getattr(ctx, "server_cert", None),
        "client_cert_chain": [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }
    if ssl_object is None:
        return info
    info["tls_version"] = _VERSIONS.get(ssl_object.version() or "")
    cipher = ssl_object.cipher()
    if cipher is not None:
        ids = getattr(ctx, "cipher_ids", None) or {}
        info["cipher_suite"] = ids.get(cipher[0])
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        info["client_cert_chain"] = [ssl.DER_cert_to_PEM_cert(der)]
        info["client_cert_name"] = _rfc4514(ssl_object.getpeercert())
    return info


def _rfc4514(cert: Any) -> str | None:
    """The subject as an RFC 4514 string: most specific RDN first, `,` and `+` escaped."""
    subject = (cert or {}).get("subject")
    if not subject:
        return None
    short = {
        "commonName": "CN",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "localityName": "L",
        "stateOrProvinceName": "ST",
        "domainComponent": "DC",
        "userId": "UID",
    }
    rdns = []
    for rdn in reversed(subject):
        parts = [f"{short.get(k, k)}={_escape_dn(v)}" for k, v in rdn]
        rdns.append("+".join(parts))
    return ",".join(rdns)


def _escape_dn(value: str) -> str:
    out = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out
