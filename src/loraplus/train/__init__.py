"""One LoRA+ training run: TrainConfig -> model + data + LoraPlusTrainer -> metrics and adapter.

`make_config(path, **overrides)` builds a validated TrainConfig from a YAML/TOML file and keyword
overrides (numbers written as strings are converted); `train(cfg)` runs it and writes into
`cfg.output_dir`: metrics.json, curves.png, adapter/ (PEFT format) and, with merge, merged/;
it returns the run's record (TrainResult), the content of metrics.json, which `read_record` reads.
"""

from loraplus._config import read_settings_file as read_config_file
from loraplus.train.config import TrainConfig, make_config
from loraplus.train.data import collator, tokenize
from loraplus.train.record import TrainResult, read_record, write_record
from loraplus.train.run import train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "collator",
    "make_config",
    "read_config_file",
    "read_record",
    "tokenize",
    "train",
    "write_record",
]
