"""Learning-rate sweeps of LoRA+ on real models, kept in an Optuna study (paper Figure 3).

    SweepConfig --open_study--> Optuna study, every cell queued once (any SQLAlchemy URL;
        default sqlite:///<out_dir>/sweep.db; PostgreSQL for several machines)
        --run_sweep / run_worker--> one training run per grid cell (lr_A x ratio|lr_B x seed)
        --summarize--> SweepSummary --write_outputs--> sweep.json + sweep_heatmap.png
    TuneConfig --tune--> per method an adaptive lr_A line search, its cells queued round by
        round into one such study --> TuneSummary --write_tune--> tune.json + tune.png

Modules: config (SweepConfig, make_storage), grid (how each cell is handed out exactly once, on
Optuna's public API), alive (is a trial's worker alive), trial (one cell as a training run), run
(workers), summary (results), tune (the adaptive lr search on these). Guarantees: every cell runs
exactly once across processes and machines sharing the study; a resumed sweep re-runs only
unfinished cells (interrupted, or crashed: worker gone, by its lock file here or Optuna's heartbeat
elsewhere), and removes their folders; diverged and errored cells stay taken (errors are retried
with retry_failed); a worker that finds no queued cell stops.
"""

from loraplus._extras import require

require("sweep", "loraplus.sweep")

from loraplus.sweep.config import SweepConfig, make_storage  # noqa: E402
from loraplus.sweep.grid import STUDY_ATTR, Grid, open_study  # noqa: E402
from loraplus.sweep.run import run_sweep, run_worker  # noqa: E402
from loraplus.sweep.summary import (  # noqa: E402
    SweepSummary,
    best_cell,
    load_summary,
    summarize,
    write_outputs,
)
from loraplus.sweep.trial import Reporter, TrialSpec, train_trial  # noqa: E402
from loraplus.sweep.tune import (  # noqa: E402
    TuneConfig,
    TuneSummary,
    load_tune,
    plan,
    summarize_tune,
    tune,
    write_tune,
)

__all__ = [
    "STUDY_ATTR",
    "Grid",
    "Reporter",
    "SweepConfig",
    "SweepSummary",
    "TrialSpec",
    "TuneConfig",
    "TuneSummary",
    "best_cell",
    "load_summary",
    "load_tune",
    "make_storage",
    "open_study",
    "plan",
    "run_sweep",
    "run_worker",
    "summarize",
    "summarize_tune",
    "train_trial",
    "tune",
    "write_outputs",
    "write_tune",
]
