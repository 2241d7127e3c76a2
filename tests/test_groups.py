"""param_groups(): the LoRA+ policy turned into torch param groups."""

from __future__ import annotations

import pytest
from tiny import lora_bert, lora_llama, tiny_llama

from loraplus import POLICY, Role, param_groups, role_lrs


def by_role(groups: list[dict]) -> dict[str, dict]:
    return {g["role"]: g for g in groups}


def test_default_policy_lrs() -> None:
    lrs = role_lrs(1e-4, ratio=16.0)
    assert lrs[Role.LORA_A] == 1e-4
    assert lrs[Role.OTHER] == 1e-4
    for role in (
        Role.LORA_B,
        Role.EMBEDDING_A,
        Role.EMBEDDING_B,
        Role.MAGNITUDE,
        Role.SINGULAR,
        Role.TOKENS,
        Role.VECTOR,
    ):
        assert lrs[role] == pytest.approx(16e-4)
    assert set(POLICY) == set(Role)


def test_ratio_one_is_standard_lora() -> None:
    assert set(role_lrs(3e-4, ratio=1.0).values()) == {3e-4}


def test_groups_cover_each_trainable_tensor_once() -> None:
    model = lora_bert(target_modules=["query", "word_embeddings"], modules_to_save=["classifier"])
    groups = param_groups(model, lr=1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable)
    for g in groups:
        assert len(g["param_names"]) == len(g["params"])
        assert set(g) == {"params", "param_names", "role", "lr", "weight_decay"}


def test_weight_decay_applies_to_matrices_not_vectors() -> None:
    model = lora_bert(use_dora=True, modules_to_save=["classifier"])
    groups = by_role(param_groups(model, lr=1e-4, weight_decay=0.05))
    for role in ("lora_A", "lora_B", "head"):
        assert groups[role]["weight_decay"] == 0.05
    for role in ("vector", "magnitude"):
        assert groups[role]["weight_decay"] == 0.0


def test_embedding_a_and_b_share_one_rate() -> None:
    model = lora_bert(target_modules=["query", "word_embeddings"])
    groups = by_role(param_groups(model, lr=1e-4, ratio=8))
    assert groups["embedding_A"]["params"] and groups["embedding_B"]["params"]
    assert groups["embedding_A"]["lr"] == groups["embedding_B"]["lr"] == pytest.approx(8e-4)
    groups = by_role(param_groups(model, lr=1e-4, lr_embedding=5e-5))
    assert groups["embedding_A"]["lr"] == groups["embedding_B"]["lr"] == 5e-5


def test_lr_multipliers_override() -> None:
    model = lora_bert(modules_to_save=["classifier"])
    groups = by_role(param_groups(model, lr=1e-4, lr_multipliers={"vector": 1.0, Role.HEAD: 4}))
    assert groups["vector"]["lr"] == pytest.approx(1e-4)
    assert groups["head"]["lr"] == pytest.approx(4e-4)
    assert groups["lora_B"]["lr"] == pytest.approx(16e-4)
    with pytest.raises(ValueError, match="Unknown role 'bias': use one of lora_A"):
        param_groups(model, lr=1e-4, lr_multipliers={"bias": 1.0})


def test_lr_roles_are_absolute() -> None:
    model = lora_bert(modules_to_save=["classifier"])
    for lr, ratio in ((1e-4, 16), (3e-3, 1)):  # the head's lr whatever lr and ratio are
        groups = by_role(param_groups(model, lr=lr, ratio=ratio, lr_roles={"head": 2e-3}))
        assert groups["head"]["lr"] == 2e-3
        assert groups["lora_A"]["lr"] == lr and groups["lora_B"]["lr"] == pytest.approx(ratio * lr)
    assert (
        role_lrs(1e-4, 16, lr_multipliers={"vector": 2}, lr_roles={"other": 0.0})[Role.OTHER] == 0.0
    )
    with pytest.raises(ValueError, match="head is set in both lr_multipliers and lr_roles"):
        param_groups(model, lr=1e-4, lr_multipliers={"head": 2}, lr_roles={Role.HEAD: 1e-3})
    with pytest.raises(ValueError, match="width_aware sets lora_A's lr per layer"):
        param_groups(model, lr=1e-4, width_aware=True, lr_roles={"lora_A": 1e-3})
    with pytest.raises(ValueError, match=r"lr_roles\['other'\] must be >= 0"):
        param_groups(model, lr=1e-4, lr_roles={"other": -1})


