"""The cluster's secret material: one CA, and a certificate for every member signed from it.

``dffs cluster init FILE`` writes the cluster key file: the CA certificate and
the CA's private key, PEM, mode 0600. Every member is given the same file (the
cluster is one trust domain) and, at start, signs a certificate of its own for
a fresh key pair: no enrolment round trip, no manager needed to join, and a
member's certificate never outlives its process by more than its validity.

A member's certificate names its **role** (daemon, scheduler, manager, client)
and **id** (a daemon's host ID; the address for others) in a URI SAN
``dffs:ROLE:ID``, which servers read to decide what a caller may do. Every
certificate also carries the DNS SAN :data:`CLUSTER_NAME`, which clients verify
instead of the address they dialled (members are reached by many addresses;
what matters is that the peer holds a certificate from this CA).

The same key file also yields the data plane's request-signing key
(:func:`ClusterKey.piece_auth_key`), derived so that it is not the CA key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from dffs.errors import UsageError

#: The name every member's certificate carries and every client verifies.
CLUSTER_NAME = "dffs.cluster"
#: Roles a certificate can name.
ROLES = ("daemon", "scheduler", "manager", "client")
#: How long a member certificate is valid (members sign a new one at every start).
MEMBER_VALIDITY = datetime.timedelta(days=30)
CA_VALIDITY = datetime.timedelta(days=3650)

_CLOCK_SKEW = datetime.timedelta(minutes=10)


@attrs.frozen
class Identity:
    """Who a certificate says its holder is."""

    role: str
    id: str

    @property
    def uri(self) -> str:
        return f"dffs:{self.role}:{self.id}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity | None:
        scheme, _, rest = uri.partition(":")
        role, _, ident = rest.partition(":")
        if scheme != "dffs" or role not in ROLES or not ident:
            return None
        return cls(role, ident)


@attrs.frozen
class MemberCredentials:
    """One member's certificate and key (PEM) and the CA they chain to."""

    identity: Identity
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes


@attrs.frozen
class ClusterKey:
    """A loaded cluster key file."""

    path: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """A short name for this cluster's CA (logs, docs): the first 16 hex digits of its SHA-256."""
        return self.ca_cert.fingerprint(hashes.SHA256()).hex()[:16]

    def issue(self, identity: Identity, *, addresses: tuple[str, ...] = ()) -> MemberCredentials:
        """A fresh key pair and a certificate for it, signed by the cluster CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [
            x509.DNSName(CLUSTER_NAME),
            x509.UniformResourceIdentifier(identity.uri),
        ]
        for address in addresses:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(address)))
            except ValueError:
                sans.append(x509.DNSName(address))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{identity.role} {identity.id}"[:64])]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + MEMBER_VALIDITY)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        return MemberCredentials(
            identity=identity,
            key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            ca_pem=self.ca_pem,
        )

    def piece_auth_key(self) -> bytes:
        """The data plane's request-signing key: derived from the CA key, never the CA key itself."""
        raw = self.ca_key.private_numbers().private_value.to_bytes(32, "big")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"dffs piece request auth v1").derive(raw)


def create_cluster_key(path: Path, *, name: str = "dffs cluster") -> ClusterKey:
    """Write a new cluster key file at ``path`` (mode 0600; refuses to overwrite one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists: a cluster key is never overwritten (remove it first)") from None
    except OSError as exc:
        raise UsageError(f"cannot write the cluster key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return ClusterKey(path, cert, key)


def load_cluster_key(path: Path) -> ClusterKey:
    """Read a cluster key file; UsageError with a one-line reason if it is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the cluster key {path}: {exc.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(data)
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise UsageError(f"{path} is not a dffs cluster key (expected a CA certificate and its key, PEM)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"{path}: the cluster key must be an EC key (made by `dffs cluster init`)")
    public = cert.public_key()
    if (
        not isinstance(public, ec.EllipticCurvePublicKey)
        or public.public_numbers() != key.public_key().public_numbers()
    ):
        raise UsageError(f"{path}: the certificate and the key do not belong together")
    if os.stat(path).st_mode & 0o077:
        raise UsageError(f"{path} is readable by others: chmod 600 {path}")
    return ClusterKey(path, cert, key)


def identity_of(cert_pem: bytes) -> Identity | None:
    """The dffs identity a peer certificate names (its URI SAN), or None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        identity = Identity.from_uri(uri)
        if identity is not None:
            return identity
    return None
