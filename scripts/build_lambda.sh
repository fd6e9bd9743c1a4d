#!/usr/bin/env bash
# Builds the Lambda package into ARTIFACTS_DIR without Docker, for `sam build` (makefile build
# method). Every dependency comes from a manylinux wheel for the function's architecture, so the
# machine that builds needs neither the target CPU nor Docker; it needs Python 3.12 only to
# byte-compile.
#
#   scripts/build_lambda.sh ARTIFACTS_DIR        (or ARTIFACTS_DIR in the environment)
#
# Environment:
#   ARCH            arm64 or x86_64. Optional under `sam build`: the architecture SAM resolved for
#                   the function (template default, --parameter-overrides, samconfig.toml) is read
#                   from the build.toml SAM writes beside its build directory. When both are known
#                   they must agree; when neither is, the build fails.
#   SAM_BUILD_TOML  that build.toml, when SAM's build directory is not ARTIFACTS_DIR/..
#   PYTHON          interpreter that runs pip (default python3).
#   LAMBDA_PYTHON   the runtime's interpreter, which byte-compiles (default python3.12 on PATH,
#                   else a pyenv-installed 3.12).
#   BYTE_COMPILE    0 to skip byte-compiling on purpose (slower cold starts); anything else
#                   requires LAMBDA_PYTHON.
set -euo pipefail

artifacts_dir="${1:-${ARTIFACTS_DIR:-}}"
if [[ -z "$artifacts_dir" ]]; then
    echo "usage: $0 ARTIFACTS_DIR (or set ARTIFACTS_DIR)" >&2
    exit 2
fi

python="${PYTHON:-python3}"
# The function's runtime: template.yaml says python3.12; the wheels and the bytecode follow it.
runtime_version=3.12
lambda_python="${LAMBDA_PYTHON:-python${runtime_version}}"
# Without LAMBDA_PYTHON, a pyenv-installed 3.12 also serves when no python3.12 is on PATH (pyenv's
# shim only runs it when that version is selected).
if [[ -z "${LAMBDA_PYTHON:-}" ]] && ! "$lambda_python" -c "" 2>/dev/null; then
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"${runtime_version}".*/bin/python"${runtime_version}"; do
        if [[ -x "$candidate" ]]; then
            lambda_python="$candidate"
        fi
    done
fi
project_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The architecture SAM builds this function for. SAM hands a makefile build nothing but
# ARTIFACTS_DIR, but before it runs any build it writes its resolved build graph (each
# function's architecture, after --parameter-overrides and samconfig.toml) to build.toml beside
# the build directory. Only a build.toml written by the `sam` process running this build counts:
# `sam build ReaperFunction` (one resource by name) leaves an older one in place.
sam_architecture="$(
    "$python" - "$artifacts_dir" "${SAM_BUILD_TOML:-}" "$PPID" <<'PY'
import os
import pathlib
import subprocess
import sys
import time
import tomllib

artifacts, explicit, pid = pathlib.Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3]


def process(pid: str) -> tuple[str, float, list[str]] | None:
    """(parent pid, seconds running, command line) of a process: from /proc on Linux, to the
    clock tick; else from ps (macOS), whose etime is whole seconds ([[dd-]hh:]mm:ss)."""
    proc = pathlib.Path("/proc", pid)
    if proc.is_dir():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            since_boot = float(pathlib.Path("/proc/uptime").read_text().split()[0])
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return None
        return fields[1], since_boot - int(fields[19]) / os.sysconf("SC_CLK_TCK"), args
    try:
        row = subprocess.run(
            ["ps", "-o", "ppid=,etime=,args=", "-p", pid], capture_output=True, text=True
        ).stdout.split(None, 2)
    except OSError:
        return None
    if len(row) < 3:
        return None
    days, _, clock = row[1].rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return row[0], seconds + int(days or 0) * 86400 + 1, row[2].split()


def sam_started_at(pid: str) -> float | None:
    """When the nearest `sam` ancestor process started."""
    for _ in range(8):
        found = process(pid)
        if found is None:
            return None
        parent, elapsed, args = found
        if any(pathlib.Path(word).name == "sam" for word in args[:3]):
            return time.time() - elapsed
        pid = parent
    return None


if explicit:
    path = pathlib.Path(explicit)
else:
    # .aws-sam/build/ReaperFunction and, for --cached builds, .aws-sam/cache/<id>: both two below.
    path = artifacts.parent.parent / "build.toml"
    started = sam_started_at(pid)
    if started is None or not path.is_file() or path.stat().st_mtime < started - 0.05:
        sys.exit(0)
if path.is_file():
    graph = tomllib.loads(path.read_text(encoding="utf-8"))
    for definition in graph.get("function_build_definitions", {}).values():
        if any(name.split("/")[-1] == "ReaperFunction" for name in definition.get("functions", [])):
            print(definition.get("architecture", ""))
            break
PY
)"

normalise() {
    case "$1" in
        arm64 | aarch64) echo arm64 ;;
        x86_64 | amd64) echo x86_64 ;;
        *) return 1 ;;
    esac
}

if [[ -n "${ARCH:-}" ]]; then
    if ! architecture="$(normalise "$ARCH")"; then
        echo "build_lambda: ARCH must be arm64 or x86_64, not '${ARCH}'" >&2
        exit 2
    fi
    if [[ -n "$sam_architecture" && "$sam_architecture" != "$architecture" ]]; then
        echo "build_lambda: ARCH=${ARCH} but SAM builds ReaperFunction for ${sam_architecture}" \
            "(the template's Architecture parameter). Build both for one architecture:" \
            "'make build ARCH=${architecture}' or" \
            "'sam build --parameter-overrides Architecture=${architecture}', and deploy with" \
            "the same Architecture." >&2
        exit 2
    fi
