"""The CA bundle shipped in the package, which verifies RDS servers by default.

`certs/rds-ca-bundle.pem` holds the root CAs of Amazon RDS in every Region and those RDS Proxy
endpoints chain to; `certs/PROVENANCE.json` says where it comes from (`make refresh-ca`
regenerates both). It is package data, so it is in the wheel and in the Lambda artifact
(`/var/task/reaper/pg/certs/rds-ca-bundle.pem`); nothing is fetched at run time.
"""

from __future__ import annotations

from pathlib import Path

RDS_CA_BUNDLE = Path(__file__).resolve().parent / "certs" / "rds-ca-bundle.pem"
CA_PROVENANCE = RDS_CA_BUNDLE.with_name("PROVENANCE.json")
