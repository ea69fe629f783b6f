import subprocess
import sys

import numpy as np
import pytest
import torch

from trainer import NonFiniteLossError, train_and_evaluate
from trainer.metrics import lwlrap
from trainer.models import build_model


def run(config, data, workdir, **kwargs):
    return train_and_evaluate(config, data, workdir=workdir, threads=1, progress=False, verbose=False, **kwargs)


TIMINGS = ("epoch_time", "model_cost", "inference_cost")


def strip_times(history):
    return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


def test_same_config_and_seed_give_the_same_numbers(tiny_config, demo_data, tmp_path):
    first = run(tiny_config, demo_data, tmp_path / "a")
    second = run(tiny_config, demo_data, tmp_path / "b")
    assert strip_times(first.history) == strip_times(second.history)
    assert first.epochs_run == 2 and len(first.history) == 2
    assert first.best_lwlrap == max(h["lwlrap"] for h in first.history)
    assert first.epoch_time > 0 and first.inference_cost > 0


def test_resumed_run_ends_with_the_numbers_of_an_uninterrupted_one(tiny_config, demo_data, tmp_path):
    config = tiny_config.with_overrides({"optim.epochs": 3, "augment.mixup_alpha": 0.4,
                                         "augment.time_masks": 1, "augment.time_mask_frames": 8,
                                         "model.dropout": 0.2, "optim.schedule": "cosine"})
    straight = run(config, demo_data, tmp_path / "straight")

    class Stop(Exception):
        pass

    def stop_after_two(epoch, metrics):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        run(config, demo_data, tmp_path / "resumed", on_epoch=stop_after_two)
    seen = []
    resumed = run(config, demo_data, tmp_path / "resumed", on_epoch=lambda e, m: seen.append(e))
    assert seen == [3]  # only the missing epoch is trained
    assert strip_times(resumed.history) == strip_times(straight.history)
    assert resumed.best_lwlrap == straight.best_lwlrap and resumed.epochs_run == 3


