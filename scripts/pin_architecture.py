"""Pin the built template's function architecture to the one `sam build` packed.

    python3 scripts/pin_architecture.py [BUILD_DIR]        (default .aws-sam/build)

`sam build` resolves the Architecture parameter when it builds, but `sam deploy`, `sam package`
and `sam publish` resolve it again from their own parameters: a deploy with another value would
run aarch64 libraries on x86_64 (or the reverse) and fail at import. `make build` therefore
replaces `!Ref Architecture` in the built template with the architecture SAM recorded in
build.toml for this build; the Architecture parameter then no longer changes the function.
Standard library only: it runs with whatever python3 runs make.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

FUNCTION = "ReaperFunction"
# SAM writes the built template in long form with its own YAML dumper.
REFERENCE = "      Architectures:\n      - Ref: Architecture\n"


def built_architecture(build_toml: Path) -> str:
    graph = tomllib.loads(build_toml.read_text(encoding="utf-8"))
    for definition in graph.get("function_build_definitions", {}).values():
        if any(name.split("/")[-1] == FUNCTION for name in definition.get("functions", [])):
            architecture: str = definition["architecture"]
            return architecture
    raise SystemExit(f"pin_architecture: {build_toml} records no build of {FUNCTION}")


def main(argv: list[str]) -> int:
    build_dir = Path(argv[1]) if len(argv) > 1 else Path(".aws-sam/build")
    template_path = build_dir / "template.yaml"
    architecture = built_architecture(build_dir.parent / "build.toml")
    text = template_path.read_text(encoding="utf-8")
    if text.count(REFERENCE) != 1:
        print(
            f"pin_architecture: {template_path} does not reference the Architecture parameter "
            "once in the expected form; deploy with Architecture="
            f"{architecture}",
            file=sys.stderr,
        )
        return 1
    pinned = f"      Architectures:\n      - {architecture}\n"
    template_path.write_text(text.replace(REFERENCE, pinned), encoding="utf-8")
    print(f"pin_architecture: {FUNCTION} runs on {architecture} whatever Architecture is given")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
