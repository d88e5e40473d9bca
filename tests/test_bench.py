"""`concept-erase bench --quick` runs end to end on the shipped world model."""

from __future__ import annotations

import json

from concept_erase.cli import main


def test_bench_quick_runs_end_to_end(tmp_path, capsys):
    assert main(["bench", "--quick", "--methods", "semu", "uce", "--images-per-prompt", "1", "--out", str(tmp_path),
                 "--quiet"]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"semu", "uce"} and data["quick"]
    for r in rows.values():
        assert r["concept"] == "no-red" and r["seconds"] > 0 and r["peak_memory_mib"] > 0 and r["file_bytes"] > 0
        assert 0 <= r["erased"]["forget"]["concept_rate"] <= 1 and r["fid_retain"] >= 0
    assert rows["semu"]["trainable_fraction"] <= 0.01
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "| no-red | semu |" in (tmp_path / "bench.md").read_text()
