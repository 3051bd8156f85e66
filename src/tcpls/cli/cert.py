"""``tcpls cert``: a local CA and certificates from it, in one command, in the spirit of mkcert.

:func:`issue_local_certificates` lays out the files of a directory (the CA, reused or
created; one server certificate named after its first name; client certificates),
checks everything before writing anything, and writes with :mod:`tcpls.devcert`.
:func:`cmd_cert` prints the files written and the ``serve``, ``connect`` and
``openssl s_client`` lines that use them. Errors are one line: exit status 2 for a
command line that names no certificate or a bad name, 1 for the rest. Nothing here
imports ``cryptography`` until the command runs (``tcpls --help`` stays quick).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tcpls.cli.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CommandError, one_line

if TYPE_CHECKING:
    from cryptography import x509

    from tcpls.devcert import KeyType, PrivateKey, Usage

__all__ = [
    "DEFAULT_OUT",
    "IssuedCertificate",
    "LocalPKI",
    "add_subparser",
    "cmd_cert",
    "file_stem",
    "issue_local_certificates",
]

#: Where ``tcpls cert`` writes without ``--out``.
DEFAULT_OUT = "tcpls-certs"
#: The port the printed next steps use: ``tcpls serve``'s default.
_PORT = 8443
# --key-type choices, as tcpls.devcert.KEY_TYPES (kept here: --help needs no cryptography)
_KEY_TYPES = ("ecdsa", "rsa", "ecdsa-p384", "ed25519")
_LEAF_DAYS = 397  # tcpls.devcert.LEAF_VALID_DAYS
_CA_YEARS = 10  # tcpls.devcert.CA_VALID_DAYS

_DESCRIPTION = f"""\
Make a server certificate for the names given with --name, and client certificates with
--client, signed by a local CA kept in --out DIR: the first run creates the CA (DIR/ca.pem
and its key DIR/ca.key, valid {_CA_YEARS} years), later runs reuse it, so every certificate
made in DIR is trusted with the one --cafile DIR/ca.pem. The server certificate is
DIR/NAME.pem and DIR/NAME.key after the first --name; a client certificate
DIR/NAME-client.pem and .key. Existing files are never overwritten without --force, and
the CA never is (to make a new CA, move ca.pem and ca.key away). Keys are written
unencrypted with mode 0600. The command then prints the serve and connect lines that use
the files. For tests and private services only: whoever holds ca.key can make
certificates for any name that these clients accept.
"""

_EPILOG = """\
examples:
  tcpls cert --name localhost --name 127.0.0.1 --name ::1
  tcpls cert --name server.lan --name 10.0.1.2 --name 10.0.2.2 --out ./pki
  tcpls cert --name '*.example.test' --client alice --out ./pki
"""


class Subparsers(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as we use it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """Add a command and return its parser."""
        ...


def add_subparser(sub: Subparsers) -> argparse.ArgumentParser:
    """Add the ``cert`` command to the subparsers of ``tcpls``; return its parser."""
    p = sub.add_parser(
        "cert",
        help="make a local CA and a certificate for given names (like mkcert)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--name",
        "-n",
        metavar="NAME",
        action="append",
        default=[],
        help="a host name (wildcards allowed: *.example.com) or IP address the server "
        "certificate is valid for; repeatable (IP addresses become IP address entries, "
        "the others DNS entries; the first is also the Common Name and the file name)",
    )
    p.add_argument(
        "--client",
        metavar="NAME",
        action="append",
        default=[],
        help="also make a client certificate (clientAuth) for NAME, a host name, IP "
        "address or email address, for servers run with --client-ca DIR/ca.pem; repeatable",
    )
    p.add_argument(
        "--out",
        "-o",
        metavar="DIR",
        default=DEFAULT_OUT,
        help=f"directory of the CA and the certificates (default: ./{DEFAULT_OUT})",
    )
    p.add_argument(
        "--days",
        metavar="N",
        type=_days,
        default=_LEAF_DAYS,
        help=f"validity of the certificates, in days (default: {_LEAF_DAYS}), cut to the CA's",
    )
    p.add_argument(
        "--key-type",
        choices=_KEY_TYPES,
        default="ecdsa",
        help="key of the certificates (default: ecdsa, P-256); a new CA gets the same "
        "kind, except with ed25519 (verifiers refuse Ed25519 CAs: the CA is ECDSA P-256) "
        "and rsa (RSA 3072 for the CA, 2048 for the certificates)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace existing certificate and key files (never the CA)",
    )
    p.set_defaults(func=cmd_cert)
    return p


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 < value <= 100 * 366:
        raise argparse.ArgumentTypeError("must be a number of days from 1 to 36600")
    return value


def cmd_cert(args: argparse.Namespace) -> int:
    """``tcpls cert``: errors are one line on standard error and an exit status."""
    try:
        pki = issue_local_certificates(
            args.out,
            args.name,
            args.client,
            key_type=args.key_type,
            valid_days=args.days,
            force=args.force,
        )
    except CommandError as exc:
        print(f"tcpls: {exc}", file=sys.stderr)
        return exc.status
    _report(pki, sys.stdout)
    return EXIT_OK


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate written by :func:`issue_local_certificates`."""

    #: Its subjectAltName entries, normalized (lower case, IDNA, no trailing dot).
    names: tuple[str, ...]
    usage: Usage
    cert_file: Path
    key_file: Path
    not_after: datetime.datetime


