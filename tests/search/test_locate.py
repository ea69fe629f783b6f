"""One resolver from --study to spec, stored name and folders (search.study.locate), and every command using it: a spec
whose [study] name differs from its file name is one study, whichever command is asked."""
from __future__ import annotations

import pytest

from search.best import main as best_main
from search.report import main as report_main
from search.run import main as run_main
from search.spec import SpecError
from search.study.locate import locate
from tests.search.conftest import write_spec
from tests.search.test_dashboard import _Dashboard


def test_the_specs_study_name_names_the_study_and_its_folder(tmp_path):
    path = write_spec(tmp_path, "mine", study='name = "renamed"')
    for given in ("mine", str(path)):
        location = locate(given, tmp_path)
        assert location.name == "renamed" and location.spec.path == path
        assert location.folder == tmp_path / "renamed"
        assert location.storage_url() == f"sqlite:///{(tmp_path / 'renamed.db').resolve()}"
    assert locate("mine", tmp_path, "postgresql://db/x", "s3://bucket").storage_url() == "postgresql://db/x"


def test_without_a_spec_file_the_argument_is_the_stored_name_unless_a_worker_needs_the_spec(tmp_path):
    write_spec(tmp_path, "other")
    location = locate("remote", tmp_path, "postgresql://db/x")
    assert location.name == "remote" and location.spec is None and location.folder == tmp_path / "remote"
    with pytest.raises(SpecError, match=r"remote\.toml: study spec not found; specs in .*: other"):
        locate("remote", tmp_path, spec_required=True)


def test_an_invalid_spec_is_an_error_even_for_readers(tmp_path):
    (tmp_path / "broken.toml").write_text("[study]\nepochs = 'ten'\n", encoding="utf-8")
    with pytest.raises(SpecError, match="broken.toml"):
        locate("broken", tmp_path)


@pytest.mark.slow
def test_every_command_finds_a_study_named_apart_from_its_file(tmp_path, warm_cache, capsys):
    studies = tmp_path / "studies"
    write_spec(studies, "mine", epochs=1, study='name = "renamed"')
    common = ["--study", "mine", "--studies-dir", str(studies)]
    assert run_main([*common, "--trials", "2", "--threads", "1"]) == 0
    assert (studies / "renamed.db").is_file() and not (studies / "mine.db").exists()

    assert report_main(common) == 0
    assert (studies / "renamed" / "report" / "report.md").is_file()

    assert best_main([*common, "--export", "--reuse-checkpoints"]) == 0
    assert (studies / "renamed" / "export" / "kernel.py").is_file()
    capsys.readouterr()

    dashboard = _Dashboard(*common)
    try:
        assert "study 'renamed'" in "".join(dashboard.lines)
        names = [s["study_name"] for s in dashboard.get_json("/api/studies")["study_summaries"]]
        assert names == ["renamed"]
    finally:
        dashboard.stop()
