"""ratio="auto": the per-layer controller of lr_B / lr_A (loraplus.autoratio)."""

from __future__ import annotations

import io
import itertools
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from test_hf import cls_data, targs
from tiny import lora_bert, lora_llama
from torch import nn
from transformers import Trainer, TrainingArguments

import loraplus
from loraplus.autoratio import (
    AutoRatio,
    AutoRatioConfig,
    auto_ratio_logs,
    controller,
    is_auto,
    isotropic_terms,
    lora_pairs,
)
from loraplus.experiments.lora_mlp import batches, teacher_student, train
from loraplus.probe import FeatureUpdateProbe

pytestmark = pytest.mark.usefixtures("one_thread")


def log2_mean(ratios: dict[str, float]) -> float:
    return statistics.mean(math.log2(v) for v in ratios.values())


def test_settles_at_a_larger_ratio_for_a_larger_width() -> None:
    settled = {}
    for n in (16, 256):
        model, teacher = teacher_student(n)
        opt: Any = loraplus.create_optimizer(model, "adamw", lr=1e-3, ratio="auto")
        data = batches(n)
        train(model, teacher, opt, data, 300)
        at_300 = opt.ratios()
        train(model, teacher, opt, data, 100)
        settled[n] = opt.ratios()
        # settled: the last 100 steps (10 updates, up to 2.5 octaves allowed) moved < 1 octave
        assert abs(log2_mean(settled[n]) - log2_mean(at_300)) < 1.0
    assert min(settled[256].values()) > max(settled[16].values())
    assert log2_mean(settled[256]) - log2_mean(settled[16]) > 1.0  # more than twice as large


def state_bytes(model: nn.Module, opt: Any, sched: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer
    )
    return buffer.getvalue()


