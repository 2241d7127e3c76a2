"""create_optimizer() and friends: real steps, the PEFT reference, and the known defects."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from peft.optimizers import create_loraplus_optimizer as peft_loraplus
from tiny import lora_bert, lora_llama

import loraplus
from loraplus import create_loraplus_optimizer, create_optimizer, summary
from loraplus.optim import OPTIMIZERS


def randomize_b(model: torch.nn.Module) -> None:
    """B = 0 makes A's gradient zero; give B values so both matrices learn in one step."""
    gen = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                p.normal_(0.0, 0.1, generator=gen)


def one_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ids = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(2))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    opt.step()
    moved = {n: (p.detach() - before[n]) for n, p in model.named_parameters() if p.requires_grad}
    return {"moved": moved, "grads": grads}  # type: ignore[dict-item]


def test_first_adamw_step_moves_b_ratio_times_more_than_a() -> None:
    lr, ratio = 1e-3, 16.0
    model = lora_llama()
    randomize_b(model)
    opt = create_optimizer(model, torch.optim.AdamW, lr=lr, ratio=ratio, weight_decay=0.0)
    out = one_step(model, opt)
    moved, grads = out["moved"], out["grads"]  # type: ignore[index]
    max_a = max(moved[n].abs().max().item() for n in moved if ".lora_A." in n)
    max_b = max(moved[n].abs().max().item() for n in moved if ".lora_B." in n)
    assert max_b / max_a == pytest.approx(ratio, rel=1e-3)
    # Adam's first step is lr * g / (|g| + eps): about lr for every element with |g| >> eps.
    for name, delta in moved.items():
        big = grads[name].abs() > 1e-5
        expected = lr * (ratio if ".lora_B." in name else 1.0)
        ratio_to_expected = delta[big].abs() / expected
        assert ratio_to_expected.min() > 0.9 and ratio_to_expected.max() <= 1.0 + 1e-5
        assert torch.equal(torch.sign(delta[big]), -torch.sign(grads[name][big]))


@pytest.mark.parametrize("impl", [{"fused": True}, {"foreach": True}])
def test_fused_and_foreach_adamw_take_the_same_step(impl: dict[str, bool]) -> None:
    ref, fast = lora_llama(), lora_llama()
    for model in (ref, fast):
        randomize_b(model)
    ref_moved = one_step(ref, create_optimizer(ref, torch.optim.AdamW, lr=1e-3, foreach=False))
    opt = create_optimizer(fast, torch.optim.AdamW, lr=1e-3, **impl)
    assert all(g[next(iter(impl))] for g in opt.param_groups)
    fast_moved = one_step(fast, opt)
    for name, delta in ref_moved["moved"].items():  # type: ignore[attr-defined]
        torch.testing.assert_close(fast_moved["moved"][name], delta, rtol=1e-4, atol=1e-7)  # type: ignore[index]


def lr_by_param(opt: torch.optim.Optimizer) -> dict[int, float]:
    return {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}


def test_agrees_with_peft_on_plain_linear_lora() -> None:
    model = lora_llama()
    ours = create_optimizer(model, torch.optim.AdamW, lr=2e-4, ratio=16)
    ref = peft_loraplus(model, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=16)
    assert lr_by_param(ours) == pytest.approx(lr_by_param(ref))
    compat = create_loraplus_optimizer(model, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=16)
    assert lr_by_param(compat) == pytest.approx(lr_by_param(ref))
    # PEFT's groups in its order; its empty ones only in state_dict(), never in param_groups.
    assert [g["role"] for g in compat.param_groups] == ["lora_A", "lora_B"]
    filled = [g for g in ref.param_groups if g["params"]]
    for ours_group, ref_group in zip(compat.param_groups, filled, strict=True):
        assert [id(p) for p in ours_group["params"]] == [id(p) for p in ref_group["params"]]
        assert ours_group["lr"] == pytest.approx(ref_group["lr"])
    saved, peft_saved = compat.state_dict()["param_groups"], ref.state_dict()["param_groups"]
    assert [g["role"] for g in saved] == ["lora_A", "embedding_A", "lora_B", "vector"]
    assert [g["params"] for g in saved] == [g["params"] for g in peft_saved]
    assert [g["lr"] for g in saved] == pytest.approx([g["lr"] for g in peft_saved])