elif [[ -n "$sam_architecture" ]]; then
    architecture="$sam_architecture"
else
    echo "build_lambda: cannot tell which architecture to build for: no ARCH, and no build.toml" \
        "written by this sam build beside ${artifacts_dir} (SAM does not write one when it" \
        "builds a single resource by name). Set ARCH=arm64 or ARCH=x86_64 to the function's" \
        "Architecture parameter: 'make build ARCH=...' does both." >&2
    exit 2
fi
case "$architecture" in
    arm64) machine=aarch64 ;;
    x86_64) machine=x86_64 ;;
esac
echo "build_lambda: building for ${architecture} (${machine})"

byte_compile=1
if [[ "${BYTE_COMPILE:-1}" == 0 ]]; then
    byte_compile=0
    echo "build_lambda: BYTE_COMPILE=0: not byte-compiling; every cold start compiles from source" >&2
elif ! version="$("$lambda_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
    || [[ "$version" != "$runtime_version" ]]; then
    # Bytecode from another Python version is ignored by the runtime (wrong magic number).
    echo "build_lambda: byte-compiling needs Python ${runtime_version}, the function's runtime;" \
        "'${lambda_python}' is ${version:-not runnable}. Install Python ${runtime_version} and put" \
        "python${runtime_version} on PATH, or point LAMBDA_PYTHON at it; BYTE_COMPILE=0 builds" \
        "without (every cold start then compiles the package, about twice as slow)." >&2
    exit 2
fi

work_dir="$(mktemp -d)"
# pip's notes about root and about this machine's own installed packages do not concern the
# package being built.
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
trap 'rm -rf "$work_dir"' EXIT

# Build the wheel from a clean copy: setuptools' build/ directory in the tree may hold modules
# that no longer exist, and they would end up in the package.
mkdir -p "$work_dir/src"
cp "$project_dir/pyproject.toml" "$project_dir/README.md" "$project_dir/LICENSE" "$work_dir/src/"
# reaper/local (throwaway clusters for the demo, tests and bench) has no place in the function.
tar -C "$project_dir" --exclude=__pycache__ --exclude=reaper/local -cf - reaper | tar -C "$work_dir/src" -xf -
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work_dir/wheel" "$work_dir/src"

# Newest first: Lambda's Python 3.12 runtime (Amazon Linux 2023, glibc 2.34) runs all three.
mkdir -p "$artifacts_dir"
"$python" -m pip install --quiet --upgrade --no-compile --no-warn-conflicts \
    --target "$artifacts_dir" \
    --implementation cp \
    --python-version "$runtime_version" \
    --platform "manylinux_2_34_${machine}" \
    --platform "manylinux_2_28_${machine}" \
    --platform "manylinux2014_${machine}" \
    --only-binary=:all: \
    "$work_dir"/wheel/*.whl

# Console scripts point at this machine's interpreter; the function has no use for them.
rm -rf "${artifacts_dir:?}/bin"

# The RDS CA bundle is package data (reaper/pg/certs/, checked below). CA bundles of the
# deployment's own, for servers it does not cover (SslRootCert), end up in /var/task/certs/.
if [[ -d "$project_dir/certs" ]]; then
    rm -rf "${artifacts_dir:?}/certs"
    cp -R "$project_dir/certs" "$artifacts_dir/certs"
fi

# Refuse a package whose native code is for the wrong CPU (a wheel for this machine slipping in
# would fail only at import time, in AWS).
"$python" - "$artifacts_dir" "$machine" <<'PY'
import pathlib
import sys

ELF_MACHINES = {183: "aarch64", 62: "x86_64"}
root, wanted = pathlib.Path(sys.argv[1]), sys.argv[2]
native = [path for path in root.rglob("*.so*") if path.is_file()]
wrong = []
for path in native:
    header = path.read_bytes()[:20]
    if header[:4] != b"\x7fELF":
        continue
    machine = ELF_MACHINES.get(int.from_bytes(header[18:20], "little"), "other")
    if machine != wanted:
        wrong.append(f"{path.relative_to(root)} ({machine})")
for required in ("psycopg_binary", "pydantic_core", "reaper"):
    if not (root / required).is_dir():
        sys.exit(f"build_lambda: {required} is missing from {root}")
# The template's default SslRootCert: without it every verify-full connection would fail.
if not (root / "reaper" / "pg" / "certs" / "rds-ca-bundle.pem").is_file():
    sys.exit(f"build_lambda: the RDS CA bundle is missing from {root}/reaper/pg/certs")
if wrong:
    sys.exit(f"build_lambda: not built for {wanted}: " + ", ".join(wrong))
print(f"build_lambda: {len(native)} native libraries, all {wanted}")
PY

# Byte-compile with the runtime's own interpreter: Lambda cannot write __pycache__ into
# /var/task, so without this every cold start compiles from source.
# unchecked-hash: valid whatever timestamps the zip file gives the sources.
if [[ "$byte_compile" == 1 ]]; then
    "$lambda_python" -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        "$artifacts_dir" >/dev/null
    echo "build_lambda: byte-compiled with $("$lambda_python" -c 'import sys; print(sys.version.split()[0])')"
fi
