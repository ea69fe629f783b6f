"""Audio tagging trainer for FAT2019: log-mel features, ResNet, lwlrap."""
from trainer.config import ConfigError, TrainConfig

__all__ = ["ConfigError", "TrainConfig"]
