"""TLS of the HTTP API: its certificate files, loaded at startup into the server's context.

The files are loaded before the server's thread starts, where a bad file would read as "the
HTTP API did not start": the error names the setting at fault. An encrypted key is refused
rather than letting OpenSSL ask for its password on the server's terminal. The handshake itself
is done by :class:`~streamserve.api.protocol.LimitedProtocol`, within the head deadline.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from streamserve.errors import ConfigurationError
from streamserve.settings import ApiSettings


def tls_context(settings: ApiSettings) -> ssl.SSLContext | None:
    """The server's TLS context for ``settings`` (none without a certificate); raises
    :class:`ConfigurationError` naming the setting whose file does not load."""
    certfile, keyfile, ca_certs = settings.tls_certfile, settings.tls_keyfile, settings.tls_ca_certs
    if certfile is None or keyfile is None:  # the settings allow both or neither
        return None
    for setting, path in (("tls_certfile", certfile), ("tls_keyfile", keyfile)):
        _check_readable(setting, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    except (ssl.SSLError, _EncryptedKeyError) as err:
        raise ConfigurationError(
            f"api.tls_certfile ({certfile}) and api.tls_keyfile ({keyfile}) are not a PEM "
            f"certificate and its unencrypted private key: {err}"
        ) from err
    if ca_certs is not None:
        _check_readable("tls_ca_certs", ca_certs)
        try:
            context.load_verify_locations(cafile=ca_certs)
        except ssl.SSLError as err:
            raise ConfigurationError(
                f"api.tls_ca_certs ({ca_certs}) holds no PEM CA certificate: {err}"
            ) from err
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _EncryptedKeyError(Exception):
    pass


def _no_password() -> bytes:
    raise _EncryptedKeyError("the private key is encrypted; streamserve needs it unencrypted")


def _check_readable(setting: str, path: Path) -> None:
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as err:
        raise ConfigurationError(f"api.{setting}: cannot read {path}: {err}") from err
