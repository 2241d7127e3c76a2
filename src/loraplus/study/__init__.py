"""Studies as data: a TOML file of stages over `loraplus.sweep` sweeps and tunes (config.py
documents the file), run in order by `run_study` with every run a resumable Optuna cell, reported
generically (report.py) and, where a study names one, by its own report function.

Modules: config (StudyConfig, Stage, load_study), run (planning: plan_runs / stage_cells, pure;
running: run_study), report (write_report: results.json + results.md, then the study's own), and
the studies' own reports.
"""

from loraplus.study.config import Stage, StudyConfig, load_study
from loraplus.study.report import write_report
from loraplus.study.run import Cell, Done, Run, StudyResult, plan_runs, run_study, stage_cells

__all__ = [
    "Cell",
    "Done",
    "Run",
    "Stage",
    "StudyConfig",
    "StudyResult",
    "load_study",
    "plan_runs",
    "run_study",
    "stage_cells",
    "write_report",
]
