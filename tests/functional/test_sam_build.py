"""`sam build`, run the documented ways from a copy of the repository, packs native libraries of
the function's architecture only, byte-compiled for Python 3.12, and the x86_64 package imports
the handler on this machine's Python 3.12.

Slow: SAM is installed once into a venv of its own, outside the repository
($REAPER_TOOLS_DIR/sam-venv, default ~/.cache/idle-reaper/sam-venv: about 30 s and 150 MB the
first time). Three builds then take 15-40 s each with pip's wheel cache warm (about 30 MB of
wheels per architecture to download the first time), plus one that fails before pip runs:
2.5 minutes in all on a busy two-core machine, most of it pip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reaper.pg.tls import RDS_CA_BUNDLE
from tests.commands import run_command

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
# The Makefile's TOOLS_DIR (checkov's venv) defaults to the same place.
TOOLS_DIR = Path(os.environ.get("REAPER_TOOLS_DIR", Path.home() / ".cache" / "idle-reaper"))
SAM_VENV = TOOLS_DIR / "sam-venv"
# SAM's own pins clash with the project's dependencies: never in the project's venv.
SAM_REQUIREMENT = "aws-sam-cli>=1.120"

ELF_MACHINES = {183: "aarch64", 62: "x86_64"}
MACHINE = {"arm64": "aarch64", "x86_64": "x86_64"}
BUILD_TIMEOUT = 600


def _sam_version(sam: Path) -> str | None:
    try:
        completed = subprocess.run(
            [str(sam), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


@pytest.fixture(scope="session")
def sam() -> Path:
    """The `sam` executable of the cached venv, installed on first use."""
    executable = SAM_VENV / "bin" / "sam"
    if _sam_version(executable) is None:
        shutil.rmtree(SAM_VENV, ignore_errors=True)
        SAM_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(SAM_VENV)], check=True)
        installed = run_command(
            [str(SAM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", SAM_REQUIREMENT],
            timeout=900,
        )
        if installed.returncode != 0 or _sam_version(executable) is None:
            pytest.skip(
                f"cannot install {SAM_REQUIREMENT} into {SAM_VENV} (is PyPI reachable?): "
                + installed.stderr.strip()[-300:]
            )
    return executable


def _python_312() -> Path | None:
    candidates = [shutil.which("python3.12"), os.environ.get("LAMBDA_PYTHON")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [str(path) for path in sorted(pyenv_root.glob("versions/3.12*/bin/python3.12"))]
    for candidate in filter(None, candidates):
        completed = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.stdout.strip() == "True":
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def python_312() -> Path:
    """Lambda's runtime version on this machine: it byte-compiles and imports the package."""
    python = _python_312()
    if python is None:
        pytest.skip("no Python 3.12 on this machine (python3.12, LAMBDA_PYTHON or pyenv)")
    return python


@pytest.fixture(scope="session")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's tracked files, as a fresh clone has them (no .venv, no .aws-sam)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=False
    )
    if listed.returncode != 0:
        pytest.skip(f"{REPO_ROOT} is not a git checkout: cannot tell a fresh clone's files")
    target = tmp_path_factory.mktemp("clone")
    for name in listed.stdout.decode().split("\0"):
        source = REPO_ROOT / name
        if name and source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _environment(sam: Path, python_312: Path, **extra: str) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if key not in ("ARCH", "VIRTUAL_ENV")
    }
    environment.update(
        PATH=f"{sam.parent}{os.pathsep}{environment.get('PATH', '')}",
        LAMBDA_PYTHON=str(python_312),
        SAM_CLI_TELEMETRY="0",
        **extra,
    )
    return environment


