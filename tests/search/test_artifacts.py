"""The file-system artifact store: Optuna's store protocol through Optuna's public artifact functions, atomic
writes into sub-folders, and ids that would leave the store refused."""
from __future__ import annotations

import io

import optuna
import pytest
from optuna.artifacts import download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from search.study.artifacts import open_artifact_store


def test_optuna_uploads_to_and_downloads_from_the_store(tmp_path):
    store = open_artifact_store(tmp_path / "artifacts")
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    source = tmp_path / "config.json"
    source.write_text('{"lr": 0.001}')
    artifact_id = upload_artifact(artifact_store=store, file_path=str(source), study_or_trial=trial)
    target = tmp_path / "back.json"
    download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(target))
    assert target.read_text() == '{"lr": 0.001}'
    store.remove(artifact_id)
    with pytest.raises(ArtifactNotFound):
        store.open_reader(artifact_id)


def test_writes_go_into_sub_folders_whole(tmp_path):
    store = open_artifact_store(tmp_path / "artifacts")
    store.write("uid/3/best.pth", io.BytesIO(b"weights"))
    store.put_file("uid/3/config.json", _file(tmp_path, b"{}"))
    assert store.open_reader("uid/3/best.pth").read() == b"weights"
    assert store.size("uid/3/config.json") == 2 and store.size("uid/4/best.pth") is None
    assert sorted(p.name for p in (tmp_path / "artifacts" / "uid" / "3").iterdir()) == ["best.pth", "config.json"]


@pytest.mark.parametrize("artifact_id", ["/etc/passwd", "../outside", "uid/../../outside"])
def test_an_id_that_leaves_the_store_is_refused(tmp_path, artifact_id):
    store = open_artifact_store(tmp_path / "artifacts")
    with pytest.raises(ValueError, match="must stay inside"):
        store.write(artifact_id, io.BytesIO(b"x"))
    assert not (tmp_path / "outside").exists()


def _file(tmp_path, content: bytes):
    path = tmp_path / "source"
    path.write_bytes(content)
    return path