@dataclass(frozen=True)
class LocalPKI:
    """What :func:`issue_local_certificates` did: the CA it used and the certificates."""

    ca_file: Path
    ca_key_file: Path
    #: Whether the CA was created by this call (else an existing one was reused).
    ca_created: bool
    ca_not_after: datetime.datetime
    certificates: tuple[IssuedCertificate, ...]


def file_stem(name: str, usage: Usage = "server") -> str:
    """The file name, without extension, of a certificate whose first name is ``name``.

    As mkcert does: ``*`` becomes ``_wildcard`` and ``:`` (IPv6) ``_``; a client
    certificate's stem ends with ``-client``, and a server certificate never takes
    the CA's stem (``ca``).
    """
    stem = name.replace("*", "_wildcard").replace(":", "_").replace("/", "_")
    if usage == "client":
        return f"{stem}-client"
    return f"{stem}-server" if stem == "ca" else stem


def issue_local_certificates(
    directory: str | os.PathLike[str],
    server_names: Sequence[str] = (),
    client_names: Sequence[str] = (),
    *,
    key_type: KeyType = "ecdsa",
    valid_days: int = _LEAF_DAYS,
    force: bool = False,
) -> LocalPKI:
    """Issue a server certificate for ``server_names`` and one client certificate per
    client name, from the local CA of ``directory``.

    The CA is ``directory/ca.pem`` and ``directory/ca.key``: reused when both exist,
    created (with ``directory``) when neither does, never overwritten. The server
    certificate is ``<first name>.pem`` and ``.key``, a client certificate
    ``<name>-client.pem`` and ``.key`` (:func:`file_stem`). Every name is checked
    first (:func:`tcpls.devcert.parse_name`), then, without ``force``, that no
    certificate or key file exists: a refusal raises :class:`CommandError` before
    anything is written. Keys get mode 0600; a replaced file is replaced at once.
    """
    from tcpls.devcert import (
        DevCertError,
        LocalCA,
        certificate_pem,
        key_pem,
        new_key,
        parse_client_name,
        parse_name,
        write_file,
    )

    if not server_names and not client_names:
        raise CommandError(
            "say which names the certificate is for: --name HOST (repeatable); "
            "--client NAME for a client certificate",
            EXIT_USAGE,
        )
    servers = _unique(_parsed("--name", name, parse_name) for name in server_names)
    clients = _unique(_parsed("--client", name, parse_client_name) for name in client_names)
    out = Path(directory)
    ca_file, ca_key_file = out / "ca.pem", out / "ca.key"
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out} is not a directory")
    has_cert, has_key = ca_file.exists(), ca_key_file.exists()
    if has_cert != has_key:
        present, missing = (ca_file, ca_key_file) if has_cert else (ca_key_file, ca_file)
        raise CommandError(
            f"{present} exists but {missing} does not: restore it, or move both away "
            "to create a new CA"
        )
    plans: list[tuple[list[x509.GeneralName], Usage, Path, Path]] = []
    if servers:
        stem = file_stem(str(servers[0].value), "server")
        plans.append((servers, "server", out / f"{stem}.pem", out / f"{stem}.key"))
    for client in clients:
        stem = file_stem(str(client.value), "client")
        plans.append(([client], "client", out / f"{stem}.pem", out / f"{stem}.key"))
    targets = [path for _, _, cert_file, key_file in plans for path in (cert_file, key_file)]
    if len(set(targets)) != len(targets):
        raise CommandError(f"two certificates would be written to the same files in {out}")
    existing = [str(path) for path in targets if path.exists()]
    if existing and not force:
        raise CommandError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: "
            "use --force to replace them, or another --out directory"
        )

    try:
        ca = LocalCA.load(ca_file, ca_key_file) if has_cert else LocalCA.create(key_type)
        issued: list[tuple[x509.Certificate, PrivateKey]] = []
        for names, usage, _, _ in plans:
            key = new_key(key_type)
            issued.append((ca.issue(names, key, usage=usage, valid_days=valid_days), key))
        out.mkdir(parents=True, exist_ok=True)
        if not has_cert:
            write_file(ca_key_file, key_pem(ca.key), mode=0o600)
            write_file(ca_file, certificate_pem(ca.certificate))
        for (_, _, cert_file, key_file), (certificate, key) in zip(plans, issued, strict=True):
            write_file(key_file, key_pem(key), mode=0o600, overwrite=force)
            write_file(cert_file, certificate_pem(certificate), overwrite=force)
    except DevCertError as exc:
        raise CommandError(one_line(str(exc))) from None
    except FileExistsError as exc:
        raise CommandError(f"{exc.filename} already exists: use --force to replace it") from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise CommandError(f"cannot write {where}{exc.strerror or exc}", EXIT_ERROR) from None
    return LocalPKI(
        ca_file=ca_file,
        ca_key_file=ca_key_file,
        ca_created=not has_cert,
        ca_not_after=ca.certificate.not_valid_after_utc,
        certificates=tuple(
            IssuedCertificate(
                names=tuple(str(n.value) for n in names),
                usage=usage,
                cert_file=cert_file,
                key_file=key_file,
                not_after=certificate.not_valid_after_utc,
            )
            for (names, usage, cert_file, key_file), (certificate, _) in zip(
                plans, issued, strict=True
            )
        ),
    )


