"""python -m search.quickstart: a small study end to end, ending with baseline vs best on held-out clips."""
from __future__ import annotations

import re

import pytest

from search.quickstart import main
from tests.search.conftest import write_spec


@pytest.mark.slow
def test_quickstart_searches_exports_scores_and_says_what_next(tmp_path, warm_cache, capsys):
    studies = tmp_path / "studies"
    write_spec(studies, "quickstart", epochs=2, startup="near_baseline = 2")
    assert main(["--studies-dir", str(studies), "--trials", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "1/3 searching" in out and "2/3 exporting" in out and "3/3 running each kernel" in out
    table = re.search(r"validation lwlrap\s+(\S+)\s+(\S+)\s+(\S+)\n\s+held-out test lwlrap\s+(\S+)\s+(\S+)\s+(\S+)", out)
    assert table, out
    baseline_val, best_val, gain = (float(x) for x in table.groups()[:3])
    assert abs(best_val - baseline_val - gain) < 1e-3
    assert 0 < float(table.group(4)) < 1 and 0 < float(table.group(5)) < 1
    assert re.search(r"study quickstart: 3 trials \(\d complete, \d pruned\)", out)
    assert "python -m search.dashboard --study quickstart" in out and "ssh -L 8080:localhost:8080" in out
    assert (studies / "quickstart" / "export" / "kernel.py").is_file()
    # a second run continues the same study
    assert main(["--studies-dir", str(studies), "--trials", "4", "--threads", "1"]) == 0
    assert "study quickstart: 4 trials" in capsys.readouterr().out
