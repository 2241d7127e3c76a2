"""loraplus.settings: the LoRA+ settings, declared and validated once, and every consumer's view."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest
import torch
from tiny import lora_bert, lora_llama
from transformers import HfArgumentParser

from loraplus import LoraPlusSettings, Role, create_optimizer, param_groups
from loraplus._config import DataclassParser
from loraplus.autoratio import AutoRatioConfig, controller
from loraplus.hf import TRAINER_NAMES, LoraPlusTrainingArguments
from loraplus.hf.arguments import ARGUMENT_SETTINGS, MIXIN_SETTINGS
from loraplus.optim import create_loraplus_optimizer
from loraplus.settings import FIELDS, SettingsError, as_settings
from loraplus.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_values_are_normalized_once() -> None:
    s = LoraPlusSettings(
        lr="2e-4",
        ratio="16",
        lr_embedding="1e-5",
        lr_multipliers={Role.VECTOR: "1"},
        lr_roles={"head": 0},
        width_aware=True,
        n_ref="64",
    )
    assert (s.lr, s.ratio, s.lr_embedding, s.n_ref) == (2e-4, 16.0, 1e-5, 64.0)
    assert s.lr_multipliers == {"vector": 1.0} and s.lr_roles == {"head": 0.0}
    auto = LoraPlusSettings(lr=1e-4, ratio=" AUTO ")
    assert auto.ratio == "auto" and auto.auto_config == AutoRatioConfig() and s.auto_config is None
    assert auto.start_ratio == 16.0 and s.start_ratio == 16.0


@pytest.mark.parametrize(
    ("values", "message", "fields"),
    [
        ({"lr": 0}, r"^lr must be > 0, got 0\.$", ("lr",)),
        ({"lr": "fast"}, "^lr must be a number, got 'fast' \\(str\\)", ("lr",)),
        ({"lr": math.nan}, "^lr must be finite, got nan", ("lr",)),
        ({"lr": True}, "^lr must be a number, got the boolean True", ("lr",)),
        ({"ratio": -1}, r"^ratio must be > 0, got -1\.$", ("ratio",)),
        ({"ratio": math.inf}, "^ratio must be finite, got inf", ("ratio",)),
        ({"ratio": "fast"}, "^ratio must be a number, got 'fast'", ("ratio",)),
        ({"lr_embedding": -1e-6}, "^lr_embedding must be > 0", ("lr_embedding",)),
        (
            {"lr_multipliers": {"bias": 1}},
            "^Unknown role 'bias': use one of lora_A, lora_B",
            ("lr_multipliers",),
        ),
        (
            {"lr_multipliers": [("vector", 1)]},
            r"^lr_multipliers must be a dict such as \{'vector': 1.0\}",
            ("lr_multipliers",),
        ),
        (
            {"lr_multipliers": {"vector": -1}},
            r"^lr_multipliers\['vector'\] must be >= 0",
            ("lr_multipliers",),
        ),
        ({"lr_roles": {"other": "x"}}, r"^lr_roles\['other'\] must be a number", ("lr_roles",)),
        (
            {"lr_multipliers": {"head": 2}, "lr_roles": {"head": 1e-3}},
            "^head is set in both lr_multipliers and lr_roles",
            ("lr_multipliers", "lr_roles", "width_aware"),
        ),
        (
            {"width_aware": True, "lr_roles": {"lora_A": 1e-3}},
            "^width_aware sets lora_A's lr per layer: drop lora_A from lr_roles",
            ("lr_multipliers", "lr_roles", "width_aware"),
        ),
        (
            {"n_ref": 4096},
            "^n_ref only applies with width_aware=True: pass both, or neither",
            ("n_ref", "width_aware"),
        ),
        ({"width_aware": True, "n_ref": 0}, "^n_ref must be > 0", ("n_ref", "width_aware")),
        ({"init": "kaiming"}, "^init='kaiming': use 'init1'", ("init",)),
        (
            {"ratio": "auto", "width_aware": True},
            "^ratio='auto' sets lr_B per layer; use it without width_aware/n_ref",
            ("ratio", "width_aware", "n_ref"),
        ),
        (
            {"ratio": "auto", "lr_roles": {"lora_B": 1e-3}},
            "^ratio='auto' sets lora_B's learning rate itself; drop lora_B from lr_roles",
            ("ratio", "lr_roles"),
        ),
        (
            {"auto_ratio": AutoRatioConfig(start=4)},
            "^auto_ratio=... configures ratio='auto'; pass ratio='auto' with it",
            ("auto_ratio", "ratio"),
        ),
        (
            {"ratio": "auto", "auto_ratio": {"start": 4}},
            "^auto_ratio must be an AutoRatioConfig",
            ("auto_ratio",),
        ),
    ],
)
def test_each_bad_setting_is_refused_once_naming_its_fields(
    values: dict[str, Any], message: str, fields: tuple[str, ...]
) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        LoraPlusSettings(**{"lr": 1e-4, **values})
    assert caught.value.fields == fields
    # every consumer refuses it with the same words: the optimizer builder and its keywords ...
    with pytest.raises(ValueError, match=message):
        create_optimizer(lora_bert(), "adamw", **{"lr": 1e-4, **values})
    # ... and the Trainer's arguments, naming its own fields first
    named = {TRAINER_NAMES[k]: v for k, v in values.items() if k != "auto_ratio"}
    if "auto_ratio" not in values:
        trainer_names = ", ".join(TRAINER_NAMES[f] for f in fields)
        with pytest.raises(ValueError, match=f"^{trainer_names}: {message.lstrip('^')}"):
            LoraPlusTrainingArguments(output_dir="unused", **{"learning_rate": 1e-4, **named})


def test_unknown_or_missing_settings_are_type_errors() -> None:
    with pytest.raises(TypeError, match="LoRA\\+ needs lr=... \\(lr_A\\)"):
        as_settings(ratio=4)
    with pytest.raises(TypeError, match="Unknown LoRA\\+ setting\\(s\\) rate: use lr, ratio"):
        as_settings(lr=1e-4, rate=4)
    with pytest.raises(TypeError, match="settings must be a LoraPlusSettings, got dict"):
        as_settings({"lr": 1e-4})  # type: ignore[arg-type]


def _rows(groups: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (g["role"], g.get("fan_in"), g["param_names"], g["lr"], g["weight_decay"]) for g in groups
    ]


def test_keyword_form_equals_object_form() -> None:
    model = lora_llama()
    keywords: dict[str, Any] = {
        "lr": 1e-3,
        "ratio": 8,
        "lr_multipliers": {"vector": 1},
        "width_aware": True,
        "n_ref": 64,
    }
    settings = LoraPlusSettings(**keywords)
    by_object = param_groups(model, settings, weight_decay=0.1)
    assert _rows(by_object) == _rows(param_groups(model, weight_decay=0.1, **keywords))
    # lr_A = 1e-3 * 64 / fan-in (32 or 64); lora_B = 8 * 1e-3
    assert [(g["role"], g.get("fan_in"), g["lr"]) for g in by_object] == [
        ("lora_A", 32, pytest.approx(2e-3)),
        ("lora_A", 64, pytest.approx(1e-3)),
        ("lora_B", None, pytest.approx(8e-3)),
    ]
    assert _rows(param_groups(model, 1e-3, ratio=8)) == _rows(param_groups(model, lr=1e-3, ratio=8))
    opt_kw = create_optimizer(model, "sgd", weight_decay=0.1, momentum=0.9, **keywords)
    opt_obj = create_optimizer(model, "sgd", settings, weight_decay=0.1, momentum=0.9)
    assert _rows(opt_kw.param_groups) == _rows(opt_obj.param_groups) == _rows(by_object)
    assert {g["momentum"] for g in opt_obj.param_groups} == {0.9}  # the rest: the optimizer's
    # keywords on top of an object win (one validation: the object's)
    wider = create_optimizer(model, "adamw", settings, ratio=2, n_ref=32)
    assert [g["lr"] for g in wider.param_groups] == pytest.approx([1e-3, 5e-4, 2e-3])
    with pytest.raises(ValueError, match="ratio must be > 0"):
        create_optimizer(model, "adamw", settings, ratio=0)


def test_auto_from_the_object_and_refused_where_no_controller_runs() -> None:
    model = lora_llama()
    settings = LoraPlusSettings(lr=1e-3, ratio="auto", auto_ratio=AutoRatioConfig(start=4))
    opt = create_optimizer(model, "adamw", settings)
    found = controller(opt)
    assert found is not None and found.auto.start == 4
    lora_b = next(g for g in opt.param_groups if g["role"] == "lora_B")
    assert lora_b["lr"] == pytest.approx(4e-3)
    with pytest.raises(ValueError, match="ratio='auto' needs its controller: use"):
        param_groups(model, settings)
    fixed = as_settings(settings, ratio=8, auto_ratio=None)  # keywords on top of an auto object
    assert create_optimizer(model, "adamw", fixed).param_groups[-1]["lr"] == pytest.approx(8e-3)
    assert controller(create_optimizer(model, "adamw", fixed)) is None
    with pytest.raises(ValueError, match="loraplus_lr_ratio='auto' needs its controller"):
        create_loraplus_optimizer(model, "adamw", lr=1e-3, loraplus_lr_ratio="auto")


def test_init_is_applied_by_create_optimizer_only_once_every_check_passed() -> None:
    model = lora_bert()
    a_before = {n: p.clone() for n, p in model.named_parameters() if "lora_A" in n}
    with pytest.raises(ValueError, match="Unknown optimizer"):
        create_optimizer(model, "adamx", lr=1e-3, init="init2")
    assert all(torch.equal(p, a_before[n]) for n, p in model.named_parameters() if n in a_before)
    param_groups(model, lr=1e-3, init="init2")  # pure: the groups only
    assert all(torch.equal(p, a_before[n]) for n, p in model.named_parameters() if n in a_before)
    create_optimizer(model, "adamw", lr=1e-3, init="init2")
    named = dict(model.named_parameters())
    assert all(not p.any() for n, p in named.items() if "lora_A" in n)  # Init[2]: A = 0
    assert all(p.any() for n, p in named.items() if "lora_B" in n)


# --- every consumer's fields are the settings' fields ---------------------------------------


def _field(cls: type, name: str) -> dataclasses.Field[Any]:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _declared(cls: type, name: str) -> tuple[Any, Any]:
    f = _field(cls, name)
    return f.default, f.metadata.get("help")


SETTINGS = {f.name: (f.default, f.metadata["help"]) for f in dataclasses.fields(LoraPlusSettings)}


def test_trainer_names_cover_every_setting_and_fields_are_the_settings() -> None:
    """Fails when a setting is added without its Trainer name, or a Trainer field is declared
    with its own default or help (declared again instead of derived)."""
    assert tuple(TRAINER_NAMES) == FIELDS
    assert set(MIXIN_SETTINGS) == set(FIELDS) - {"lr"}  # lr: args.learning_rate
    assert set(ARGUMENT_SETTINGS) == set(MIXIN_SETTINGS) - {"auto_ratio"}  # no flag form
    own = {f.name for f in dataclasses.fields(LoraPlusTrainingArguments)} - {
        f.name for f in dataclasses.fields(LoraPlusTrainingArguments.__mro__[1])
    }
    assert own == {TRAINER_NAMES[n] for n in ARGUMENT_SETTINGS}
    for name in ARGUMENT_SETTINGS:
        assert _declared(LoraPlusTrainingArguments, TRAINER_NAMES[name]) == SETTINGS[name], name


def test_train_config_fields_are_the_settings() -> None:
    """TrainConfig declares each setting (but auto_ratio, a Python object) with the settings'
    default and help; its only own choices: a default lr, and init's default and pissa."""
    names = set(FIELDS) - {"auto_ratio"}
    assert names <= {f.name for f in dataclasses.fields(TrainConfig)}
    init_help = _field(TrainConfig, "init").metadata["help"]
    assert "pissa" in init_help
    own = {"lr": (2e-4, SETTINGS["lr"][1]), "init": ("init1", init_help)}
    for name in names:
        assert _declared(TrainConfig, name) == own.get(name, SETTINGS[name]), name
    cfg = TrainConfig(
        lr=1e-3, ratio="4", lr_multipliers=["vector=1"], width_aware=True, n_ref=32, init="init2"
    )
    assert cfg.settings() == LoraPlusSettings(
        lr=1e-3, ratio=4, lr_multipliers={"vector": 1}, width_aware=True, n_ref=32, init="init2"
    )
    assert TrainConfig(init="pissa").settings().init is None  # peft's own init, set at load
    with pytest.raises(ValueError, match="ratio='auto' sets lr_B per layer"):
        TrainConfig(ratio="auto", width_aware=True)  # refused before anything loads


