"""``python -m bench.validation`` runs each case and reports microseconds per call (a tiny run:
what it measures is not checked here, only that it measures what it says)."""

from __future__ import annotations

import json

import pytest

from bench import validation


def test_every_case_is_timed(capsys: pytest.CaptureFixture[str]) -> None:
    assert validation.main(["--number", "50", "--repeat", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert {"decode", "no schema", "valid", "invalid"} <= set(results)
    for timing in results.values():
        assert 0 < timing["min_us"] <= timing["median_us"]