def test_checkpoints_load_with_weights_only_into_the_configured_model(tiny_config, demo_data, tmp_path):
    result = run(tiny_config, demo_data, tmp_path)
    state = torch.load(result.best_path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = build_model(tiny_config.model)
    model.load_state_dict(state)
    last = torch.load(result.last_path, weights_only=True)
    assert last["epoch"] == 2
    assert (tmp_path / "config.json").read_text() == tiny_config.to_json()


def test_resume_refuses_a_checkpoint_of_another_config(tiny_config, demo_data, tmp_path):
    run(tiny_config.with_overrides({"optim.epochs": 1}), demo_data, tmp_path)
    with pytest.raises(ValueError, match="belongs to another config"):
        run(tiny_config.with_overrides({"optim.lr": 1e-2}), demo_data, tmp_path)


def test_non_finite_loss_stops_the_run_with_its_own_error(tiny_config, demo_data, tmp_path, monkeypatch):
    import trainer.loop

    real = trainer.loop.build_loss

    def exploding(cfg):
        loss = real(cfg)
        return lambda logits, y, noisy: loss(logits, y, noisy) * float("nan")

    monkeypatch.setattr(trainer.loop, "build_loss", exploding)
    with pytest.raises(NonFiniteLossError, match="training loss became nan"):
        run(tiny_config, demo_data, tmp_path)


def test_on_epoch_receives_metrics_and_its_exception_stops_training(tiny_config, demo_data, tmp_path):
    calls = []

    def hook(epoch, metrics):
        calls.append((epoch, sorted(metrics)))
        raise KeyError("pruned")

    with pytest.raises(KeyError):
        run(tiny_config.with_overrides({"optim.epochs": 4}), demo_data, tmp_path, on_epoch=hook)
    assert len(calls) == 1
    assert {"lwlrap", "best_lwlrap", "val_loss", "train_loss", "lr", "grad_norm", "epoch_time"} <= set(calls[0][1])
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 1


def test_tensorboard_gets_curves_per_class_chart_and_hparams(tiny_config, demo_data, tmp_path):
    from tests.tensorboard_reader import read_tensorboard

    run(tiny_config, demo_data, tmp_path / "run", tensorboard_dir=tmp_path / "tb")
    board = read_tensorboard(tmp_path / "tb")
    assert [step for step, _ in board["scalars"]["lwlrap/val"]] == [1, 2]
    assert {"loss/train", "loss/val", "lr", "grad_norm"} <= set(board["scalars"])
    assert board["hparams"]["model.width"] == pytest.approx(0.0625)
    assert "hparam/best_lwlrap" in board["metrics"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    charts = events.Images("lwlrap/per_class")
    assert [c.step for c in charts] == [1, 2] and charts[0].width > 500 and charts[0].encoded_image_string


@pytest.fixture(scope="module")
def small_demo_data(session_cache):
    from trainer.synth import ensure_demo_data

    return ensure_demo_data(scale=0.2, seed=0, cache_dir=session_cache)


@pytest.mark.slow
def test_cli_trains_two_demo_epochs_and_beats_chance(small_demo_data, tmp_path):
    overrides = ["model.depth=18", "model.width=0.25", "features.crop_frames=128",
                 "optim.batch_size=8", "optim.lr=2e-3", "optim.epochs=2"]
    out = subprocess.run([sys.executable, "-m", "trainer.train", "--data", str(small_demo_data), "--out",
                          str(tmp_path / "runs"), "--threads", "2", *(f"--set={o}" for o in overrides)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "runs" / "0"
    assert (run_dir / "best.pth").exists() and (run_dir / "last.pth").exists() and (run_dir / "config.json").exists()
    assert "epoch 2/2" in out.stderr
    best = float(out.stdout.split("best lwlrap ")[1].split()[0])
    from trainer.data import load_splits

    curated, _ = load_splits(small_demo_data, use_noisy=False)
    chance = np.mean([lwlrap(curated.targets, np.random.default_rng(s).random(curated.targets.shape))
                      for s in range(5)])
    assert best > 2 * chance, (best, chance)


@pytest.mark.slow
def test_cli_reports_config_errors_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "trainer.train", "--out", str(tmp_path), "--set",
                          "model.activation=tanh"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: --set: model.activation='tanh' is not allowed; expected one of: "
                                  "relu, prelu, elu, silu, sigmoid")


@pytest.mark.slow
def test_best_epoch_validation_predictions_are_kept_with_their_split(tiny_config, demo_data, tmp_path):
    result = run(tiny_config.with_overrides({"optim.epochs": 3}), demo_data, tmp_path)
    saved = np.load(result.val_predictions_path)
    assert saved["probs"].dtype == np.float16 and saved["probs"].shape[1] == 80
    assert len(saved["fnames"]) == saved["probs"].shape[0] and str(saved["fnames"][0]).endswith(".wav")
    assert int(saved["epoch"]) == result.best_epoch
    from trainer.data import load_splits

    curated, _ = load_splits(demo_data, use_noisy=False)
    by_name = {p.name: t for p, t in zip(curated.paths, curated.targets)}
    truth = np.stack([by_name[str(f)] for f in saved["fnames"]])
    assert lwlrap(truth, saved["probs"].astype(np.float64)) == pytest.approx(result.best_lwlrap, abs=2e-3)
    other = run(tiny_config.with_overrides({"features.n_mels": 24, "optim.epochs": 1}), demo_data, tmp_path / "b")
    assert str(np.load(other.val_predictions_path)["split"]) == str(saved["split"])  # same clips, other features
    resplit = run(tiny_config.with_overrides({"data.split_seed": 1, "optim.epochs": 1}), demo_data, tmp_path / "c")
    assert str(np.load(resplit.val_predictions_path)["split"]) != str(saved["split"])


def test_result_reports_inference_cost_parts_and_threads(tiny_config, demo_data, tmp_path):
    result = run(tiny_config, demo_data, tmp_path)
    assert result.feature_cost > 0 and result.model_cost > 0
    assert result.inference_cost == pytest.approx(result.feature_cost + result.model_cost)
    assert result.threads == 1 and result.resumed_from_epoch == 0
    assert all(h["inference_cost"] > h["model_cost"] > 0 for h in result.history)


def test_nan_validation_outputs_are_divergence_not_a_metric_crash(tiny_config, demo_data, tmp_path, monkeypatch):
    import trainer.loop

    monkeypatch.setattr(trainer.loop, "predict_bank", lambda *a, **k: np.full((3, 80), np.nan))
    with pytest.raises(NonFiniteLossError, match="validation outputs became NaN/inf after epoch 1"):
        run(tiny_config, demo_data, tmp_path)


def test_nan_under_the_min_max_loss_is_divergence_not_a_runtime_error(tiny_config, demo_data, tmp_path, monkeypatch):
    import trainer.loop

    real = trainer.loop.build_model

    def poisoned(cfg, n_labels=80):
        model = real(cfg, n_labels)
        model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        return model

    monkeypatch.setattr(trainer.loop, "build_model", poisoned)
    with pytest.raises(NonFiniteLossError, match="training loss became nan"):
        run(tiny_config.with_overrides({"loss.name": "bce_minmax"}), demo_data, tmp_path)


class UnsafePayload:
    """Stands for any pickled object: loading it would run arbitrary code, so it must be refused."""


def test_a_corrupt_or_unsafe_last_checkpoint_is_refused_in_one_line(tiny_config, demo_data, tmp_path):
    from trainer import CheckpointError

    run(tiny_config.with_overrides({"optim.epochs": 1}), demo_data, tmp_path)
    last = tmp_path / "last.pth"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"last.pth: unreadable checkpoint \(truncated or corrupt"):
        run(tiny_config, demo_data, tmp_path)

    torch.save({"config": tiny_config.to_json(), "payload": UnsafePayload()}, last)
    with pytest.raises(CheckpointError, match="not a plain weights file .* it will not be loaded") as info:
        run(tiny_config, demo_data, tmp_path)
    assert "weights_only" not in str(info.value)