def test_every_setting_is_a_flag_with_its_help_and_default() -> None:
    hf_help = HfArgumentParser(LoraPlusTrainingArguments).format_help()
    cli_help = DataclassParser(TrainConfig).format_help()
    hf_help, cli_help = " ".join(hf_help.split()), " ".join(cli_help.split())
    for name in ARGUMENT_SETTINGS:  # each flag's help opens with its field's help
        flag = "--" + TRAINER_NAMES[name].replace("_", "-")
        hf_text = re.escape(" ".join(SETTINGS[name][1].split()[:4]))
        assert re.search(f"{flag} \\S+ {hf_text}", hf_help), name
        cli_text = " ".join(_field(TrainConfig, name).metadata["help"].split()[:4])
        assert f"--{name.replace('_', '-')}" in cli_help and cli_text in cli_help, name
    assert "(default: 16)" in " ".join(cli_help.split())  # --ratio
    (args,) = HfArgumentParser(LoraPlusTrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir=unused",
            "--loraplus_width_aware=true",
            "--loraplus_n_ref=64",
            '--loraplus_lr_multipliers={"vector": 1}',
            "--lora_init=init2",
        ]
    )
    assert (args.loraplus_width_aware, args.loraplus_n_ref, args.lora_init) == (True, 64.0, "init2")
    assert args.loraplus_lr_multipliers == {"vector": 1.0}


def test_the_trainers_old_copy_of_the_settings_names_the_new_home() -> None:
    import loraplus.hf

    with pytest.raises(
        AttributeError, match=r"LoraPlusConfig is gone: .* loraplus.LoraPlusSettings"
    ):
        _ = loraplus.hf.LoraPlusConfig
