#!/usr/bin/env bash
# Builds the Lambda package into ARTIFACTS_DIR without Docker, for `sam build` (makefile build
# method). Every dependency comes from a manylinux wheel for the function's architecture, so the
# machine that builds needs neither the target CPU nor Python 3.12.
#
#   scripts/build_lambda.sh ARTIFACTS_DIR        (or ARTIFACTS_DIR in the environment)
#
# Environment:
#   ARCH         arm64 (default) or x86_64; must match the template's Architecture parameter.
#   PYTHON       interpreter that runs pip (default python3).
#   LAMBDA_PYTHON_VERSION   the function's runtime (default 3.12).
set -euo pipefail

artifacts_dir="${1:-${ARTIFACTS_DIR:-}}"
if [[ -z "$artifacts_dir" ]]; then
    echo "usage: $0 ARTIFACTS_DIR (or set ARTIFACTS_DIR)" >&2
    exit 2
fi

case "${ARCH:-arm64}" in
    arm64 | aarch64) machine=aarch64 ;;
    x86_64 | amd64) machine=x86_64 ;;
    *)
        echo "ARCH must be arm64 or x86_64, not '${ARCH}'" >&2
        exit 2
        ;;
esac

python="${PYTHON:-python3}"
runtime_version="${LAMBDA_PYTHON_VERSION:-3.12}"
project_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work_dir="$(mktemp -d)"
# pip's notes about root and about this machine's own installed packages do not concern the
# package being built.
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
trap 'rm -rf "$work_dir"' EXIT

# Build the wheel from a clean copy: setuptools' build/ directory in the tree may hold modules
# that no longer exist, and they would end up in the package.
mkdir -p "$work_dir/src"
cp "$project_dir/pyproject.toml" "$project_dir/README.md" "$work_dir/src/"
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

# CA bundles for REAPER_SSLROOTCERT (verify-full), if the deployment keeps any: they end up in
# /var/task/certs/.
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
if wrong:
    sys.exit(f"build_lambda: not built for {wanted}: " + ", ".join(wrong))
print(f"build_lambda: {len(native)} native libraries, all {wanted}")
PY

# Byte-compile with the runtime's own interpreter when this machine has it: Lambda cannot write
# __pycache__ into /var/task, so without this every cold start compiles from source.
# unchecked-hash: valid whatever timestamps the zip file gives the sources.
if "python${runtime_version}" -c "" 2>/dev/null; then
    "python${runtime_version}" -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        "$artifacts_dir" >/dev/null
fi