def test_saved_head_matches_peft_and_is_explained() -> None:
    model = lora_bert(modules_to_save=["classifier"])
    ours = lr_by_param(create_optimizer(model, "adamw", lr=1e-4))
    compat = lr_by_param(create_loraplus_optimizer(model, "adamw", lr=1e-4, loraplus_lr_ratio=16))
    ref = lr_by_param(peft_loraplus(model, torch.optim.AdamW, lr=1e-4, loraplus_lr_ratio=16))
    head = model.base_model.model.classifier.modules_to_save["default"]
    # PEFT trains the head's weight at lr (like A), its bias at ratio * lr (like B); the
    # PEFT-compatible entry keeps that, and create_optimizer gives the weight ratio * lr (role
    # head: at lr a new head starves under LoRA+, README "the head's learning rate").
    assert compat[id(head.weight)] == ref[id(head.weight)] == 1e-4
    assert ours[id(head.weight)] == pytest.approx(1.6e-3)
    for lrs in (ours, compat):
        assert lrs[id(head.bias)] == pytest.approx(ref[id(head.bias)]) == pytest.approx(1.6e-3)


def test_weight_decay_is_kept_not_dropped() -> None:
    model = lora_bert(use_dora=True)
    # PEFT replaces the user's weight_decay with loraplus_weight_decay (default 0).
    ref = peft_loraplus(model, torch.optim.AdamW, lr=1e-4, loraplus_lr_ratio=16, weight_decay=0.1)
    assert {g["weight_decay"] for g in ref.param_groups} == {0.0}
    opt = create_optimizer(model, "adamw", lr=1e-4, weight_decay=0.1)
    wd = {g["role"]: g["weight_decay"] for g in opt.param_groups}
    assert wd == {"lora_A": 0.1, "lora_B": 0.1, "magnitude": 0.0}
    for opt in (
        create_loraplus_optimizer(model, "adamw", lr=1e-4, loraplus_lr_ratio=16, weight_decay=0.1),
        create_loraplus_optimizer(
            model, "adamw", lr=1e-4, loraplus_lr_ratio=16, loraplus_weight_decay=0.1
        ),
    ):
        wd = {g["role"]: g["weight_decay"] for g in opt.param_groups}
        assert wd == {"lora_A": 0.1, "lora_B": 0.1, "magnitude": 0.0}
    with pytest.raises(ValueError, match="disagree; pass only one"):
        create_loraplus_optimizer(
            model,
            "adamw",
            lr=1e-4,
            loraplus_lr_ratio=16,
            weight_decay=0.1,
            loraplus_weight_decay=0.0,
        )


def test_embedding_group_is_filled_and_compat_default_warns() -> None:
    model = lora_bert(target_modules=["query", "word_embeddings"])
    with pytest.warns(UserWarning, match="1e-6.*all but freezes"):
        opt = create_loraplus_optimizer(model, "adamw", lr=1e-4, loraplus_lr_ratio=16)
    lrs = {g["role"]: g["lr"] for g in opt.param_groups}
    assert lrs["embedding_A+embedding_B"] == 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = create_loraplus_optimizer(
            model, "adamw", lr=1e-4, loraplus_lr_ratio=16, loraplus_lr_embedding=5e-4
        )
    assert {g["role"]: g["lr"] for g in opt.param_groups}["embedding_A+embedding_B"] == 5e-4


def test_8bit_state_detected_by_type_keeps_embeddings_32bit() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    model = lora_bert(target_modules=["query", "word_embeddings"])
    # Class named plain "AdamW" with 8-bit state: a name check would miss it.
    opt = create_optimizer(model, bnb.optim.AdamW, lr=1e-4, optim_bits=8, min_8bit_size=16)
    randomize_b(model)
    ids = torch.randint(0, 100, (2, 8))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    opt.step()
    dtypes = {
        g["role"]: {opt.state[p]["state1"].dtype for p in g["params"]} for g in opt.param_groups
    }
    assert dtypes["embedding_A"] == dtypes["embedding_B"] == {torch.float32}
    assert dtypes["lora_A"] == {torch.uint8}


def test_single_lr_optimizers_are_refused() -> None:
    prodigy = pytest.importorskip("prodigyopt")
    with pytest.raises(ValueError, match="Prodigy adapts one step size.*ratio=1"):
        create_optimizer(lora_bert(), prodigy.Prodigy, lr=1.0)


def adafactor_first_step(grad: torch.Tensor) -> torch.Tensor:
    """Adafactor's first update direction by hand (Shazeer & Stern 2018, Alg. 4 and 5, β̂₂ = 0):
    g / sqrt(V̂), V̂ = g² for a vector and R·Cᵀ / mean(R) from the row and column means of g²
    for a matrix; then clipped to RMS <= 1."""
    g2 = grad.double() ** 2 + 1e-30
    if grad.ndim >= 2:
        rows, cols = g2.mean(dim=-1), g2.mean(dim=-2)
        g2 = torch.outer(rows, cols) / rows.mean()
    update = grad.double() / g2.sqrt()
    return update / max(1.0, update.pow(2).mean().sqrt().item())