def _parsed(option: str, name: str, parse: Callable[[str], x509.GeneralName]) -> x509.GeneralName:
    try:
        return parse(name)
    except ValueError as exc:
        raise CommandError(f"{option} {name!r}: {exc}", EXIT_USAGE) from None


def _unique(names: Iterable[x509.GeneralName]) -> list[x509.GeneralName]:
    return list(dict.fromkeys(names))


# -- what was done, and what to do next ------------------------------------------------------


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _date(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d}"


def _host_of(certificate: IssuedCertificate) -> str:
    """A name to connect to: the first that is not a wildcard (a wildcard made concrete)."""
    plain = [n for n in certificate.names if not n.startswith("*.")]
    return plain[0] if plain else "www" + certificate.names[0][1:]


def _ip_version(host: str) -> int:
    """4 or 6 for an IP address, 0 for a host name."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


def _report(pki: LocalPKI, out: Any) -> None:
    """The files written, then the commands that use them."""
    lines: list[str] = []
    if pki.ca_created:
        lines += [
            f"Created a local CA, valid until {_date(pki.ca_not_after)}:",
            f"  {pki.ca_file}  (trust it: --cafile / --client-ca)",
            f"  {pki.ca_key_file}  (keep it private: it can sign for any name)",
        ]
    else:
        lines.append(f"Using the local CA {pki.ca_file}, valid until {_date(pki.ca_not_after)}")
    for certificate in pki.certificates:
        until = _date(certificate.not_after)
        if certificate.not_after >= pki.ca_not_after:
            until += ", when the CA expires"
        lines += [
            f"{certificate.usage.capitalize()} certificate for {', '.join(certificate.names)} "
            f"(valid until {until}):",
            f"  {certificate.cert_file}",
            f"  {certificate.key_file}",
        ]
    server = next((c for c in pki.certificates if c.usage == "server"), None)
    client = next((c for c in pki.certificates if c.usage == "client"), None)
    host = _host_of(server) if server else "HOST"
    serve = ["tcpls", "serve"]
    serve += ["--cert", _q(server.cert_file), "--key", _q(server.key_file)] if server else [
        "--cert", "SERVER.pem", "--key", "SERVER.key"
    ]  # fmt: skip
    if _ip_version(host) == 6:
        serve += ["--host", "::"]  # the default, 0.0.0.0, is IPv4 only
    serve += ["--echo"]
    connect = ["tcpls", "connect", _q(host), str(_PORT), "--cafile", _q(pki.ca_file)]
    target = f"[{host}]:{_PORT}" if _ip_version(host) == 6 else f"{host}:{_PORT}"
    check = "-verify_ip" if _ip_version(host) else "-verify_hostname"
    s_client = ["openssl", "s_client", "-connect", _q(target), "-CAfile", _q(pki.ca_file)]
    s_client += ["-verify_return_error", check, _q(host)]
    if client:
        serve += ["--client-ca", _q(pki.ca_file)]
        credentials = ["--cert", _q(client.cert_file), "--key", _q(client.key_file)]
        connect += credentials
        s_client += ["-cert", _q(client.cert_file), "-key", _q(client.key_file)]
    lines += ["", "Next steps:", "  " + " ".join(serve), "  " + " ".join(connect)]
    lines.append("  " + " ".join(s_client))
    print("\n".join(lines), file=out, flush=True)