def _run(
    command: list[str], cwd: Path, environment: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return run_command(command, cwd=cwd, env=environment, timeout=BUILD_TIMEOUT)


@pytest.fixture(scope="session")
def builds(
    sam: Path, python_312: Path, clone: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The function's package per architecture, each built the documented way:
    `sam build` for the default arm64, `sam build --parameter-overrides Architecture=x86_64`."""
    artifacts = {}
    for architecture, overrides in (("arm64", []), ("x86_64", ["Architecture=x86_64"])):
        build_dir = tmp_path_factory.mktemp(f"sam-{architecture}") / "build"
        command = [str(sam), "build", "--build-dir", str(build_dir)]
        if overrides:
            command += ["--parameter-overrides", *overrides]
        completed = _run(command, clone, _environment(sam, python_312))
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        artifacts[architecture] = build_dir / "ReaperFunction"
    return artifacts


def _elf_machines(root: Path) -> dict[str, str]:
    machines = {}
    for path in root.rglob("*.so*"):
        header = path.read_bytes()[:20]
        if path.is_file() and header[:4] == b"\x7fELF":
            code = int.from_bytes(header[18:20], "little")
            machines[str(path.relative_to(root))] = ELF_MACHINES.get(code, f"machine {code}")
    return machines


@pytest.mark.parametrize("architecture", ["arm64", "x86_64"])
def test_sam_build_packs_only_native_libraries_of_the_function_architecture(
    builds: dict[str, Path], architecture: str
) -> None:
    machines = _elf_machines(builds[architecture])
    wrong = {
        name: machine for name, machine in machines.items() if machine != MACHINE[architecture]
    }

    assert len(machines) >= 10  # psycopg-binary's libpq and OpenSSL, pydantic-core, ...
    assert any(name.startswith("pydantic_core/") for name in machines)
    assert any(name.startswith("psycopg_binary/") for name in machines)
    assert wrong == {}


@pytest.mark.parametrize("architecture", ["arm64", "x86_64"])
def test_sam_build_byte_compiles_for_the_runtime_python(
    builds: dict[str, Path], architecture: str
) -> None:
    compiled = list((builds[architecture] / "reaper").glob("**/__pycache__/*.cpython-312.pyc"))

    assert {path.name.split(".")[0] for path in compiled} >= {"handler", "settings", "run"}
    assert not (builds[architecture] / "reaper" / "local").exists()


@pytest.mark.parametrize("architecture", ["arm64", "x86_64"])
def test_sam_build_packs_the_rds_ca_bundle_where_the_template_points(
    builds: dict[str, Path], architecture: str
) -> None:
    # The template's default SslRootCert, with /var/task being the artifact's root.
    template = (REPO_ROOT / "template.yaml").read_text(encoding="utf-8")
    default = re.search(r"Default: (/var/task/\S+)", template)
    assert default is not None
    packed = builds[architecture] / Path(default.group(1)).relative_to("/var/task")

    assert packed.read_bytes() == RDS_CA_BUNDLE.read_bytes()
    assert (packed.parent / "PROVENANCE.json").is_file()


def test_x86_64_package_imports_the_handler_on_python_312(
    builds: dict[str, Path], python_312: Path
) -> None:
    # -I: nothing from this machine's site-packages; only the package, as in /var/task.
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import psycopg, pydantic_core, reaper.aws.handler as handler;"
        "print(handler.lambda_handler.__module__, psycopg.pq.__impl__)"
    )
    completed = run_command(
        [str(python_312), "-I", "-c", script, str(builds["x86_64"])], timeout=120
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["reaper.aws.handler", "binary"]


def test_build_fails_when_arch_and_the_template_architecture_disagree(
    sam: Path, python_312: Path, clone: Path, tmp_path: Path
) -> None:
    completed = _run(
        [str(sam), "build", "--build-dir", str(tmp_path / "build")],
        clone,
        _environment(sam, python_312, ARCH="x86_64"),
    )
    output = completed.stdout + completed.stderr

    assert completed.returncode != 0
    assert "SAM builds ReaperFunction for arm64" in output
    assert "--parameter-overrides Architecture=x86_64" in output
    assert "Build Succeeded" not in output


def test_make_build_pins_the_built_template_to_the_packed_architecture(
    sam: Path, python_312: Path, clone: Path
) -> None:
    completed = _run(
        ["make", "build", "ARCH=x86_64", f"SAM={sam}"], clone, _environment(sam, python_312)
    )
    built_template = (clone / ".aws-sam" / "build" / "template.yaml").read_text(encoding="utf-8")

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "      Architectures:\n      - x86_64\n" in built_template
    machines = set(_elf_machines(clone / ".aws-sam" / "build" / "ReaperFunction").values())
    assert machines == {"x86_64"}
