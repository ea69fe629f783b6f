"""Audio tagging trainer for FAT2019: cached log-mel features, a configurable ResNet, lwlrap.

Describe a run with ``TrainConfig``, run it with ``train_and_evaluate``. The names below are the
trainer's public surface: the search service (``search/``) imports these and nothing else. The trainer
never imports optuna.
"""
from __future__ import annotations

from trainer.atomic import (
    atomic_path,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temp_files,
)
from trainer.audio import AudioReadError, read_audio
from trainer.batches import FeatureBank
from trainer.checkpoint import CheckpointError, load_checkpoint, load_state_dict
from trainer.config import ConfigError, TrainConfig, flatten, parse_set_args, read_toml
from trainer.data import DataError, read_labelled_csv, read_test_fnames
from trainer.feature_cache import feature_cache_key, load_features
from trainer.features import LogMel
from trainer.inference import predict_bank, resolve_device
from trainer.labels import load_labels
from trainer.loop import VAL_PREDICTIONS, NonFiniteLossError, Result, train_and_evaluate
from trainer.memory import check_fits, largest_data_config, plan_data_memory
from trainer.metrics import lwlrap, per_class_lwlrap
from trainer.models import build_model
from trainer.paths import cache_root
from trainer.prepare import DEVICE_BANK_SHARE, labelled_bank, split_identity
from trainer.synth import BUILTIN_DATASETS, ensure_builtin, ensure_demo_data

__all__ = [
    "AudioReadError", "BUILTIN_DATASETS", "DEVICE_BANK_SHARE", "CheckpointError", "ConfigError", "DataError", "FeatureBank", "LogMel", "NonFiniteLossError",
    "Result", "TrainConfig", "VAL_PREDICTIONS", "atomic_path", "atomic_torch_save", "atomic_write_bytes",
    "atomic_write_text", "build_model", "cache_root", "check_fits", "ensure_builtin", "ensure_demo_data", "feature_cache_key",
    "flatten", "labelled_bank", "largest_data_config", "load_checkpoint", "load_features", "load_labels", "load_state_dict", "lwlrap", "parse_set_args",
    "per_class_lwlrap", "plan_data_memory", "predict_bank", "read_audio", "read_labelled_csv", "read_test_fnames", "read_toml",
    "remove_stale_temp_files", "resolve_device", "split_identity", "train_and_evaluate",
]
