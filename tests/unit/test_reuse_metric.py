"""The idle ages seen before each reuse become one EMF blob per application."""

from __future__ import annotations

from reaper.aws import observability
from tests.fix_aws import emf_blobs


def test_gaps_before_reuse_are_one_blob_per_application_with_every_value(capsys) -> None:
    observability.record_reuse_gaps("writer", {"lambda:api": [1.5, 12.25, 3.0], "": [7.0]})
    blobs = emf_blobs(capsys.readouterr().out)
    by_application = {blob["Application"]: blob for blob in blobs}
    assert set(by_application) == {"lambda:api", observability.NO_APPLICATION}
    api = by_application["lambda:api"]
    assert api["IdleGapBeforeReuse"] == [1.5, 12.25, 3.0]
    assert api["Target"] == "writer"
    [directive] = api["_aws"]["CloudWatchMetrics"]
    assert [sorted(names) for names in directive["Dimensions"]] == [
        ["Application", "Target", "service"]
    ]
    assert directive["Metrics"] == [{"Name": "IdleGapBeforeReuse", "Unit": "Seconds"}]
