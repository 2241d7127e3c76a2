"""The built wheel in a fresh venv: the core install is light, the extras are named when missing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.version import Version

from loraplus.cli import demo

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("optuna", "matplotlib", "pandas", "datasets", "tensorboard")

CORE_USE = """
import json, sys
import loraplus
light = sorted(m for m in ("transformers", "peft", "optuna", "datasets") if m in sys.modules)
import torch
from peft import LoraConfig, get_peft_model
lora = LoraConfig(r=2, target_modules=["0"])
model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), lora)
opt = loraplus.create_optimizer(model, "adamw", lr=1e-3, ratio=16)
lrs = {g["role"]: g["lr"] for g in opt.param_groups}
from loraplus.cli.demo import load_demo_lrs
demo_lr = load_demo_lrs()["lora"]["lr"]
print(json.dumps({"lrs": lrs, "imported_with_loraplus": light, "demo_lr": demo_lr}))
"""


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_core_wheel_in_a_fresh_venv(tmp_path: Path) -> None:
    """pip install loraplus (no extras) after torch: torch + peft only, and the core works."""
    src = tmp_path / "repo"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", src / "src", ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    built = _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)])
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("loraplus-*.whl")

    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, symlinks=True).create(env)
    vpip = [str(env / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    for step in (["install", "torch==2.13.0"], ["install", str(wheel)]):
        done = _run([*vpip, *step])
        assert done.returncode == 0, done.stderr[-2000:]
    listed = _run([*vpip[:-1], "list", "--format", "json"])  # -q would silence the list
    installed = {d["name"].lower() for d in json.loads(listed.stdout)}
    assert {"torch", "peft", "loraplus"} <= installed
    assert not installed & set(HEAVY), installed & set(HEAVY)

    used = _run([str(env / "bin" / "python"), "-c", CORE_USE])
    assert used.returncode == 0, used.stderr[-2000:]
    result = json.loads(used.stdout.strip().splitlines()[-1])
    assert result["lrs"] == {"lora_A": 1e-3, "lora_B": 16e-3}
    assert result["imported_with_loraplus"] == []  # `import loraplus` pulls in torch only
    assert result["demo_lr"] == demo.load_demo_lrs()["lora"]["lr"]  # the lr record ships

    script = str(env / "bin" / "loraplus")
    helped = _run([script, "--help"])
    assert helped.returncode == 0 and "train" in helped.stdout, helped.stderr
    commands = (("train", "train"), ("sweep", "sweep"), ("tune", "sweep"), ("demo", "train"))
    for command, extra in commands:
        refused = _run([script, command])
        assert refused.returncode == 2, (command, refused.stderr)
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        assert f'pip install -e ".[{extra}]" in the loraplus clone' in refused.stderr
    plots = _run([str(env / "bin" / "python"), "-c", "import loraplus.plots"])
    assert plots.returncode == 1 and 'pip install -e ".[train]"' in plots.stderr
    sweep_import = _run([str(env / "bin" / "python"), "-c", "import loraplus.sweep"])
    assert 'pip install -e ".[sweep]"' in sweep_import.stderr


def _pins(name: str) -> dict[str, str]:
    """{package: version} of a constraints file's `package==version` lines."""
    lines = (REPO / name).read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_the_newest_constraints_cover_every_pin_at_or_above_it() -> None:
    """constraints-newest.txt (make test-newest) moves each pin of constraints.txt, never down."""
    pinned, newest = _pins("constraints.txt"), _pins("constraints-newest.txt")
    assert set(pinned) <= set(newest), set(pinned) - set(newest)
    for name, version in pinned.items():
        assert Version(newest[name]) >= Version(version), name
    makefile = (REPO / "Makefile").read_text()
    assert f"pip install -q torch=={newest['torch']}\n" in makefile  # the wheel installed first
