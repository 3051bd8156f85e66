"""Names in certificates: what a certificate is valid for, matching a server name, and
printing names from a peer's certificate safely in one-line errors.
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.x509.verification import Subject

__all__ = [
    "MAX_NAMES_SHOWN",
    "dn",
    "is_self_signed",
    "name_matches",
    "pinned_names",
    "printable",
    "san_names",
    "subject_for",
    "subjects_of",
    "valid_for",
    "when",
]

#: Names of a certificate listed in an error at most.
MAX_NAMES_SHOWN = 8
_MAX_TEXT = 120


def printable(text: str) -> str:
    """``text`` safe for a one-line message: control characters escaped, length capped."""
    safe = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return safe if len(safe) <= _MAX_TEXT else safe[: _MAX_TEXT - 3] + "..."


def dn(name: x509.Name) -> str:
    """A distinguished name as one printable RFC 4514 line (``(an empty name)`` if none)."""
    try:
        text = name.rfc4514_string()
    except ValueError:
        text = ""
    return printable(text) or "(an empty name)"


def when(moment: datetime.datetime) -> str:
    """A UTC moment for an error line: the date alone at midnight, else date and time."""
    if moment.time() == datetime.time(0, 0):
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def san_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (possibly hostile text)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
        return []
    return [printable(n) for n in names]


def valid_for(certificate: x509.Certificate) -> str:
    """What a certificate covers, for an error line: ``is valid for a, b and 3 more``."""
    names = san_names(certificate)
    if not names:
        return "names no host"
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    if len(names) > MAX_NAMES_SHOWN:
        shown += f" and {len(names) - MAX_NAMES_SHOWN} more"
    return f"is valid for {shown}"


def is_self_signed(certificate: x509.Certificate) -> bool:
    """Whether the certificate is its own issuer and its signature verifies with its own key."""
    if certificate.subject != certificate.issuer:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except Exception:  # any failure (bad signature, odd key type): not self-signed
        return False
    return True


def subject_for(server_name: str) -> Subject:
    """The verification subject of a server name: an IP address literal or a DNS name.

    Brackets around an IPv6 literal and an IPv6 zone (``%eth0``) are dropped; so is one
    trailing dot of a DNS name; an internationalized name is converted to its ASCII
    (IDNA) form. A name cryptography cannot use raises ``ValueError``.
    """
    name = server_name
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    literal = name.split("%", 1)[0] if ":" in name else name
    try:
        return x509.IPAddress(ipaddress.ip_address(literal))
    except ValueError:
        pass
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("invalid domain name") from None
    return x509.DNSName(name)


def subjects_of(certificate: x509.Certificate) -> list[Subject]:
    """Names the certificate is valid for, as verification subjects (for no server name)."""
    subjects: list[Subject] = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
        return subjects
    for dns in san.get_values_for_type(x509.DNSName):
        if dns.startswith("*."):
            dns = "tcpls-any" + dns[1:]
        try:
            subjects.append(x509.DNSName(dns))
        except ValueError:
            continue
    subjects += [x509.IPAddress(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return subjects


def pinned_names(certificate: x509.Certificate) -> list[x509.DNSName | x509.IPAddress]:
    """The subjectAltName DNS and IP entries, else the Common Name (as OpenSSL does)."""
    names: list[x509.DNSName | x509.IPAddress] = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [x509.DNSName(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [x509.IPAddress(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
        pass
    if names:
        return names
    for attribute in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        if isinstance(attribute.value, str):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(attribute.value)))
            except ValueError:
                names.append(x509.DNSName(attribute.value))
    return names


def name_matches(wanted: Subject, name: x509.DNSName | x509.IPAddress) -> bool:
    """Whether a certificate name covers the wanted one (a wildcard: one leftmost label)."""
    if isinstance(wanted, x509.IPAddress) or isinstance(name, x509.IPAddress):
        return isinstance(wanted, x509.IPAddress) and wanted == name
    host, pattern = wanted.value.lower().rstrip("."), name.value.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return host == pattern