def llama_run(state: bytes | None, steps: int) -> tuple[nn.Module, Any, Any]:
    model = lora_llama()
    loraplus.init_lora_(model, "init2")  # B ≠ 0 from the start: every update has a balance
    opt: Any = loraplus.create_optimizer(model, "adamw", lr=2e-3, ratio="auto", weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.05 * s))
    if state is not None:
        saved = torch.load(io.BytesIO(state), weights_only=True)  # as the HF Trainer loads
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
    g = torch.Generator().manual_seed(len(state or b""))
    for _ in range(steps):
        ids = torch.randint(0, 128, (2, 8), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def test_state_dict_round_trip_continues_bit_identically() -> None:
    model, opt, sched = llama_run(None, 25)  # mid-run: 3 updates done, ratios away from 16
    assert any(abs(v - 16.0) > 1e-6 for v in opt.ratios().values())
    state = state_bytes(model, opt, sched)
    assert "auto_ratio" in opt.state_dict()
    # continue in place, and from the saved bytes in a fresh model + optimizer
    g = torch.Generator().manual_seed(len(state))
    for _ in range(25):
        ids = torch.randint(0, 128, (2, 8), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    resumed, opt2, _ = llama_run(state, 25)
    assert opt2.auto_ratio.auto_state() == opt.auto_ratio.auto_state()
    for (name, p), (name2, p2) in zip(
        model.named_parameters(), resumed.named_parameters(), strict=True
    ):
        assert name == name2 and torch.equal(p, p2), name


def test_scheduler_and_controller_compose() -> None:
    """SGD, one step: ΔA = -sched·lr·gA and ΔB = -sched·lr·ratio·gB with the controller's ratio."""
    model = lora_llama()
    loraplus.init_lora_(model, "init2")
    lr = 0.01
    opt: Any = loraplus.create_optimizer(model, "sgd", lr=lr, ratio="auto")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    opt.auto_ratio.log2_ratio = [6.0] * len(
        opt.auto_ratio.pairs
    )  # ratio 64, as if the controller had chosen it
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    pairs = lora_pairs(model)
    before = [(p.a.detach().clone(), p.b.detach().clone(), p.a.grad, p.b.grad) for p in pairs]
    opt.step()
    for p, (a0, b0, ga, gb) in zip(pairs, before, strict=True):
        torch.testing.assert_close(p.a.detach(), a0 - 0.5 * lr * ga)
        torch.testing.assert_close(p.b.detach(), b0 - 0.5 * lr * 64 * gb)
    assert sched.get_last_lr()[:2] == [0.5 * lr, 0.5 * lr * 16]  # groups keep LoRA+'s start


@pytest.mark.parametrize(("target", "bound"), [(60.0, 1024.0), (-60.0, 1.0)])
def test_ratio_moves_by_bounded_steps_and_stays_in_range(target: float, bound: float) -> None:
    model = lora_llama()
    loraplus.init_lora_(model, "init2")
    cfg = AutoRatioConfig(every=1, target=target, gain=100.0, max_step=1.0)
    opt: Any = loraplus.create_optimizer(model, "adamw", lr=1e-3, ratio="auto", auto_ratio=cfg)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    history = []
    for _ in range(12):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        history.append(list(opt.auto_ratio.log2_ratio))
    steps = [
        abs(b - a) for h0, h1 in itertools.pairwise(history) for a, b in zip(h0, h1, strict=True)
    ]
    assert max(steps) <= 1.0 + 1e-12
    assert all(v == bound for v in opt.ratios().values())  # 16 -> 2^10 or 2^0: 6 or 4 updates
    assert opt.auto_ratio.auto_state()["steps"] == 12


def test_isotropic_terms_are_the_frobenius_norms() -> None:
    g = torch.Generator().manual_seed(0)
    a0, b0 = torch.randn(3, 20, generator=g), torch.randn(16, 3, generator=g)
    a1, b1 = a0 + 0.1 * torch.randn(3, 20, generator=g), b0 + 0.1 * torch.randn(16, 3, generator=g)
    d1, d2 = isotropic_terms(a0, b0, a1, b1).tolist()
    assert d1 == pytest.approx(torch.linalg.norm(b0 @ (a1 - a0)).item(), rel=1e-5)
    assert d2 == pytest.approx(torch.linalg.norm((b1 - b0) @ a0).item(), rel=1e-5)
    # for inputs z ~ N(0, I): E‖B·ΔA·z‖² = ‖B·ΔA‖_F², which the name promises
    z = torch.randn(200_000, 20, generator=g)
    sampled = (z @ (b0 @ (a1 - a0)).T).pow(2).sum(1).mean().sqrt().item()
    assert sampled == pytest.approx(d1, rel=0.01)


def test_create_optimizer_auto_is_the_users_optimizer_class() -> None:
    model = lora_llama()
    opt = loraplus.create_optimizer(model, torch.optim.AdamW, lr=1e-3, ratio="auto")
    assert type(opt) is torch.optim.AdamW and isinstance(opt.auto_ratio, AutoRatio)
    assert is_auto(opt) and not is_auto(loraplus.create_optimizer(model, "adamw", lr=1e-3))
    assert len(opt.ratios()) == 14 and set(opt.ratios().values()) == {16.0}
    text = loraplus.summary(opt)
    assert "ratio auto" in text and "  mlp     6 layers  median      16" in text
    assert auto_ratio_logs(opt) == {f"auto_ratio/{k}": 16.0 for k in ("q", "k", "v", "o", "mlp")}


def test_auto_refusals() -> None:
    hand_made = nn.Module()  # LoRA by parameter names only, not PEFT's layers
    hand_made.lora_A, hand_made.lora_B = nn.Linear(8, 2, bias=False), nn.Linear(2, 8, bias=False)
    with pytest.raises(ValueError, match="no PEFT LoRA Linear layer"):
        loraplus.create_optimizer(hand_made, "adamw", lr=1e-3, ratio="auto")
    with pytest.raises(ValueError, match="drop lora_B from lr_multipliers"):
        loraplus.create_optimizer(
            lora_llama(), "adamw", lr=1e-3, ratio="auto", lr_multipliers={"lora_B": 4}
        )
    with pytest.raises(ValueError, match="0 < low <= start <= high"):
        AutoRatioConfig(start=2048)
    with pytest.raises(ValueError, match="saved for other LoRA layers"):
        opt: Any = loraplus.create_optimizer(lora_llama(), "adamw", lr=1e-3, ratio="auto")
        state = opt.state_dict()
        state["auto_ratio"]["layers"] = state["auto_ratio"]["layers"][:3]
        opt.load_state_dict(state)


def test_hf_trainer_checkpoints_and_resumes_the_controller(tmp_path: Path) -> None:
    def trainer(model: nn.Module, out: Path, steps: int) -> Trainer:
        opt = loraplus.create_optimizer(model, "adamw", lr=1e-3, ratio="auto")
        args = targs(out, TrainingArguments, max_steps=steps, save_strategy="steps", save_steps=20)
        return Trainer(model=model, args=args, train_dataset=cls_data(64), optimizers=(opt, None))

    first = trainer(lora_bert(), tmp_path, 20)
    first.train()
    saved = torch.load(tmp_path / "checkpoint-20" / "optimizer.pt", weights_only=True)
    assert saved["auto_ratio"]["steps"] == 20
    auto: Any = controller(first.optimizer)  # inside Accelerate's AcceleratedOptimizer
    assert saved["auto_ratio"]["log2_ratio"] == auto.log2_ratio
    second = trainer(lora_bert(), tmp_path, 30)
    second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-20"))
    assert is_auto(second.optimizer)
    assert controller(second.optimizer).auto_steps == 30  # type: ignore[union-attr]


@pytest.mark.parametrize("signal", ["isotropic", "inputs"])
def test_the_controller_measures_what_the_probe_measures(signal: str) -> None:
    """signal="inputs" sees the probe's δ¹/δ² (real inputs); "isotropic" the Frobenius norms."""
    model = lora_llama()
    loraplus.init_lora_(model, "init2")
    cfg = AutoRatioConfig(every=2, signal=signal)
    opt: Any = loraplus.create_optimizer(model, "adamw", lr=1e-3, ratio="auto", auto_ratio=cfg)
    probe = FeatureUpdateProbe(model)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # steps 0 and 2 measure; step 0 from A = 0 has δ² = 0: no balance
        ids = torch.randint(0, 128, (2, 8), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        probe.snapshot()
        before = [(p.a.detach().clone(), p.b.detach().clone()) for p in opt.auto_ratio.pairs]
        opt.step()
        opt.zero_grad()
    true = {u.layer: u.balance for u in probe.measure()}
    probe.remove()
    for pair, got, (a0, b0) in zip(
        opt.auto_ratio.pairs, opt.auto_ratio.last_balance, before, strict=True
    ):
        if signal == "inputs":
            assert got == pytest.approx(true[pair.layer], abs=1e-4)
        else:
            d1 = torch.linalg.norm(b0 @ (pair.a - a0)).item()
            d2 = torch.linalg.norm((pair.b - b0) @ a0).item()
            assert got == pytest.approx(math.log2(d2 / d1), abs=1e-4)
    assert opt.auto_ratio.auto_inputs == {}  # inputs are dropped once measured


def test_the_controller_is_found_under_any_depth_of_wrappers() -> None:
    """Accelerate wraps DeepSpeed's ZeRO optimizer, which wraps yours: `.optimizer` twice."""
    from types import SimpleNamespace

    opt = loraplus.create_optimizer(lora_llama(), "adamw", lr=1e-3, ratio="auto")
    wrapped = SimpleNamespace(optimizer=SimpleNamespace(optimizer=opt))
    assert is_auto(wrapped) and controller(wrapped) is opt.auto_ratio  # type: ignore[attr-defined]
    assert auto_ratio_logs(wrapped) == auto_ratio_logs(opt) != {}
    assert not is_auto(SimpleNamespace(optimizer=SimpleNamespace(optimizer=None)))


def _group_by_group(opt: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    """Step as DeepSpeed ZeRO-1/2 does: one call per group, the others hidden."""
    original = opt.param_groups
    for group in groups:
        opt.param_groups = [group]
        opt.step()
    opt.param_groups = original


def test_steps_made_one_group_at_a_time_steer_as_one_step() -> None:
    """DeepSpeed calls your optimizer once per param group: one controller step all the same,
    and a group stepped in pieces (ZeRO-3 sub-groups) is refused with the fix."""
    cfg = AutoRatioConfig(every=1, max_step=8.0)
    runs = []
    for per_group in (False, True):
        model = lora_llama()
        loraplus.init_lora_(model, "init2")
        opt: Any = loraplus.create_optimizer(model, "adamw", lr=1e-3, ratio="auto", auto_ratio=cfg)
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            ids = torch.randint(0, 128, (2, 8), generator=g)
            model(input_ids=ids, labels=ids).loss.backward()
            _group_by_group(opt, opt.param_groups) if per_group else opt.step()
            opt.zero_grad()
        runs.append((model, opt))
    (plain, plain_opt), (split, split_opt) = runs
    assert split_opt.auto_ratio.auto_state() == plain_opt.auto_ratio.auto_state()
    assert split_opt.auto_ratio.auto_steps == 3 and len(set(split_opt.ratios().values())) > 1
    for p, q in zip(plain.parameters(), split.parameters(), strict=True):
        assert torch.equal(p, q)
    b_group = next(g for g in split_opt.param_groups if g["role"] == "lora_B")
    halves = [
        {**b_group, "params": b_group["params"][:7]},
        {**b_group, "params": b_group["params"][7:]},
    ]
    with pytest.raises(RuntimeError, match="lora_B group was stepped in pieces.*sub_group_size"):
        _group_by_group(split_opt, halves)


def test_half_precision_adapters_warn_once_with_the_share_of_a_that_did_not_move() -> None:
    model = lora_llama()
    loraplus.init_lora_(model, "init2")  # B ≠ 0: A has a gradient from the first step
    with torch.no_grad():
        for pair in lora_pairs(model):
            pair.a.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    model.half()  # adapters cast to fp16 after get_peft_model
    cfg = AutoRatioConfig(every=1)
    opt: Any = loraplus.create_optimizer(model, "sgd", lr=1e-4, ratio="auto", auto_ratio=cfg)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    before = [p.a.detach().clone() for p in opt.auto_ratio.pairs]
    model(input_ids=ids, labels=ids).loss.float().backward()
    with pytest.warns(UserWarning, match=r"half precision: \d+% of A's entries") as caught:
        opt.step()
    opt.zero_grad()
    still = sum(int((p.a == a0).sum()) for p, a0 in zip(opt.auto_ratio.pairs, before, strict=True))
    share = still / sum(a0.numel() for a0 in before)
    assert f"{share:.0%} of A's entries did not move" in str(caught[0].message)
    model(input_ids=ids, labels=ids).loss.float().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # once per optimizer, not every step
