"""loraplus.train.methods and optim.with_role_lrs: the methods' settings, peft's LoRA-FA and
Riemannian optimizers with a role at its own absolute lr, and those methods in real runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft.optimizers import create_lorafa_optimizer, create_riemannian_optimizer
from test_train import tiny_cls_config, tiny_files  # noqa: F401  (fixture)
from tiny import lora_bert

from loraplus.optim import with_role_lrs
from loraplus.train import make_config, train
from loraplus.train.methods import METHODS, canonical, method_settings

pytestmark = pytest.mark.usefixtures("one_thread")

HEAD_LR = 0.05


def test_method_settings_and_names() -> None:
    assert method_settings("LoRA") == {"ratio": 1.0}
    assert method_settings("loraplus+rslora") == {"ratio": 16.0, "rslora": True}
    assert method_settings("ratio=4") == {"ratio": 4.0}
    assert canonical(" Ratio=4.0 ") == "ratio=4" and canonical("PiSSA") == "pissa"
    with pytest.raises(ValueError, match=r"Unknown method 'dora': use one of lora, loraplus"):
        method_settings("dora")
    with pytest.raises(ValueError, match=r"method 'ratio=x' must be a number"):
        method_settings("ratio=x")
    for name in METHODS:  # every method is a valid TrainConfig
        make_config(**method_settings(name))


def backward(model: Any) -> None:
    """One loss and its gradients on a fixed batch."""
    torch.manual_seed(1)
    ids = torch.randint(0, 100, (4, 8))
    model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0])).loss.backward()


def named(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_lorafa_head_gets_its_own_lr_and_adams_first_step() -> None:
    model = lora_bert(modules_to_save=["classifier"])
    opt = create_lorafa_optimizer(model, r=4, lora_alpha=8, lr=1e-3)
    assert len(opt.param_groups) == 1
    with_role_lrs(opt, model, {"head": HEAD_LR})
    head = [g for g in opt.param_groups if g.get("role") == "head"]
    assert len(opt.param_groups) == 2 and len(head) == 1
    head_name = "base_model.model.classifier.modules_to_save.default.weight"
    assert head[0]["lr"] == HEAD_LR and head[0]["names"] == [head_name]
    for group in opt.param_groups:  # LoRA-FA's per-param lists still line up with the params
        ids = {id(p): n for n, p in model.named_parameters()}
        assert [ids[id(p)] for p in group["params"]] == group["names"]
        assert len(group["scaling_factors"]) == len(group["params"])

    backward(model)
    grad = dict(model.named_parameters())[head_name].grad.clone()
    before = named(model)
    opt.step()
    after = named(model)
    # Adam's first step, by hand: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected step size
    # (LoRA-FA adds eps to sqrt(v) before the correction): lr * g / (|g| + eps / sqrt(1 - b2)).
    b2, eps = head[0]["betas"][1], head[0]["eps"]
    expected = before[head_name] - HEAD_LR * grad / (grad.abs() + eps / (1 - b2) ** 0.5)
    assert torch.allclose(after[head_name], expected, rtol=0, atol=1e-7)
    lora_a = [n for n in before if "lora_A" in n]
    assert lora_a and all(torch.equal(before[n], after[n]) for n in lora_a)  # A is frozen
    with pytest.raises(ValueError, match="before any step"):
        with_role_lrs(opt, model, {"head": 1e-3})


def test_riemannian_lora_updates_are_unchanged_by_the_split() -> None:
    model = lora_bert(modules_to_save=["classifier"])
    with torch.no_grad():  # B != 0, so both factors get a preconditioned gradient
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    twin = copy.deepcopy(model)
    split = with_role_lrs(
        create_riemannian_optimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.0),
        model,
        {"head": HEAD_LR},
    )
    whole = create_riemannian_optimizer(twin, torch.optim.AdamW, lr=1e-3, weight_decay=0.0)
    for m, opt in ((model, split), (twin, whole)):
        backward(m)
        opt.step()
    a, b = named(model), named(twin)
    lora = [n for n in a if "lora_" in n]
    assert lora and all(torch.equal(a[n], b[n]) for n in lora)
    head = "base_model.model.classifier.modules_to_save.default.weight"
    assert not torch.allclose(a[head], b[head])  # lr 0.05 against 1e-3


def test_no_roles_is_a_no_op_and_unknown_roles_are_refused() -> None:
    model = lora_bert()
    opt = create_lorafa_optimizer(model, r=4, lora_alpha=8, lr=1e-3)
    groups = list(opt.param_groups)
    assert with_role_lrs(opt, model, {}) is opt and opt.param_groups == groups
    with pytest.raises(ValueError, match="Unknown role 'classifier'"):
        with_role_lrs(opt, model, {"classifier": 1e-3})


@pytest.mark.slow
def test_peft_methods_in_real_runs(tiny_files: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    fa = train(
        tiny_cls_config(tiny_files, tmp_path / "fa", lora_optimizer="lorafa", lr_roles="head=0.01")
    )
    metrics = json.loads((fa.output_dir / "metrics.json").read_text())
    assert [(g["role"], g["lr"]) for g in metrics["param_groups"]] == [
        ("lorafa", 1e-3),
        ("head", 0.01),
    ]
    from safetensors.torch import load_file

    saved = load_file(fa.output_dir / "adapter" / "adapter_model.safetensors")
    fresh = train(
        tiny_cls_config(tiny_files, tmp_path / "fa0", lora_optimizer="lorafa", max_steps=1, lr=1e-9)
    )
    first = load_file(fresh.output_dir / "adapter" / "adapter_model.safetensors")
    a_keys = [k for k in saved if "lora_A" in k]
    assert a_keys and all(torch.equal(saved[k], first[k]) for k in a_keys)  # A never moved
    assert any(not torch.equal(saved[k], first[k]) for k in saved if "lora_B" in k)

    ps = train(tiny_cls_config(tiny_files, tmp_path / "ps", init="pissa", rslora=True))
    adapter = json.loads((ps.output_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["init_lora_weights"] == "pissa" and adapter["use_rslora"] is True


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lora_optimizer": "galore"}, "lora_optimizer must be one of loraplus, lorafa, riema"),
        ({"lora_optimizer": "lorafa", "ratio": "auto"}, "so --ratio auto cannot apply"),
        ({"lora_optimizer": "riemannian", "width_aware": True}, "so --width-aware cannot apply"),
        ({"lora_optimizer": "lorafa", "init": "init2"}, "lorafa freezes A, and --init init2"),
        ({"lora_optimizer": "lorafa", "optimizer": "sgd"}, "leave --optimizer at adamw_torch"),
        ({"init": "olora"}, "init must be one of init1, init2, pissa"),
        (
            {"lr_multipliers": "head=2", "lr_roles": "head=1e-3"},
            "head is set in both lr_multipliers and lr_roles",
        ),
        ({"width_aware": True, "lr_roles": "lora_A=1e-3"}, "drop lora_A from lr_roles"),
        ({"lr_roles": "classifier=1e-3"}, "Unknown role 'classifier'"),
        ({"early_stopping_patience": -1}, "early_stopping_patience must be >= 0"),
    ],
)
def test_method_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(**settings)
