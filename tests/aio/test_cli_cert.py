"""``tcpls cert``: a local CA and certificates whose printed next steps work as printed.

The end-to-end tests run ``tcpls cert``, then the very ``serve``, ``connect`` and
``openssl s_client`` lines it printed (on a free port instead of 8443), with no other
step. The others check what a careful tool must do: reuse the CA, never overwrite
without ``--force``, keys readable by their owner only, one clear line for a bad name.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509

from tcpls.cli import cert as cli_cert
from tcpls.cli.cert import issue_local_certificates
from tcpls.cli.errors import CommandError
from tcpls.devcert import (
    CA_VALID_DAYS,
    KEY_TYPES,
    LEAF_VALID_DAYS,
    LocalCA,
    certificate_pem,
    key_pem,
    parse_client_name,
    parse_name,
    write_file,
)
from tcpls.errors import CertificateVerificationError
from tcpls.tls.hs.certs import CertificateVerifier
from tests.aio.cli_util import TCPLS, stop_server
from tests.helpers import free_port, need_openssl, wait_port

PORT = "8443"  # the port of the printed next steps


def _cert(cwd: Path, *args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TCPLS, "cert", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def _one_line(proc: subprocess.CompletedProcess[str], status: int) -> str:
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tcpls: ")
    return lines[0]


def _next_steps(output: str) -> dict[str, list[str]]:
    """The printed next steps, by command (``serve``, ``connect``, ``s_client``)."""
    lines = output.split("Next steps:\n", 1)[1].strip().splitlines()
    steps = {}
    for line in lines:
        argv = shlex.split(line)
        steps[argv[1]] = argv
    assert set(steps) == {"serve", "connect", "s_client"}, output
    return steps


def _on_port(argv: Sequence[str], port: int) -> list[str]:
    """A printed command line, run as the tests run ``tcpls``, on ``port`` instead of 8443."""
    out = [*TCPLS, *argv[1:]] if argv[0] == "tcpls" else list(argv)
    if argv[:2] == ["tcpls", "serve"]:
        return [*out, "--port", str(port)]
    return [a.replace(PORT, str(port)) if a.endswith(PORT) else a for a in out]


@contextmanager
def _serving(argv: Sequence[str], cwd: Path) -> Iterator[int]:
    """The printed ``tcpls serve`` line, running on a free port."""
    port = free_port()
    proc = subprocess.Popen(_on_port(argv, port), cwd=cwd, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc=proc)
        yield port
    finally:
        assert stop_server(proc) == 0


def _run(
    argv: Sequence[str], port: int, cwd: Path, data: bytes
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        _on_port(argv, port), cwd=cwd, input=data, capture_output=True, timeout=30
    )


# ------------------------------------------------------------------ end to end


def test_cert_then_serve_and_connect(tmp_path: Path) -> None:
    """``tcpls cert``, then the printed serve and connect lines: nothing else."""
    output = _ok(_cert(tmp_path, "--name", "localhost", "--name", "127.0.0.1"))
    assert "Created a local CA" in output
    for name in ("ca.pem", "ca.key", "localhost.pem", "localhost.key"):
        assert f"tcpls-certs/{name}" in output
    steps = _next_steps(output)
    assert steps["connect"][2:] == ["localhost", PORT, "--cafile", "tcpls-certs/ca.pem"]
    data = os.urandom(100_000)
    with _serving(steps["serve"], tmp_path) as port:
        proc = _run(steps["connect"], port, tmp_path, data)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == data
        # the IP address entry: connecting to 127.0.0.1 checks it (no --server-name)
        by_ip = [*steps["connect"][:2], "127.0.0.1", *steps["connect"][3:]]
        proc = _run(by_ip, port, tmp_path, b"by address\n")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"by address\n"
        # a name the certificate does not have is refused
        proc = _run([*steps["connect"], "--server-name", "other.test"], port, tmp_path, b"")
        assert proc.returncode == 1 and b"other.test" in proc.stderr


def test_ip_only_certificate(tmp_path: Path) -> None:
    """A certificate for 127.0.0.1 alone: an IP address entry, used when connecting to it."""
    output = _ok(_cert(tmp_path, "--name", "127.0.0.1", "--out", "pki"))
    steps = _next_steps(output)
    assert steps["connect"][2] == "127.0.0.1"
    assert steps["s_client"][-2:] == ["-verify_ip", "127.0.0.1"]
    certificate = x509.load_pem_x509_certificate((tmp_path / "pki/127.0.0.1.pem").read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == []
    with _serving(steps["serve"], tmp_path) as port:
        proc = _run(steps["connect"], port, tmp_path, b"ip\n")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"ip\n"
        by_name = [*steps["connect"][:2], "localhost", *steps["connect"][3:]]
        proc = _run(by_name, port, tmp_path, b"")
        assert proc.returncode == 1 and b"not for localhost" in proc.stderr


def test_openssl_s_client_accepts_it(tmp_path: Path) -> None:
    """The printed ``openssl s_client ... -verify_return_error`` line succeeds, and the
    check it makes is real (a wrong name fails)."""
    openssl = need_openssl()
    output = _ok(_cert(tmp_path, "--name", "localhost", "--name", "127.0.0.1"))
    steps = _next_steps(output)
    s_client = steps["s_client"]
    assert "-verify_return_error" in s_client
    assert s_client[-2:] == ["-verify_hostname", "localhost"]
    s_client[0] = openssl
    with _serving(steps["serve"], tmp_path) as port:
        proc = _run(s_client, port, tmp_path, b"Q\n")
        assert proc.returncode == 0, proc.stderr
        assert b"Verify return code: 0 (ok)" in proc.stdout
        by_ip = [*s_client[:-2], "-verify_ip", "127.0.0.1"]
        proc = _run(by_ip, port, tmp_path, b"Q\n")
        assert proc.returncode == 0, proc.stderr
        wrong = [*s_client[:-2], "-verify_hostname", "wrong.test"]
        proc = _run(wrong, port, tmp_path, b"Q\n")
        assert proc.returncode != 0
        assert b"hostname mismatch" in proc.stdout + proc.stderr


def test_client_certificate(tmp_path: Path) -> None:
    """``--client alice``: the printed lines require and present a client certificate."""
    output = _ok(_cert(tmp_path, "--name", "localhost", "--client", "alice"))
    steps = _next_steps(output)
    assert steps["serve"][-2:] == ["--client-ca", "tcpls-certs/ca.pem"]
    assert "tcpls-certs/alice-client.pem" in steps["connect"]
    certificate = x509.load_pem_x509_certificate(
        (tmp_path / "tcpls-certs/alice-client.pem").read_bytes()
    )
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.ExtendedKeyUsageOID.CLIENT_AUTH]
    with _serving(steps["serve"], tmp_path) as port:
        proc = _run(steps["connect"], port, tmp_path, b"with a certificate\n")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"with a certificate\n"
        anonymous = steps["connect"][: steps["connect"].index("--cert")]
        proc = _run(anonymous, port, tmp_path, b"anonymous\n")
        assert proc.returncode != 0
        assert proc.stdout == b""


# ------------------------------------------------------------------ files


def test_second_certificate_reuses_the_ca(tmp_path: Path) -> None:
    _ok(_cert(tmp_path, "--name", "localhost"))
    ca_before = (tmp_path / "tcpls-certs/ca.pem").read_bytes()
    ca_key_before = (tmp_path / "tcpls-certs/ca.key").read_bytes()
    output = _ok(_cert(tmp_path, "--name", "other.test", "--key-type", "rsa"))
    assert "Using the local CA tcpls-certs/ca.pem" in output
    assert "Created" not in output
    assert (tmp_path / "tcpls-certs/ca.pem").read_bytes() == ca_before
    assert (tmp_path / "tcpls-certs/ca.key").read_bytes() == ca_key_before
    verifier = CertificateVerifier(cafile=str(tmp_path / "tcpls-certs/ca.pem"))
    for name in ("localhost", "other.test"):
        chain = x509.load_pem_x509_certificates(
            (tmp_path / f"tcpls-certs/{name}.pem").read_bytes()
        )
        verifier.verify_server(chain, name)


def test_existing_files_are_kept_without_force(tmp_path: Path) -> None:
    _ok(_cert(tmp_path, "--name", "localhost"))
    out = tmp_path / "tcpls-certs"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = _one_line(_cert(tmp_path, "--name", "localhost", "--name", "127.0.0.1"), 1)
    assert "tcpls-certs/localhost.pem" in line and "--force" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    output = _ok(_cert(tmp_path, "--name", "localhost", "--name", "127.0.0.1", "--force"))
    assert "Using the local CA" in output
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(after) == set(before)  # no temporary file left behind
    assert after["localhost.pem"] != before["localhost.pem"]
    assert after["localhost.key"] != before["localhost.key"]
    assert after["ca.pem"] == before["ca.pem"] and after["ca.key"] == before["ca.key"]
    assert stat.S_IMODE((out / "localhost.key").stat().st_mode) == 0o600


def test_a_half_ca_is_refused(tmp_path: Path) -> None:
    _ok(_cert(tmp_path, "--name", "localhost"))
    (tmp_path / "tcpls-certs/ca.key").unlink()
    line = _one_line(_cert(tmp_path, "--name", "other.test"), 1)
    assert "ca.key does not" in line
    assert not (tmp_path / "tcpls-certs/other.test.pem").exists()


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_keys_are_private(tmp_path: Path, umask: int) -> None:
    _ok(_cert(tmp_path, "--name", "localhost", "--client", "alice", umask=umask))
    out = tmp_path / "tcpls-certs"
    for key in ("ca.key", "localhost.key", "alice-client.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600, key
    for certificate in ("ca.pem", "localhost.pem", "alice-client.pem"):
        assert stat.S_IMODE((out / certificate).stat().st_mode) == 0o644 & ~umask


@pytest.mark.parametrize(
    "name, reason",
    [
        ("foo bar", "neither an IP address nor a DNS name"),
        ("10.0.1.256", "not a valid IP address"),
        ("*.com", "wildcard"),
        ("a.*.example.com", "wildcard"),
        ("fe80::1%eth0", "zone"),
        ("under_score.test", "neither"),
        ("", "empty"),
    ],
)
def test_bad_name_is_one_line(tmp_path: Path, name: str, reason: str) -> None:
    line = _one_line(_cert(tmp_path, "--name", "localhost", "--name", name), 2)
    assert f"--name {name!r}" in line and reason in line
    assert not (tmp_path / "tcpls-certs").exists()  # nothing written


def test_no_name_is_one_line(tmp_path: Path) -> None:
    line = _one_line(_cert(tmp_path), 2)
    assert "--name" in line
    line = _one_line(_cert(tmp_path, "--client", "not@an@email address"), 2)
    assert "--client" in line


# ------------------------------------------------------------------ the library


def test_names() -> None:
    assert parse_name("LocalHost.") == x509.DNSName("localhost")
    assert parse_name("*.Example.com") == x509.DNSName("*.example.com")
    assert parse_name("bücher.example") == x509.DNSName("xn--bcher-kva.example")
    assert parse_name("[::1]").value.version == 6  # type: ignore[union-attr]
    assert parse_name("10.0.1.2") == x509.IPAddress(ipaddress.ip_address("10.0.1.2"))
    assert parse_client_name("alice@example.com") == x509.RFC822Name("alice@example.com")
    assert parse_client_name("alice") == x509.DNSName("alice")
    for bad in ("[10.0.0.1]", "a" * 64 + ".test", "-x.test", "x-.test", "a..b", "1.2.3"):
        with pytest.raises(ValueError):
            parse_name(bad)


def test_key_types_listed_by_the_cli() -> None:
    parser_choices = cli_cert._KEY_TYPES
    assert set(parser_choices) == set(KEY_TYPES)
    assert cli_cert._LEAF_DAYS == LEAF_VALID_DAYS
    assert cli_cert._CA_YEARS * 365 == CA_VALID_DAYS


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_every_key_type_verifies(tmp_path: Path, key_type: str) -> None:
    pki = issue_local_certificates(
        tmp_path,
        ["*.example.test", "10.0.1.2", "::1"],
        ["carol@example.test", "alice"],
        key_type=key_type,  # type: ignore[arg-type]
    )
    server, client, alice = pki.certificates
    assert alice.cert_file.name == "alice-client.pem"
    assert server.cert_file.name == "_wildcard.example.test.pem"
    assert server.names == ("*.example.test", "10.0.1.2", "::1")
    verifier = CertificateVerifier(cafile=str(pki.ca_file))
    chain = x509.load_pem_x509_certificates(server.cert_file.read_bytes())
    for name in ("www.example.test", "10.0.1.2", "::1"):
        verifier.verify_server(chain, name)
    with pytest.raises(CertificateVerificationError, match=r"not for a\.b\.example\.test"):
        verifier.verify_server(chain, "a.b.example.test")
    verifier.verify_client(x509.load_pem_x509_certificates(client.cert_file.read_bytes()))
    alice_chain = x509.load_pem_x509_certificates(alice.cert_file.read_bytes())
    verifier.verify_client(alice_chain)
    # a client certificate is no server's
    with pytest.raises(CertificateVerificationError, match="serverAuth"):
        verifier.verify_server(alice_chain, "alice")


def test_certificates_end_with_their_ca(tmp_path: Path) -> None:
    """A reused CA that ends sooner than --days: the certificate ends with it."""
    ca = LocalCA.create(valid_days=30)
    _write_ca(tmp_path, ca)
    pki = issue_local_certificates(tmp_path, ["localhost"])
    assert not pki.ca_created
    assert pki.certificates[0].not_after == ca.certificate.not_valid_after_utc
    output = _ok(_cert(tmp_path, "--name", "other.test", "--out", "."))
    assert "when the CA expires" in output


def test_an_expired_or_foreign_ca_is_refused(tmp_path: Path) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=40)
    expired = LocalCA.create(valid_days=30, start=past)
    _write_ca(tmp_path, LocalCA(expired.certificate, LocalCA.create().key))
    with pytest.raises(CommandError, match="does not belong"):
        issue_local_certificates(tmp_path, ["localhost"])
    _write_ca(tmp_path, expired, overwrite=True)
    line = _one_line(_cert(tmp_path, "--name", "localhost", "--out", "."), 1)
    assert "expired" in line
    assert not (tmp_path / "localhost.pem").exists()


def _write_ca(directory: Path, ca: LocalCA, overwrite: bool = False) -> None:
    write_file(directory / "ca.pem", certificate_pem(ca.certificate), overwrite=overwrite)
    write_file(directory / "ca.key", key_pem(ca.key), mode=0o600, overwrite=overwrite)


def test_output_to_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`tcpls cert ... | head -1`: no traceback when the reader stops early."""
    proc = subprocess.run(
        f"{sys.executable} -m tcpls cert --name localhost --out {tmp_path / 'pki'} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip()
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
