"""The evaluation memory benchmark: it runs the real scoring path and writes its figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from commfor_fast.bench import eval_memory_bench


def test_one_measurement_scores_every_image() -> None:
    figures = eval_memory_bench.measure_once(300)  # asserts inside that the report counts all 300
    assert set(figures) == {"rss_before_mb", "rss_after_mb", "peak_rss_mb"}
    assert 0 < figures["rss_before_mb"] <= figures["peak_rss_mb"] * 1.01


def test_the_command_writes_results_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["eval_memory_bench", "--sizes", "200,400", "--repeats", "1",
                                      "--out", str(tmp_path)])
    eval_memory_bench.main()
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["images"] for row in results["rows"]] == [200, 400]
    assert results["rss_ratio_last_to_first"] == pytest.approx(
        results["rows"][1]["rss_after_mb"] / results["rows"][0]["rss_after_mb"])
    out = capsys.readouterr().out
    assert "| images | rss_before_mb | rss_after_mb | peak_rss_mb | growth_bytes_per_image |" in out
    assert f"wrote {tmp_path / 'results.json'}" in out
