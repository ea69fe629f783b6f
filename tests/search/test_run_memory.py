"""search.run prints the memory the study's largest data takes and refuses, in one line, a box that lacks it."""
from __future__ import annotations

import trainer.memory
from search.run import main
from tests.search.conftest import write_spec


def test_a_worker_prints_the_data_memory_and_refuses_when_the_box_cannot_hold_it(tmp_path, demo_data, capsys,
                                                                                monkeypatch):
    studies = tmp_path / "studies"
    write_spec(studies, "mem", space='"features.n_mels" = { choices = [32, 64] }\n'
                                     '"data.use_noisy" = { choices = [false, true] }\n')
    monkeypatch.setattr(trainer.memory, "available_memory_bytes", lambda: 1_000_000)
    assert main(["--study", "mem", "--studies-dir", str(studies), "--trials", "1", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    out, err = captured.out.strip().splitlines(), captured.err.strip().splitlines()
    assert out[0].startswith("data: train bank ") and "noisy at 64 mels" in out[0]
    assert out[0].endswith("(the largest data a trial of this study can ask for)")
    assert len(err) == 1 and err[0].startswith("error: the data of this trial needs ")
    assert err[0].endswith("per box and 1 MB are available; use fewer mels or data.use_noisy = false")
    assert not (studies / "mem.db").exists()  # refused before it touched the study