def test_adafactor_steps_each_group_at_its_own_lr() -> None:
    lr, ratio = 1e-3, 16.0
    model = lora_llama()
    randomize_b(model)
    out = one_step(model, create_optimizer(model, "adafactor", lr=lr, ratio=ratio))
    moved, grads = out["moved"], out["grads"]  # type: ignore[index]
    per_unit: dict[str, list[float]] = {"A": [], "B": []}
    for name, delta in moved.items():
        direction = adafactor_first_step(grads[name])
        expected = lr * (ratio if ".lora_B." in name else 1.0)
        # atol: the fp32 rounding of p - step
        torch.testing.assert_close(delta.double(), -expected * direction, rtol=1e-4, atol=5e-8)
        step = (delta.double().norm() / direction.norm()).item()  # distance per unit direction
        per_unit["B" if ".lora_B." in name else "A"].append(step)
    assert min(per_unit["B"]) / max(per_unit["A"]) == pytest.approx(ratio, rel=1e-4)
    assert max(per_unit["B"]) / min(per_unit["A"]) == pytest.approx(ratio, rel=1e-4)


def test_adafactor_settings_that_ignore_group_lrs_are_refused() -> None:
    model = lora_bert()
    with pytest.raises(ValueError, match=r"scale_parameter=True .* Drop scale_parameter"):
        create_optimizer(model, "adafactor", lr=1e-3, scale_parameter=True)
    with pytest.raises(ValueError, match=r"relative_step=True, warmup_init=True ignores"):
        create_optimizer(model, "adafactor", lr=1e-3, relative_step=True, warmup_init=True)
    with pytest.raises(ValueError, match=r"torch.optim.Adafactor scales every step.*\"adafactor\""):
        create_optimizer(model, torch.optim.Adafactor, lr=1e-3)
    defaults = create_optimizer(model, "adafactor", lr=1e-3, scale_parameter=False).defaults
    assert (defaults["relative_step"], defaults["scale_parameter"]) == (False, False)


def test_strings_in_optimizer_kwargs_are_coerced() -> None:
    opt = create_optimizer(lora_bert(), "adamw", lr="2e-4", eps="1e-6", betas=["0.9", "0.95"])
    assert opt.defaults["eps"] == 1e-6 and opt.defaults["betas"] == (0.9, 0.95)
    with pytest.raises(ValueError, match="eps must be a number, got 'tiny'"):
        create_optimizer(lora_bert(), "adamw", lr=2e-4, eps="tiny")


def test_optimizer_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loraplus.resolve_optimizer("AdamW") is torch.optim.AdamW
    assert loraplus.resolve_optimizer("sgd") is torch.optim.SGD
    with pytest.raises(ValueError, match="Unknown optimizer 'adamx': use one of adamw"):
        loraplus.resolve_optimizer("adamx")
    monkeypatch.setitem(OPTIMIZERS, "fancy", ("no_such_pkg.optim", "Fancy", "no-such-pkg"))
    with pytest.raises(ImportError, match="needs the no-such-pkg package: pip install no-such-pkg"):
        loraplus.resolve_optimizer("fancy")


def test_state_dict_round_trip(tmp_path: Path) -> None:
    model = lora_llama(use_dora=True)
    randomize_b(model)
    opt = create_optimizer(model, "adamw", lr=1e-3, weight_decay=0.01)
    one_step(model, opt)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")

    fresh_model = lora_llama(use_dora=True)
    fresh = create_optimizer(fresh_model, "adamw", lr=1e-3, weight_decay=0.01)
    fresh.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for g_old, g_new in zip(opt.param_groups, fresh.param_groups, strict=True):
        assert (g_old["role"], g_old["lr"], g_old["weight_decay"], g_old["param_names"]) == (
            g_new["role"],
            g_new["lr"],
            g_new["weight_decay"],
            g_new["param_names"],
        )
        for p_old, p_new in zip(g_old["params"], g_new["params"], strict=True):
            torch.testing.assert_close(opt.state[p_old]["exp_avg"], fresh.state[p_new]["exp_avg"])


