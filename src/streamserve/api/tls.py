"""TLS of the HTTP API: its certificate files, checked at startup, as uvicorn's options.

uvicorn loads the files only once its thread runs, where a bad file would read as "the HTTP API
did not start"; loading them here first names the setting at fault. An encrypted key is refused
rather than letting OpenSSL ask for its password on the server's terminal.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from streamserve.errors import ConfigurationError
from streamserve.settings import ApiSettings


def tls_options(settings: ApiSettings) -> dict[str, Any]:
    """uvicorn's ``ssl_*`` options for ``settings`` (none without a certificate), once the
    files load; raises :class:`ConfigurationError` naming the setting whose file does not."""
    certfile, keyfile, ca_certs = settings.tls_certfile, settings.tls_keyfile, settings.tls_ca_certs
    if certfile is None or keyfile is None:  # the settings allow both or neither
        return {}
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
    options: dict[str, Any] = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    if ca_certs is not None:
        _check_readable("tls_ca_certs", ca_certs)
        try:
            context.load_verify_locations(cafile=ca_certs)
        except ssl.SSLError as err:
            raise ConfigurationError(
                f"api.tls_ca_certs ({ca_certs}) holds no PEM CA certificate: {err}"
            ) from err
        options |= {"ssl_ca_certs": str(ca_certs), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options


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
