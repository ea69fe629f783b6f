"""The "sampled" built-in set: real recorded samples and espeak-ng voices in the FAT2019 layout.

Needs the Debian packages fluid-soundfont-gm, timgm6mb-soundfont and espeak-ng (.ci/install-sound-packages).
"""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import file_hashes
from trainer import synth
from trainer.data import load_splits
from trainer.labels import load_labels
from trainer.synth import layout, sampled
from trainer.synth.layout import MissingSoundSourceError
from trainer.synth.playing import Domain, Percussive, Spoken
from trainer.synth.soundfont import SoundFont
from trainer.synth.speech import PhraseBank

SCALE, SEED = 0.01, 7  # the per-label minimums dominate: 72 curated, 24 noisy, 24 test clips
FOLDERS = {"curated": "train_curated", "noisy": "train_noisy", "test": "test"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("builtin-cache")


@pytest.fixture(scope="module")
def built(cache) -> Path:
    return synth.ensure_builtin("sampled", scale=SCALE, seed=SEED, cache_dir=cache)


@pytest.mark.slow
def test_ensure_builtin_caches_under_its_name_and_reuses_it(built, cache, capsys):
    assert built == cache / "sampled" / f"scale-{SCALE:g}-seed-{SEED}"
    marker = (built / synth.COMPLETE_MARKER).read_text()
    assert marker.startswith(f"scale={SCALE:g} seed={SEED}\nsources: FluidR3_GM.sf2 ")
    before = file_hashes(built)
    assert synth.ensure_builtin("sampled", scale=SCALE, seed=SEED, cache_dir=cache) == built
    assert capsys.readouterr().err == "", "a complete set is reused, not regenerated"
    assert file_hashes(built) == before


def test_layout_reads_as_fat2019_with_held_out_test_labels(built):
    vocab = load_labels()
    curated, noisy = load_splits(built, use_noisy=True)
    sizes = layout.split_sizes(SCALE, len(synth.SAMPLED_LABELS))
    assert (len(curated), len(noisy)) == (sizes["curated"], sizes["noisy"]) == (72, 24)
    realised = [vocab.index(label) for label in synth.SAMPLED_LABELS]
    for table in (curated, noisy):
        assert set(np.flatnonzero(table.targets.sum(axis=0))) <= set(realised)
    assert curated.targets[:, realised].sum(axis=0).min() >= layout.MIN_CURATED_PER_LABEL

    test_rows = _rows(built / "test_labels.csv")
    submission = list(csv.reader(open(built / "sample_submission.csv", newline="", encoding="utf-8")))
    assert submission[0] == ["fname", *vocab]
    assert [r[0] for r in submission[1:]] == [r["fname"] for r in test_rows]
    assert sorted(r["fname"] for r in test_rows) == sorted(p.name for p in (built / "test").iterdir())
    assert all(set(r["labels"].split(",")) <= set(sampled.SAMPLED_LABELS) for r in test_rows)
    for path in sorted(built.rglob("*.wav"))[::10]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (44_100, 1, "PCM_16")
        assert sf.read(path, dtype="int16")[0].std() > 0


@pytest.mark.slow
def test_same_seed_same_bytes_from_the_cli_in_another_process(built, tmp_path):
    out = tmp_path / "again"
    command = [sys.executable, "-m", "trainer.synth", "--kind", "sampled", "--scale", str(SCALE), "--seed", str(SEED),
               "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    assert file_hashes(out) == file_hashes(built)


def test_another_seed_renders_other_audio_and_names(built):
    clip = layout.plan(sampled.SAMPLED, SCALE, SEED)["curated"][0]
    seven, eight = sampled.make_renderer(7)(clip), sampled.make_renderer(8)(clip)
    assert seven.audio.tobytes() != eight.audio.tobytes()
    assert sf.read(built / "train_curated" / clip.fname, dtype="int16")[0].tobytes() == seven.audio.tobytes()
    names = {c.fname for split in layout.plan(sampled.SAMPLED, SCALE, SEED).values() for c in split}
    demo_names = {c.fname for split in layout.plan(synth.recipes.DEMO, SCALE, SEED).values() for c in split}
    assert names.isdisjoint(demo_names), "the two built-in sets never share a clip name"


def test_noisy_labels_corrupted_as_planned():
    noisy = layout.plan_split("noisy", 3000, 0, sampled.SAMPLED_LABELS)
    corrupted = sum(c.written != c.labels for c in noisy) / len(noisy)
    assert abs(corrupted - layout.NOISY_CORRUPT_P) < 0.04


def test_written_noisy_labels_differ_from_the_audio_exactly_where_planned(built):
    truth = {r["fname"]: r["true_labels"] for r in _rows(built / layout.MANIFEST)}
    written = {r["fname"]: r["labels"] for r in _rows(built / "train_noisy.csv")}
    planned = {c.fname for c in layout.plan(sampled.SAMPLED, SCALE, SEED)["noisy"] if c.written != c.labels}
    assert planned, "24 noisy clips at 35% corruption should hold some wrong labels"
    assert {fname for fname, labels in written.items() if labels != truth[fname]} == planned
    curated = {r["fname"]: r["labels"] for r in _rows(built / "train_curated.csv")}
    assert all(truth[fname] == labels for fname, labels in curated.items())


def test_curated_and_noisy_come_from_different_sources_and_channels(built):
    rows = _rows(built / layout.MANIFEST)
    curated_voices = {v for s in sampled.LABEL_SOURCES.values() if isinstance(s, Spoken) for v in s.curated}
    noisy_voices = {v for s in sampled.LABEL_SOURCES.values() if isinstance(s, Spoken) for v in s.noisy}
    by_split: dict[str, set[str]] = {"curated": set(), "noisy": set(), "test": set()}
    for row in rows:
        for event in row["sources"].split(";"):
            label, source = event.split("=", 1)
            assert label in row["true_labels"].split(",")
            if source.startswith("espeak-ng"):
                by_split[row["split"]] |= {part.split(" ")[1] for part in source.split(" + ")}
            else:
                by_split[row["split"]].add(source.split(":")[0])
    assert by_split["curated"] <= {"FluidR3_GM.sf2"} | curated_voices
    assert by_split["test"] <= {"FluidR3_GM.sf2"} | curated_voices
    assert by_split["noisy"] <= {"TimGM6mb.sf2"} | noisy_voices
    assert {"FluidR3_GM.sf2", "TimGM6mb.sf2"} <= by_split["curated"] | by_split["noisy"]

    def high_band_share(path: Path) -> float:  # energy above 10 kHz: the noisy split's channel cuts it off
        power = np.abs(np.fft.rfft(sf.read(path)[0])) ** 2
        return float(power[np.fft.rfftfreq(2 * power.shape[0] - 2, 1 / 44_100) > 10_000].sum() / power.sum())

    share = {split: np.median([high_band_share(built / FOLDERS[split] / r["fname"]) for r in rows
                               if r["split"] == split]) for split in ("curated", "noisy")}
    assert share["noisy"] < share["curated"] / 10, share


@pytest.fixture(scope="module")
def fonts() -> dict[bool, SoundFont]:
    return {False: SoundFont(sampled.FLUID_SF2), True: SoundFont(sampled.TIM_SF2)}


@pytest.mark.parametrize("label", sampled.SAMPLED_LABELS)
def test_every_label_sounds_in_both_domains(label, fonts):
    source = sampled.LABEL_SOURCES[label]
    bank = PhraseBank("espeak-ng", 0)
    for noisy in (False, True):
        domain = Domain(fonts[noisy], noisy, 2 if noisy else 1, bank)
        if not isinstance(source, Spoken):
            presets = source.noisy if noisy else source.curated
            for bank_program in presets.programs:
                assert bank_program in domain.font.presets, (label, domain.font.path.name, bank_program)
                if isinstance(source, Percussive):  # each kit must hold every key the label hits
                    for key in presets.keys:
                        assert np.abs(domain.font.note(*bank_program, key, 100, 0.2, 44_100)).max() > 1e-3
        for index in range(3):
            event, description = source.play(domain, 0, np.random.default_rng([index]), 66_150)
            assert event.shape == (66_150,) and np.isfinite(event).all()
            assert np.sqrt(np.mean(event**2)) > 1e-3, (label, noisy, description)
            expected = "TimGM6mb.sf2" if noisy else "FluidR3_GM.sf2"
            assert description.startswith("espeak-ng" if isinstance(source, Spoken) else expected)


def test_every_voice_variant_is_really_applied():
    # espeak-ng silently ignores an unknown variant and some language/variant pairs (en-gb+m2 speaks en-gb).
    voices = {v for s in sampled.LABEL_SOURCES.values() if isinstance(s, Spoken) for v in (*s.curated, *s.noisy)}

    def spoken(voice: str) -> bytes:
        return subprocess.run(["espeak-ng", "-v", voice, "--stdout", "hello there"], capture_output=True).stdout

    unapplied = sorted(v for v in voices if spoken(v) == spoken(v.split("+")[0]))
    assert unapplied == []


def _hide_sources(monkeypatch, tmp_path: Path) -> Path:
    missing = tmp_path / "nowhere" / "TimGM6mb.sf2"
    monkeypatch.setattr(sampled, "TIM_SF2", missing)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    return missing


def test_missing_packages_are_named_with_the_install_command(monkeypatch, tmp_path):
    missing = _hide_sources(monkeypatch, tmp_path)
    with pytest.raises(MissingSoundSourceError) as error:
        synth.generate(tmp_path / "out", kind="sampled", scale=SCALE)
    message = str(error.value)
    assert "\n" not in message
    assert f"{missing} (Debian package timgm6mb-soundfont)" in message
    assert "espeak-ng on PATH (Debian package espeak-ng)" in message
    assert re.search(r"install with: (sudo )?apt-get install -y timgm6mb-soundfont espeak-ng$", message)
    with pytest.raises(MissingSoundSourceError):
        synth.ensure_builtin("sampled", scale=SCALE, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing half-made is left behind"


@pytest.mark.slow
def test_cli_reports_a_missing_package_in_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path / "no-bin")}
    command = [sys.executable, "-m", "trainer.synth", "--kind", "sampled", "--scale", "0.01", "--out", str(tmp_path / "x")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2
    assert re.fullmatch(r"error: the sampled data set needs espeak-ng on PATH \(Debian package espeak-ng\); "
                        r"install with: (sudo )?apt-get install -y espeak-ng\n", run.stderr), run.stderr
    assert not (tmp_path / "x").exists()


def test_unknown_kind_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"'tones': expected one of demo, sampled"):
        synth.generate(tmp_path / "x", kind="tones")
    with pytest.raises(ValueError, match="expected one of demo, sampled"):
        synth.ensure_builtin("tones", cache_dir=tmp_path)
    assert synth.BUILTIN_DATASETS == ("demo", "sampled")