def test_summary_table() -> None:
    model = lora_bert(modules_to_save=["classifier"])
    opt = create_optimizer(model, "adamw", lr=1e-4, weight_decay=0.01)
    lines = summary(opt).splitlines()
    assert lines[0].split() == ["role", "tensors", "parameters", "lr", "weight", "decay"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    a_params = [p for n, p in model.named_parameters() if ".lora_A." in n]
    assert rows["lora_A"] == [
        str(len(a_params)),
        f"{sum(p.numel() for p in a_params):,}",
        "0.0001",
        "0.01",
    ]
    assert rows["lora_B"][2] == "0.0016"
    assert rows["vector"] == ["1", "3", "0.0016", "0"]


def test_summary_after_a_schedule_says_it_ended() -> None:
    from transformers import get_linear_schedule_with_warmup

    opt = create_optimizer(lora_bert(), "adamw", lr=1e-4)
    schedule = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=4)
    before = summary(opt)
    assert "lr now" not in before  # a scheduler alone changes nothing yet
    opt.step()
    schedule.step()  # 3/4 of the way left
    during = summary(opt).splitlines()
    assert during[0].split() == [
        "role",
        "tensors",
        "parameters",
        "lr",
        "lr",
        "now",
        "weight",
        "decay",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in during[2:-1]}
    assert rows["lora_A"][2:4] == ["0.0001", "7.5e-05"] and rows["lora_B"][2:4] == [
        "0.0016",
        "0.0012",
    ]
    assert during[-1] == "lr now: the lr scheduler's current value (lr: each group's lr before it)"
    for _ in range(3):
        opt.step()
        schedule.step()
    ended = summary(opt).splitlines()
    assert {line.split()[4] for line in ended[2:-1]} == {"0"}
    assert ended[-1] == (
        "lr now is 0: the lr schedule has ended (lr: each group's lr before the schedule)"
    )


def test_accelerate_prepare_keeps_roles_and_rates() -> None:
    from accelerate import Accelerator

    model = lora_llama()
    randomize_b(model)
    opt = create_optimizer(model, "adamw", lr=1e-3, ratio=16, weight_decay=0.01)
    accelerator = Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, opt)
    lrs = {g["role"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"lora_A": 1e-3, "lora_B": pytest.approx(1.6e-2)}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    accelerator.backward(model(input_ids=ids, labels=ids).loss)
    opt.step()
    moved = {
        n: (p.detach() - before[n]).abs().max().item()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    max_a = max(v for n, v in moved.items() if ".lora_A." in n)
    max_b = max(v for n, v in moved.items() if ".lora_B." in n)
    assert max_b / max_a == pytest.approx(16, rel=0.05)


def first_adam_step_by_group(
    model: torch.nn.Module, opt: torch.optim.Optimizer
) -> list[tuple[str, float]]:
    """(role, largest move) per group: Adam's first step moves by lr · |g| / (|g| + eps)."""
    moved = one_step(model, opt)["moved"]
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        (g["role"], max(moved[names[id(p)]].abs().max().item() for p in g["params"]))  # type: ignore[index]
        for g in opt.param_groups
    ]


def test_new_token_rows_and_adalora_singular_values_step_at_ratio_lr() -> None:
    from peft import AdaLoraConfig, get_peft_model
    from tiny import tiny_llama

    seen = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(2))  # one_step's
    rows = seen.flatten()[:2].tolist()
    tokens = lora_llama(target_modules=["q_proj"], trainable_token_indices=rows)
    randomize_b(tokens)
    opt = create_optimizer(tokens, "adamw", lr=1e-3, ratio=8, weight_decay=0.0)
    steps = dict(first_adam_step_by_group(tokens, opt))
    assert steps == pytest.approx({"lora_A": 1e-3, "lora_B": 8e-3, "tokens": 8e-3}, rel=1e-3)

    cfg = AdaLoraConfig(init_r=6, target_modules=["q_proj", "v_proj"], total_step=10)
    adalora = get_peft_model(tiny_llama(), cfg)
    opt = create_optimizer(adalora, "adamw", lr=1e-3, ratio=8, weight_decay=0.0)
    steps = dict(first_adam_step_by_group(adalora, opt))
    # AdaLoRA starts with lora_E = 0, so only lora_E has a gradient on the first step.
    assert steps["singular"] == pytest.approx(8e-3, rel=1e-3)


def test_width_aware_first_step_and_summary() -> None:
    model = lora_llama()
    randomize_b(model)
    opt = create_optimizer(model, "adamw", lr=1e-3, ratio=16, width_aware=True, n_ref=32)
    steps = [step for _, step in first_adam_step_by_group(model, opt)]
    assert steps == pytest.approx([1e-3, 5e-4, 1.6e-2], rel=1e-3)
    lines = summary(opt).splitlines()
    assert lines[0].split() == ["role", "fan-in", "tensors", "parameters", "lr", "weight", "decay"]
    assert [line.split()[:3] for line in lines[2:]] == [
        ["lora_A", "32", "12"],
        ["lora_A", "64", "2"],
        ["lora_B", "-", "14"],
    ]


