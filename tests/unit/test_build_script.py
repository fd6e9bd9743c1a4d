"""scripts/build_lambda.sh refuses to guess: the architecture comes from ARCH or from the
build.toml of the running `sam build`, and they must agree; bytecode comes from Python 3.12 or
not at all on purpose. scripts/pin_architecture.py pins the built template to what was packed.

Every case here stops before pip runs: no network, no SAM (tests/functional/test_sam_build.py
runs real builds).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_lambda.sh"
PIN_SCRIPT = REPO_ROOT / "scripts" / "pin_architecture.py"

BUILD_TOML = """\
[function_build_definitions.0d6f6a4e-0000-4000-8000-000000000000]
codeuri = "."
runtime = "python3.12"
architecture = "{architecture}"
handler = "reaper.aws.handler.lambda_handler"
packagetype = "Zip"
functions = ["ReaperFunction"]
"""


BASH = shutil.which("bash") or "/bin/bash"


def _build(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("ARCH", "LAMBDA_PYTHON")}
    env.update(PYTHON=sys.executable, **environment)
    return subprocess.run(
        [BASH, str(BUILD_SCRIPT), str(tmp_path / "build" / "ReaperFunction")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _build_toml(tmp_path: Path, architecture: str) -> Path:
    path = tmp_path / "build.toml"
    path.write_text(BUILD_TOML.format(architecture=architecture), encoding="utf-8")
    return path


def test_build_without_arch_outside_sam_build_fails_and_says_how_to_fix_it(
    tmp_path: Path,
) -> None:
    completed = _build(tmp_path)

    assert completed.returncode == 2
    assert "cannot tell which architecture" in completed.stderr
    assert "ARCH=x86_64" in completed.stderr


def test_an_old_build_toml_is_not_taken_for_this_build(tmp_path: Path) -> None:
    # Not run by a `sam build` that wrote it (as when SAM builds one resource by name).
    _build_toml(tmp_path, "x86_64")

    completed = _build(tmp_path)

    assert completed.returncode == 2
    assert "cannot tell which architecture" in completed.stderr


def test_build_refuses_an_arch_other_than_the_one_sam_resolved(tmp_path: Path) -> None:
    build_toml = _build_toml(tmp_path, "arm64")

    completed = _build(tmp_path, ARCH="x86_64", SAM_BUILD_TOML=str(build_toml))

    assert completed.returncode == 2
    assert "SAM builds ReaperFunction for arm64" in completed.stderr
    assert "--parameter-overrides Architecture=x86_64" in completed.stderr


def test_build_refuses_an_unknown_arch(tmp_path: Path) -> None:
    completed = _build(tmp_path, ARCH="sparc")

    assert completed.returncode == 2
    assert "ARCH must be arm64 or x86_64" in completed.stderr


def test_build_refuses_to_byte_compile_with_another_python_than_the_runtime(
    tmp_path: Path,
) -> None:
    # This interpreter is not 3.12 in CI's project venv; bytecode of another version is ignored
    # by Lambda. When it is 3.12, name one that cannot run at all.
    other = sys.executable if sys.version_info[:2] != (3, 12) else "/nonexistent/python3.12"

    completed = _build(tmp_path, ARCH="x86_64", LAMBDA_PYTHON=other)

    assert completed.returncode == 2
    assert "byte-compiling needs Python 3.12" in completed.stderr
    assert "BYTE_COMPILE=0" in completed.stderr


def test_build_without_any_python_312_fails_rather_than_skip_byte_compiling(
    tmp_path: Path,
) -> None:
    # A PATH with no python3.12 and a pyenv root without versions: nothing to compile with.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname",):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)

    completed = _build(
        tmp_path, ARCH="arm64", PATH=str(bin_dir), PYENV_ROOT=str(tmp_path / "no-pyenv")
    )

    assert completed.returncode == 2
    assert "'python3.12' is not runnable" in completed.stderr


def test_build_script_follows_the_template_runtime() -> None:
    template = (REPO_ROOT / "template.yaml").read_text(encoding="utf-8")
    script = BUILD_SCRIPT.read_text(encoding="utf-8")

    assert "      Runtime: python3.12\n" in template
    assert "\nruntime_version=3.12\n" in script


def _pin(build_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PIN_SCRIPT), str(build_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("architecture", ["arm64", "x86_64"])
def test_pin_architecture_replaces_the_parameter_with_the_built_architecture(
    tmp_path: Path, architecture: str
) -> None:
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    _build_toml(tmp_path, architecture)
    (build_dir / "template.yaml").write_text(
        "Resources:\n  ReaperFunction:\n    Properties:\n"
        "      Architectures:\n      - Ref: Architecture\n      MemorySize: 256\n",
        encoding="utf-8",
    )

    completed = _pin(build_dir)

    assert completed.returncode == 0, completed.stderr
    assert (build_dir / "template.yaml").read_text(encoding="utf-8") == (
        "Resources:\n  ReaperFunction:\n    Properties:\n"
        f"      Architectures:\n      - {architecture}\n      MemorySize: 256\n"
    )


def test_pin_architecture_fails_on_a_template_it_does_not_recognise(tmp_path: Path) -> None:
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    _build_toml(tmp_path, "arm64")
    (build_dir / "template.yaml").write_text("Resources: {}\n", encoding="utf-8")

    completed = _pin(build_dir)

    assert completed.returncode == 1
    assert "deploy with Architecture=arm64" in completed.stderr
