"""Private certificates for tests, demos and local services: a CA and the certificates it issues.

* :func:`make_test_pki` writes a throw-away CA (``ca.pem``, ``ca.key``) and a server
  certificate (``server.pem``, ``server.key``) into a directory, for tests and demos.
* :class:`LocalCA` creates or loads a CA and issues server and client certificates;
  :func:`parse_name` turns a host name or IP address a person typed into a
  subjectAltName entry, or says why it cannot; :func:`write_file` writes without
  overwriting. ``tcpls cert`` (:mod:`tcpls.cli.cert`) is built on them.

Every certificate fits the web PKI profile the verifier applies
(:mod:`tcpls.tls.hs.certs`): the CA has ``basicConstraints CA:TRUE`` (critical), a
``keyUsage`` and an ECDSA or RSA key; a certificate it issues has a ``subjectAltName``,
an ``authorityKeyIdentifier``, ``CA:FALSE`` and the extended key usage of its role.

Private keys are written unencrypted, readable by their owner only (mode 0600). Whoever
holds a CA key can make certificates for any name that every client trusting the CA
accepts: keep it private, and trust such a CA only where it is needed (``--cafile``),
not in a system-wide store.
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_VALID_DAYS",
    "KEY_TYPES",
    "LEAF_VALID_DAYS",
    "CAKey",
    "DevCertError",
    "DevPKI",
    "KeyType",
    "LocalCA",
    "PrivateKey",
    "Usage",
    "certificate_pem",
    "key_pem",
    "make_test_pki",
    "new_key",
    "parse_client_name",
    "parse_name",
    "write_file",
]

#: Key types: ECDSA P-256 (``ecdsa``), ECDSA P-384, RSA 2048 (3072 for a CA), Ed25519.
KeyType = Literal["ecdsa", "rsa", "ecdsa-p384", "ed25519"]
#: Every :data:`KeyType`, in the order of ``tcpls cert --help``.
KEY_TYPES: tuple[KeyType, ...] = get_args(KeyType)
#: What a certificate is for: TLS servers (serverAuth) or TLS clients (clientAuth).
Usage = Literal["server", "client"]
#: A private key of a certificate.
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
#: A private key of a CA: verifiers refuse Ed25519 CAs.
CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: Default lifetime of a local CA: 10 years.
CA_VALID_DAYS = 3650
#: Default lifetime of a certificate a local CA issues: 397 days, within every browser's
#: limit for server certificates.
LEAF_VALID_DAYS = 397

#: Clock skew allowed for: certificates are valid from an hour before they are made.
_BACKDATE = datetime.timedelta(hours=1)


class DevCertError(Exception):
    """A local CA or certificate that cannot be used or written; the message is one line."""


@dataclass(frozen=True)
class DevPKI:
    """Paths of a generated CA certificate, server certificate chain and server key."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    ca_key_file: Path


# -- keys and names ------------------------------------------------------------------


