"""param_groups(): the LoRA+ policy turned into torch param groups."""

from __future__ import annotations

import pytest
from tiny import lora_bert

from loraplus import POLICY, Role, param_groups, role_lrs


def by_role(groups: list[dict]) -> dict[str, dict]:
    return {g["role"]: g for g in groups}


def test_default_policy_lrs() -> None:
    lrs = role_lrs(1e-4, ratio=16.0)
    assert lrs[Role.LORA_A] == 1e-4
    assert lrs[Role.OTHER] == 1e-4
    for role in (Role.LORA_B, Role.EMBEDDING_A, Role.EMBEDDING_B, Role.MAGNITUDE, Role.VECTOR):
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
    for role in ("lora_A", "lora_B", "other"):
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
    groups = by_role(param_groups(model, lr=1e-4, lr_multipliers={"vector": 1.0, Role.OTHER: 4}))
    assert groups["vector"]["lr"] == pytest.approx(1e-4)
    assert groups["other"]["lr"] == pytest.approx(4e-4)
    assert groups["lora_B"]["lr"] == pytest.approx(16e-4)
    with pytest.raises(ValueError, match="Unknown role 'bias': use one of lora_A"):
        param_groups(model, lr=1e-4, lr_multipliers={"bias": 1.0})


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