def test_numbers_as_strings_are_coerced() -> None:
    groups = by_role(param_groups(lora_bert(), lr="2e-4", ratio="16", weight_decay="0.01"))
    assert groups["lora_B"]["lr"] == pytest.approx(3.2e-3)
    assert isinstance(groups["lora_A"]["lr"], float)
    assert groups["lora_A"]["weight_decay"] == 0.01


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0}, "lr must be > 0"),
        ({"lr": -1e-4}, "lr must be > 0"),
        ({"lr": 1e-4, "ratio": 0}, "ratio must be > 0"),
        ({"lr": "fast"}, "lr must be a number, got 'fast'"),
        ({"lr": float("nan")}, "lr must be finite"),
        ({"lr": True}, "boolean"),
        ({"lr": 1e-4, "weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"lr": 1e-4, "lr_embedding": "1e-6x"}, "lr_embedding must be a number"),
    ],
)
def test_bad_numbers_are_refused_clearly(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        param_groups(lora_bert(), **kwargs)


def test_token_rows_train_at_ratio_lr_with_decay() -> None:
    model = lora_llama(target_modules=["q_proj"], trainable_token_indices=[3, 5])
    groups = by_role(param_groups(model, lr=1e-4, ratio=8, weight_decay=0.1))
    tokens = groups["tokens"]
    assert tokens["param_names"] == [
        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.default"
    ]
    assert tokens["lr"] == pytest.approx(8e-4) and tokens["weight_decay"] == 0.1


def test_adalora_singular_values_train_at_ratio_lr_without_decay() -> None:
    from peft import AdaLoraConfig, get_peft_model

    cfg = AdaLoraConfig(init_r=6, target_modules=["q_proj"], total_step=10)
    groups = by_role(param_groups(get_peft_model(tiny_llama(), cfg), lr=1e-4, weight_decay=0.1))
    assert groups["singular"]["lr"] == pytest.approx(16e-4)
    assert groups["singular"]["weight_decay"] == 0.0
    assert len(groups["singular"]["params"]) == 2
    assert (groups["lora_A"]["lr"], groups["lora_A"]["weight_decay"]) == (1e-4, 0.1)


def test_width_aware_lr_a_follows_each_fan_in() -> None:
    # tiny_llama: hidden 32, intermediate 64, so down_proj's A has fan-in 64, the other six 32.
    model = lora_llama()
    groups = param_groups(model, lr=1e-3, ratio=16, width_aware=True)
    rows = [(g["role"], g["fan_in"], len(g["params"]), g["lr"]) for g in groups]
    # n_ref = median of the 14 A fan-ins (12 x 32, 2 x 64) = 32: lr_A = 1e-3 * 32 / fan-in.
    assert rows == [
        ("lora_A", 32, 12, pytest.approx(1e-3)),
        ("lora_A", 64, 2, pytest.approx(5e-4)),
        ("lora_B", None, 14, pytest.approx(1.6e-2)),
    ]
    assert all(".down_proj.lora_A." in n for n in groups[1]["param_names"])
    explicit = param_groups(model, lr=1e-3, width_aware=True, n_ref="64")
    assert [g["lr"] for g in explicit] == pytest.approx([2e-3, 1e-3, 1.6e-2])
    assert "fan_in" not in param_groups(model, lr=1e-3)[0]


def test_width_aware_fan_in_of_conv_and_adalora_comes_from_the_module() -> None:
    from peft import AdaLoraConfig, LoraConfig, get_peft_model
    from torch import nn

    convs = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1))
    conv = get_peft_model(convs, LoraConfig(r=2, target_modules=["0", "2"]))
    fan_ins = [g["fan_in"] for g in param_groups(conv, lr=1e-3, width_aware=True)]
    assert fan_ins == [8, 27, None]  # 8 channels x 1 x 1, and 3 channels x 3 x 3
    cfg = AdaLoraConfig(init_r=6, target_modules=["q_proj", "down_proj"], total_step=10)
    adalora = get_peft_model(tiny_llama(), cfg)  # A held as bare (r, n) tensors
    groups = param_groups(adalora, lr=1e-3, width_aware=True)
    assert [(g["role"], g["fan_in"]) for g in groups][:2] == [("lora_A", 32), ("lora_A", 64)]
    for p in groups[0]["params"] + groups[1]["params"]:
        p.data = p.data.flatten()  # as FSDP1 shards them: the LoRA layer still knows its width
    flat = param_groups(adalora, lr=1e-3, width_aware=True)
    assert [(g["role"], g["fan_in"], g["param_names"]) for g in flat] == [
        (g["role"], g["fan_in"], g["param_names"]) for g in groups
    ]


def test_n_ref_needs_width_aware() -> None:
    with pytest.raises(ValueError, match="n_ref only applies with width_aware=True"):
        param_groups(lora_bert(), lr=1e-4, n_ref=4096)
    with pytest.raises(ValueError, match="n_ref must be > 0"):
        param_groups(lora_bert(), lr=1e-4, width_aware=True, n_ref=0)