@pytest.mark.parametrize(
    "lora",
    [
        {},
        {"target_modules": ["query", "word_embeddings"], "modules_to_save": ["classifier"]},
        {
            "target_modules": ["query", "value"],
            "lora_bias": True,
            "modules_to_save": ["classifier"],
        },
    ],
)
def test_optimizer_state_saved_with_peft_loads(lora: dict[str, object], tmp_path: Path) -> None:
    model = lora_bert(**lora)
    randomize_b(model)
    kw = {"lr": 1e-3, "loraplus_lr_ratio": 16, "loraplus_lr_embedding": 1e-4}
    ref = peft_loraplus(model, torch.optim.AdamW, loraplus_weight_decay=0.01, **kw)
    ids = torch.randint(0, 100, (4, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    ref.step()
    torch.save(ref.state_dict(), tmp_path / "peft.pt")

    ours = create_loraplus_optimizer(model, torch.optim.AdamW, weight_decay=0.01, **kw)
    ours.load_state_dict(torch.load(tmp_path / "peft.pt", weights_only=True))
    assert len(ref.state) == len(ours.state) == sum(p.requires_grad for p in model.parameters())
    for p, state in ref.state.items():
        assert set(ours.state[p]) == set(state)
        for key, value in state.items():
            assert torch.equal(ours.state[p][key], value), key
    assert all(g["params"] for g in ours.param_groups)  # no empty group reaches a scheduler

    # ... and back: ours, one step on, loads into PEFT's builder (its empty groups included).
    ours.step()
    torch.save(ours.state_dict(), tmp_path / "ours.pt")
    back = peft_loraplus(model, torch.optim.AdamW, loraplus_weight_decay=0.01, **kw)
    back.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True))
    assert [g["lr"] for g in back.param_groups] == [g["lr"] for g in ref.param_groups]
    again = create_loraplus_optimizer(model, torch.optim.AdamW, weight_decay=0.01, **kw)
    again.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True))  # and ours again
    for p, state in ours.state.items():
        for key, value in state.items():
            assert torch.equal(back.state[p][key], value), key
            assert torch.equal(again.state[p][key], value), key


def test_peft_state_of_a_dora_model_does_not_load() -> None:
    """PEFT decays DoRA magnitudes (its groupB); LoRA+ never does, so the groups differ."""
    model = lora_bert(use_dora=True)
    ref = peft_loraplus(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)
    ours = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)
    assert [len(g["params"]) for g in ref.param_groups] == [13, 0, 26, 0]
    assert [len(g["params"]) for g in ours.param_groups] == [13, 13, 13]
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        ours.load_state_dict(ref.state_dict())


def test_compat_refuses_what_peft_groups_cannot_hold() -> None:
    model = lora_bert(modules_to_save=["classifier"])
    with pytest.raises(ValueError, match="which PEFT's four groups cannot hold"):
        create_loraplus_optimizer(model, "adamw", lr=1e-3, loraplus_lr_ratio=16, width_aware=True)
    with pytest.raises(ValueError, match="puts lora_A and head in one group"):
        create_loraplus_optimizer(
            model, "adamw", lr=1e-3, loraplus_lr_ratio=16, lr_multipliers={"head": 4}
        )


def test_learning_rates_that_overflow_after_multiplication_are_refused() -> None:
    model = lora_llama()
    with pytest.raises(ValueError, match=r"lora_B .* inf \(lr 1e\+300 x ratio 1e\+10"):
        create_optimizer(model, lr=1e300, ratio=1e10)
    with pytest.raises(ValueError, match=r"vector learning rate is inf .*multiplier 1e\+300"):
        create_optimizer(model, lr=1e10, ratio=1, lr_multipliers={"vector": 1e300})
    with pytest.raises(ValueError, match="lora_B learning rate is inf"):
        create_loraplus_optimizer(model, "adamw", lr=1e300, loraplus_lr_ratio=1e10)
    with pytest.raises(ValueError, match="lora_B learning rate is inf"):
        create_optimizer(model, lr=1e308, ratio="auto")  # x its starting ratio 16
    with pytest.raises(ValueError, match=r"lora_A learning rate of fan-in 32 is inf"):
        create_optimizer(model, lr=1e300, ratio=1, width_aware=True, n_ref=1e10)
    opt = create_optimizer(model, lr=1e300, ratio=1)  # large but finite: the user's call
    assert {g["lr"] for g in opt.param_groups} == {1e300}