def new_key(kind: KeyType, *, ca: bool = False) -> PrivateKey:
    """A new private key of ``kind`` (RSA: 2048 bits, 3072 for a CA).

    An Ed25519 CA is not possible (verifiers refuse Ed25519 signatures on certificates):
    ``ca=True`` with ``ed25519`` raises ``ValueError``.
    """
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072 if ca else 2048)
    if kind == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        if ca:
            raise ValueError("an Ed25519 CA is refused by verifiers: use ecdsa or rsa")
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def parse_name(text: str) -> x509.DNSName | x509.IPAddress:
    """The subjectAltName entry of a host name or IP address given by a person.

    An IPv4 or IPv6 address (brackets allowed: ``[::1]``) gives an IP address entry; a
    DNS name gives a DNS entry, lower-cased, without a trailing dot, an internationalized
    name in its ASCII (IDNA) form. A DNS name is labels of letters, digits and hyphens
    (not first or last) separated by dots, 253 characters at most; a wildcard
    ``*.example.com`` stands for exactly one leftmost label and needs two labels after
    it. A name whose last label is a number (``10.0.1.256``) is a mistyped IP address.
    Anything else raises ``ValueError`` with the reason, in words.
    """
    bracketed = text.startswith("[") and text.endswith("]")
    literal = text[1:-1] if bracketed else text
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ValueError("an IPv6 zone (%...) cannot be in a certificate")
        if bracketed and address.version == 4:
            raise ValueError("brackets are for IPv6 addresses only")
        return x509.IPAddress(address)
    if bracketed or ":" in literal:
        if "%" in literal:
            raise ValueError("an IPv6 zone (%...) cannot be in a certificate")
        raise ValueError("not a valid IPv6 address")
    if not text:
        raise ValueError("empty name")
    name = text.removesuffix(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("not a valid internationalized domain name") from None
    name = name.lower()
    if len(name) > 253:
        raise ValueError("a DNS name has 253 characters at most")
    labels = name.split(".")
    wildcard = labels[0] == "*"
    if wildcard:
        labels = labels[1:]
        if len(labels) < 2 or not all(labels):
            raise ValueError("a wildcard needs two labels after '*.', like *.example.com")
    for label in labels:
        if not _LABEL.fullmatch(label):
            if len(label) > 63:
                raise ValueError("a DNS label (between dots) has 63 characters at most")
            if "*" in label:
                raise ValueError("a wildcard is only allowed as the whole first label (*.)")
            raise ValueError(
                "neither an IP address nor a DNS name (labels of letters, digits and "
                "hyphens, separated by dots)"
            )
    if labels[-1].isdigit():
        raise ValueError("not a valid IP address")
    return x509.DNSName(name)


def parse_client_name(text: str) -> x509.DNSName | x509.IPAddress | x509.RFC822Name:
    """The subjectAltName entry of a client's name: an email address (``alice@example.com``,
    an email entry) or what :func:`parse_name` accepts (``alice``, a DNS entry)."""
    if "@" not in text:
        return parse_name(text)
    local, _, domain = text.rpartition("@")
    if not local or not all(33 <= ord(c) < 127 and c not in '@()<>[]:;,\\"' for c in local):
        raise ValueError("not a valid email address")
    try:
        host = parse_name(domain)
    except ValueError:
        raise ValueError("not a valid email address") from None
    if not isinstance(host, x509.DNSName) or host.value.startswith("*"):
        raise ValueError("not a valid email address")
    return x509.RFC822Name(f"{local}@{host.value}")


# -- the CA ----------------------------------------------------------------------------


def _hash_for(key: CAKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        if key.curve.key_size > 256:
            return hashes.SHA384()
    return hashes.SHA256()


def _local_ca_subject(now: datetime.datetime) -> x509.Name:
    """A subject telling where and when a local CA was made (distinct CAs, distinct names)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "someone"
    where = f"{user}@{socket.gethostname()}"[:40]
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tcpls local CA"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, where),
            x509.NameAttribute(NameOID.COMMON_NAME, f"tcpls local CA {now:%Y-%m-%d %H:%M:%S}Z"),
        ]
    )


@dataclass(frozen=True)
class LocalCA:
    """A CA certificate and its private key, which issue certificates (:meth:`issue`)."""

    certificate: x509.Certificate
    key: CAKey

    @classmethod
    def create(
        cls,
        key_type: KeyType = "ecdsa",
        *,
        valid_days: int = CA_VALID_DAYS,
        subject: x509.Name | None = None,
        path_length: int | None = 0,
        start: datetime.datetime | None = None,
    ) -> LocalCA:
        """A new self-signed CA, valid from ``start`` (default: an hour ago) for
        ``valid_days``.

        ``subject`` defaults to a name saying who made it, where and when. ``path_length``
        0 (the default) lets it issue end-entity certificates only; ``None`` also lets
        it sign intermediate CAs. An ``ed25519`` key type gives an ECDSA P-256 CA (an
        Ed25519 CA would be refused); ``rsa`` gives RSA 3072.
        """
        now = datetime.datetime.now(datetime.UTC)
        begin = start or now - _BACKDATE
        key = new_key("ecdsa" if key_type == "ed25519" else key_type, ca=True)
        assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        name = subject or _local_ca_subject(now)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(begin)
            .not_valid_after(begin + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, _hash_for(key))
        )
        return cls(certificate, key)

    @classmethod
    def load(
        cls,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        *,
        now: datetime.datetime | None = None,
    ) -> LocalCA:
        """The CA of a PEM certificate and its unencrypted PEM key.

        Raises :class:`DevCertError` when a file cannot be read or parsed, the key does
        not belong to the certificate, the certificate is not a CA (``CA:TRUE``), its
        key is neither ECDSA nor RSA, or it is outside its validity period at ``now``
        (default: the current time).
        """
        try:
            certificate = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
        except ValueError:
            raise DevCertError(f"{cert_file} is not a PEM certificate") from None
        except OSError as exc:
            raise DevCertError(f"cannot read {cert_file}: {exc.strerror or exc}") from None
        try:
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        except TypeError:
            raise DevCertError(
                f"the CA key {key_file} is encrypted: tcpls cert needs it unencrypted"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise DevCertError(f"{key_file} is not a PEM private key") from None
        except OSError as exc:
            raise DevCertError(f"cannot read {key_file}: {exc.strerror or exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise DevCertError(
                f"the CA key {key_file} is neither ECDSA nor RSA (verifiers refuse other CAs)"
            )
        der = serialization.Encoding.DER
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(
            der, spki
        ):
            raise DevCertError(f"the key {key_file} does not belong to the CA {cert_file}")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            is_ca = constraints.value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise DevCertError(
                f"{cert_file} is not a CA certificate (no basicConstraints CA:TRUE)"
            )
        moment = now or datetime.datetime.now(datetime.UTC)
        if moment > certificate.not_valid_after_utc:
            raise DevCertError(
                f"the CA {cert_file} expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
            )
        if moment < certificate.not_valid_before_utc:
            raise DevCertError(
                f"the CA {cert_file} is not valid before "
                f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            )
        return cls(certificate, key)

    def issue(
        self,
        names: Sequence[x509.GeneralName],
        key: PrivateKey,
        *,
        usage: Usage = "server",
        valid_days: int = LEAF_VALID_DAYS,
        start: datetime.datetime | None = None,
        common_name: str | None = None,
    ) -> x509.Certificate:
        """A certificate for ``key``, for the subjectAltName entries ``names``.

        Valid from ``start`` (default: an hour ago) for ``valid_days``, both cut to
        the CA's own validity period. Its extended key usage is ``serverAuth`` or
        ``clientAuth`` (``usage``); its Common Name is ``common_name``, by default the
        first name (left out when longer than the 64 characters X.509 allows).
        """
        if not names:
            raise ValueError("a certificate needs at least one name")
        ca = self.certificate
        begin = max(
            start or datetime.datetime.now(datetime.UTC) - _BACKDATE, ca.not_valid_before_utc
        )
        end = min(begin + datetime.timedelta(days=valid_days), ca.not_valid_after_utc)
        cn = common_name if common_name is not None else str(names[0].value)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if 0 < len(cn) <= 64 else []
        )
        # RFC 5280 §4.2.1.6: with an empty subject, the subjectAltName is critical
        san_critical = len(subject) == 0
        try:
            ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        purpose = (
            ExtendedKeyUsageOID.SERVER_AUTH
            if usage == "server"
            else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(begin)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=san_critical)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(aki, critical=False)
            .sign(self.key, _hash_for(self.key))
        )


# -- files -----------------------------------------------------------------------------


def key_pem(key: PrivateKey) -> bytes:
    """``key`` in unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    """``certificate`` in PEM."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def write_file(path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = False) -> None:
    """Write ``data`` to a new file ``path`` with permissions ``mode`` (less the umask).

    Without ``overwrite`` an existing ``path`` raises ``FileExistsError`` and is left
    alone. With it, the data goes to a temporary file in the same directory that
    replaces ``path`` at once, so ``path`` is never half-written and a key never
    readable by others, even for a moment.
    """
    if not overwrite:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# -- tests and demos ---------------------------------------------------------------------


def make_test_pki(
    directory: str | os.PathLike[str],
    *,
    key_type: KeyType = "ecdsa",
    hostnames: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    valid_days: int = 30,
    not_valid_before: datetime.datetime | None = None,
    prefix: str = "",
) -> DevPKI:
    """Create a CA and a server certificate signed by it, valid for the given names.

    Both are valid from ``not_valid_before`` (default: an hour ago) for ``valid_days``;
    the CA is named ``CN=tcpls test CA`` and may sign intermediate CAs. Files, with
    ``prefix`` before each name: ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key``
    (existing files are replaced).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    start = not_valid_before or (datetime.datetime.now(datetime.UTC) - _BACKDATE)

    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tcpls test CA")])
    ca = LocalCA.create(
        key_type, valid_days=valid_days, subject=ca_name, path_length=None, start=start
    )
    key = new_key(key_type)
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cert = ca.issue(
        sans,
        key,
        valid_days=valid_days,
        start=start,
        common_name=hostnames[0] if hostnames else "tcpls",
    )

    pki = DevPKI(
        ca_file=out / f"{prefix}ca.pem",
        cert_file=out / f"{prefix}server.pem",
        key_file=out / f"{prefix}server.key",
        ca_key_file=out / f"{prefix}ca.key",
    )
    pki.ca_file.write_bytes(certificate_pem(ca.certificate))
    pki.cert_file.write_bytes(certificate_pem(cert))
    write_file(pki.key_file, key_pem(key), mode=0o600, overwrite=True)
    write_file(pki.ca_key_file, key_pem(ca.key), mode=0o600, overwrite=True)
    return pki
