"""Paper experiments: the toy MLP learning-rate grid (Figure 2) and the width-scaling check."""

from loraplus.experiments.toy import run_toy, toy_loss, train_single
from loraplus.experiments.toy_io import read_toy_json, write_toy_outputs
from loraplus.experiments.toy_result import (
    BestPoint,
    ToyConfig,
    ToyResult,
    band,
    best,
    format_best,
    log2_grid,
    log_grid,
    seed_result,
)
from loraplus.experiments.width import (
    WidthConfig,
    WidthResult,
    fit_loglog_slope,
    run_width,
    summary_lines,
    write_width_outputs,
)

__all__ = [
    "BestPoint",
    "ToyConfig",
    "ToyResult",
    "WidthConfig",
    "WidthResult",
    "band",
    "best",
    "fit_loglog_slope",
    "format_best",
    "log2_grid",
    "log_grid",
    "read_toy_json",
    "run_toy",
    "run_width",
    "seed_result",
    "summary_lines",
    "toy_loss",
    "train_single",
    "write_toy_outputs",
    "write_width_outputs",
]
