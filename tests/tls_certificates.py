"""A certificate authority made for one test, and a server's and a client's certificates from it.

PEM files, P-256 keys, valid for a day: what ``api.tls_certfile`` / ``tls_keyfile`` /
``tls_ca_certs`` take and what a stock client (httpx, urllib, curl) verifies against.
"""

from __future__ import annotations

import datetime
import ipaddress
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PEM = serialization.Encoding.PEM
# what Python 3.13's strict verification asks of a CA (VERIFY_X509_STRICT)
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class Pki:
    """A CA's certificate; a server's certificate and key; a client's key and certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client: Path  # the client's key, then its certificate (what urllib's load_cert_chain takes)


def write_pki(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Pki:
    """A new CA, a server certificate for ``hosts`` and a client certificate, in ``folder``.
    A second call makes another CA: the wrong one for the first call's certificates."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"streamserve test CA {uuid.uuid4().hex[:8]}")
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
    )
    ca_cert = ca.sign(ca_key, hashes.SHA256())
    issuer = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    pki = Pki(
        folder / "ca.pem", folder / "server.pem", folder / "server-key.pem", folder / "client.pem"
    )
    pki.ca.write_bytes(ca_cert.public_bytes(PEM))

    server_key = ec.generate_private_key(ec.SECP256R1())
    names = [_general_name(host) for host in hosts]
    server = (
        _leaf(_name(hosts[0]), ca_name, server_key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH)
        .add_extension(issuer, critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki.server_cert.write_bytes(server.public_bytes(PEM))
    pki.server_key.write_bytes(_private_pem(server_key))
    pki.server_key.chmod(0o600)

    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (
        _leaf(
            _name("streamserve test client"),
            ca_name,
            client_key.public_key(),
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        .add_extension(issuer, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki.client.write_bytes(_private_pem(client_key) + client.public_bytes(PEM))
    pki.client.chmod(0o600)
    return pki


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _leaf(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    purpose: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    return (
        _builder(subject, issuer, public_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
