"""The core is pure: it imports without the database driver, the AWS SDK or Powertools."""

from __future__ import annotations

import subprocess
import sys

# Each blocked package is made unimportable (None in sys.modules) before the core is imported,
# in a fresh interpreter so that nothing this test process already imported can help.
_IMPORT_CORE_WITHOUT_IO = """
import sys
for name in ("psycopg", "psycopg_binary", "boto3", "botocore", "aws_lambda_powertools"):
    sys.modules[name] = None
import pkgutil, importlib, reaper.core
for module in pkgutil.iter_modules(reaper.core.__path__, "reaper.core."):
    importlib.import_module(module.name)
print("ok")
"""


def test_the_core_imports_with_psycopg_boto3_and_powertools_unimportable() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_CORE_WITHOUT_IO],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
