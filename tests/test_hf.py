"""loraplus.hf: Trainer / TRL integration, DeepSpeed and resume guards, per-role lr logs, the
feature-update probe's callback."""

from __future__ import annotations

import json
import math
import statistics
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from datasets import Dataset
from tiny import lora_bert, lora_llama
from transformers import Trainer, TrainerCallback, TrainingArguments

from loraplus import LoraPlusSettings
from loraplus.hf import (
    FeatureUpdateCallback,
    LoraPlusLogCallback,
    LoraPlusMixin,
    LoraPlusTrainer,
    LoraPlusTrainingArguments,
    check_deepspeed_config,
    compare_param_groups,
    deepspeed_config,
    loraplus_optimizer_for,
    read_checkpoint_param_groups,
)
from loraplus.verdicts import kind_scalars

LR = 5e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def cls_data(n: int = 16, length: int = 8) -> Dataset:
    """A learnable classification set: the label is the first token mod 3."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (n, length), generator=gen)
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": torch.ones_like(ids).tolist(),
            "labels": (ids[:, 0] % 3).tolist(),
        }
    )


def targs(tmp_path: Path, cls: type = LoraPlusTrainingArguments, **kw: Any) -> Any:
    base: dict[str, Any] = {
        "output_dir": str(tmp_path),
        "use_cpu": True,
        "per_device_train_batch_size": 8,
        "learning_rate": LR,
        "max_steps": 6,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "seed": 0,
    }
    base.update(kw)
    return cls(**base)


def groups(optimizer: Any) -> dict[str, dict[str, Any]]:
    return {g["role"]: g for g in optimizer.param_groups}


def losses(trainer: Trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


# ---------------------------------------------------------------------------------------------
# Training with LoraPlusTrainer
# ---------------------------------------------------------------------------------------------


def test_trainer_trains_with_loraplus_groups(tmp_path: Path) -> None:
    args = targs(
        tmp_path,
        loraplus_lr_ratio=8,
        weight_decay=0.01,
        max_steps=12,
        per_device_train_batch_size=16,
        lr_scheduler_type="constant",
        lora_init="init2",
    )
    trainer = LoraPlusTrainer(model=lora_bert(), args=args, train_dataset=cls_data())
    # Init[2] applied at construction: every A is zero, every B random.
    named = dict(trainer.model.named_parameters())
    assert all(not p.any() for n, p in named.items() if "lora_A" in n)
    assert all(p.any() for n, p in named.items() if "lora_B" in n)
    trainer.train()
    loss = losses(trainer)
    assert len(loss) == 12
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 0.05, loss  # full batch: no data noise
    g = groups(trainer.optimizer)
    assert set(g) == {"lora_A", "lora_B"}
    assert g["lora_A"]["lr"] == pytest.approx(LR)
    assert g["lora_B"]["lr"] == pytest.approx(8 * LR)
    assert g["lora_A"]["weight_decay"] == g["lora_B"]["weight_decay"] == 0.01
    assert isinstance(trainer.optimizer.optimizer, torch.optim.AdamW)  # args.optim's default
    # per-role lrs in every training log, with the ratio held through the schedule
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert all(e["lr/lora_B"] == pytest.approx(8 * e["lr/lora_A"]) for e in logged)
    assert logged[0]["lr/lora_A"] == pytest.approx(logged[0]["learning_rate"])


def test_ratio_auto_logs_its_ratios_in_the_log_history(tmp_path: Path) -> None:
    """auto_ratio/<kind> reaches state.log_history beside lr/<role> (not only the printed logs),
    at the values the controller holds after each logged step."""
    from loraplus.autoratio import auto_ratio_logs

    args = targs(tmp_path, max_steps=12, loraplus_lr_ratio="auto")
    trainer = LoraPlusTrainer(model=lora_bert(), args=args, train_dataset=cls_data())
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 12
    assert all("lr/lora_A" in e and "auto_ratio/q" in e for e in logged)
    assert logged[0]["auto_ratio/q"] == 16.0  # the start, before the first update at step 10
    final = auto_ratio_logs(trainer.optimizer)
    assert final["auto_ratio/q"] != 16.0  # step 10 measured a balance and moved it
    assert {k: v for k, v in logged[-1].items() if k.startswith("auto_ratio/")} == final


def test_scheduler_and_grad_accumulation_keep_the_ratio(tmp_path: Path) -> None:
    args = targs(
        tmp_path,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=4,
        warmup_steps=2,
        lr_scheduler_type="linear",
    )
    trainer = LoraPlusTrainer(model=lora_bert(), args=args, train_dataset=cls_data())
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    lrs_a = [e["lr/lora_A"] for e in logged]
    # the lrs the 4 steps used: warmup from 0 over 2 steps, then linear decay to 0 at step 4
    assert lrs_a == pytest.approx([0.0, LR / 2, LR, LR / 2])
    assert lrs_a == [e["learning_rate"] for e in logged]
    assert all(e["lr/lora_B"] == pytest.approx(16 * e["lr/lora_A"]) for e in logged)
    assert groups(trainer.optimizer)["lora_B"]["initial_lr"] == pytest.approx(16 * LR)


class UsedLrs(TrainerCallback):
    """The lr of every group at each optimizer step, read as the step runs (ground truth)."""

    def __init__(self) -> None:
        self.used: dict[int, dict[str, float]] = {}

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        groups = kwargs["optimizer"].param_groups
        self.used[state.global_step + 1] = {f"lr/{g['role']}": float(g["lr"]) for g in groups}


def test_logged_role_lrs_are_the_ones_the_logged_step_used(tmp_path: Path) -> None:
    # linear decay from the first step: the lr changes at every step, so a log one step ahead
    # (read after the scheduler stepped) would differ from what the step used
    args = targs(tmp_path, max_steps=6, lr_scheduler_type="linear", logging_steps=1)
    used = UsedLrs()
    trainer = LoraPlusTrainer(
        model=lora_bert(), args=args, train_dataset=cls_data(), callbacks=[used]
    )
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in logged] == [1, 2, 3, 4, 5, 6]
    assert len({e["lr/lora_A"] for e in logged}) == 6  # it does change at every step
    for entry in logged:
        step = entry["step"]
        assert {k: entry[k] for k in used.used[step]} == used.used[step]  # exactly
        assert entry["lr/lora_A"] == entry["learning_rate"]  # transformers' own agrees
    assert logged[0]["lr/lora_A"] == LR and logged[0]["lr/lora_B"] == 16 * LR


@pytest.mark.parametrize(
    ("optim", "expected"),
    [("sgd", torch.optim.SGD), ("adafactor", None), ("adamw_torch", torch.optim.AdamW)],
)
def test_optim_choice_is_honoured(tmp_path: Path, optim: str, expected: type | None) -> None:
    trainer = LoraPlusTrainer(model=lora_bert(), args=targs(tmp_path, optim=optim, adam_beta2=0.95))
    opt = trainer.create_optimizer()
    if expected is not None:
        assert type(opt) is expected
    else:
        assert type(opt).__name__ == "Adafactor"
    g = groups(opt)
    assert g["lora_B"]["lr"] == pytest.approx(16 * g["lora_A"]["lr"])
    if optim == "adamw_torch":
        assert g["lora_A"]["betas"] == (0.9, 0.95)


def test_adamw_bnb_8bit_builds_through_the_core(tmp_path: Path) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    args = targs(tmp_path, optim="adamw_bnb_8bit", max_steps=2, loraplus_lr_ratio=4)
    trainer = LoraPlusTrainer(model=lora_bert(), args=args, train_dataset=cls_data())
    opt = trainer.create_optimizer()
    assert isinstance(opt, bnb.optim.AdamW)
    assert opt.args.optim_bits == 8
    g = groups(opt)
    assert g["lora_B"]["lr"] == pytest.approx(4 * LR)
    trainer.train()  # bitsandbytes steps on CPU
    assert all(torch.isfinite(torch.tensor(x)) for x in losses(trainer))


def test_optimizers_that_build_their_own_groups_are_refused(tmp_path: Path) -> None:
    trainer = LoraPlusTrainer(
        model=lora_bert(),
        args=targs(tmp_path),
        optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": [], "lr": 1.0}),
    )
    with pytest.raises(ValueError, match="builds its own parameter groups"):
        trainer.create_optimizer()


def test_optimizer_cls_and_kwargs_argument_is_used(tmp_path: Path) -> None:
    trainer = LoraPlusTrainer(
        model=lora_bert(),
        args=targs(tmp_path, weight_decay=0.1),
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 1.0, "momentum": 0.5}),
    )
    g = groups(trainer.create_optimizer())
    assert g["lora_A"]["lr"] == pytest.approx(LR)  # args.learning_rate, not the kwargs' lr
    assert g["lora_A"]["momentum"] == 0.5 and g["lora_A"]["weight_decay"] == 0.1


def test_bad_settings_fail_where_first_seen(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lora_init"):
        targs(tmp_path, lora_init="kaiming")
    with pytest.raises(ValueError, match="Unknown role"):
        targs(tmp_path, loraplus_lr_multipliers={"lora_C": 1.0})
    args = targs(tmp_path, loraplus_lr_ratio="4", loraplus_lr_multipliers='{"vector": 1}')
    assert args.loraplus_lr_ratio == 4.0 and args.loraplus_lr_multipliers == {"vector": 1.0}
    with pytest.raises(ValueError, match="loraplus_lr_ratio"):
        LoraPlusTrainer(model=lora_bert(), args=args, loraplus_lr_ratio=-1)


def test_head_lr_from_args_and_kwargs(tmp_path: Path) -> None:
    """A new head trains at ratio * lr by default; loraplus_lr_roles sets it absolutely."""
    model = lora_bert(modules_to_save=["classifier"])
    trainer = LoraPlusTrainer(model=model, args=targs(tmp_path, loraplus_lr_ratio=8))
    assert groups(trainer.create_optimizer())["head"]["lr"] == pytest.approx(8 * LR)
    args = targs(tmp_path, loraplus_lr_roles='{"head": 0.03}')
    assert args.loraplus_lr_roles == {"head": 0.03}
    trainer = LoraPlusTrainer(model=lora_bert(modules_to_save=["classifier"]), args=args)
    assert groups(trainer.create_optimizer())["head"]["lr"] == 0.03
    trainer = LoraPlusTrainer(
        model=lora_bert(modules_to_save=["classifier"]),
        args=targs(tmp_path),
        loraplus_lr_roles={"head": 0.01},
    )
    assert groups(trainer.create_optimizer())["head"]["lr"] == 0.01
    with pytest.raises(ValueError, match="head is set in both lr_multipliers and lr_roles"):
        targs(tmp_path, loraplus_lr_multipliers={"head": 2}, loraplus_lr_roles={"head": 0.1})


def test_lora_init_applies_to_model_init_models(tmp_path: Path) -> None:
    trainer = LoraPlusTrainer(
        model_init=lambda: lora_bert(), args=targs(tmp_path, lora_init="init2")
    )
    named = dict(trainer.model.named_parameters())
    assert all(not p.any() for n, p in named.items() if "lora_A" in n)
    assert all(p.any() for n, p in named.items() if "lora_B" in n)


def test_plain_args_and_constructor_kwargs(tmp_path: Path) -> None:
    plain = targs(tmp_path, cls=TrainingArguments)
    trainer = LoraPlusTrainer(model=lora_bert(), args=plain)
    assert trainer.loraplus_settings() == LoraPlusSettings(lr=LR)  # the settings' defaults
    trainer = LoraPlusTrainer(
        model=lora_bert(),
        args=plain,
        loraplus_lr_ratio=2,
        loraplus_lr_multipliers={"lora_A": 0.5},
    )
    g = groups(trainer.create_optimizer())
    assert g["lora_A"]["lr"] == pytest.approx(0.5 * LR)
    assert g["lora_B"]["lr"] == pytest.approx(2 * LR)
    # kwargs win over the args' fields
    trainer = LoraPlusTrainer(
        model=lora_bert(), args=targs(tmp_path, loraplus_lr_ratio=32), loraplus_lr_ratio=3
    )
    assert groups(trainer.create_optimizer())["lora_B"]["lr"] == pytest.approx(3 * LR)


# ---------------------------------------------------------------------------------------------
# The optimizers=(opt, None) path with a plain Trainer
# ---------------------------------------------------------------------------------------------


def test_plain_trainer_with_loraplus_optimizer_for(tmp_path: Path) -> None:
    model = lora_bert()
    args = targs(tmp_path, loraplus_lr_ratio=4, weight_decay=0.05, lr_scheduler_type="constant")
    opt = loraplus_optimizer_for(args, model)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=cls_data(),
        optimizers=(opt, None),
        callbacks=[LoraPlusLogCallback()],
    )
    trainer.train()
    g = groups(trainer.optimizer)
    assert g["lora_B"]["lr"] == pytest.approx(4 * LR)
    assert g["lora_A"]["weight_decay"] == 0.05
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all(e["lr/lora_B"] == pytest.approx(4 * e["lr/lora_A"]) for e in logged)
    # plain TrainingArguments: loraplus fields default; a Trainer is accepted too
    plain = targs(tmp_path, cls=TrainingArguments, optim="sgd")
    assert isinstance(loraplus_optimizer_for(plain, lora_bert()), torch.optim.SGD)
    lp = LoraPlusTrainer(model=lora_bert(), args=plain, loraplus_lr_ratio=2)
    assert groups(loraplus_optimizer_for(lp, lp.model))["lora_B"]["lr"] == pytest.approx(2 * LR)


# ---------------------------------------------------------------------------------------------
# TRL: LoraPlusMixin + SFTTrainer
# ---------------------------------------------------------------------------------------------


CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog",
    "the mat is red and the log is brown",
] * 4


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=specials))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )


def sft_config(tmp_path: Path, cls: Any = None, **kw: Any) -> Any:
    from trl import SFTConfig

    settings: dict[str, Any] = {
        "bf16": False,
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "max_length": 16,
    }
    return targs(tmp_path, cls=cls or SFTConfig, **{**settings, **kw})


def test_trl_sft_trainer_with_the_mixin(tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")

    class LoraPlusSFTTrainer(LoraPlusMixin, trl.SFTTrainer):
        pass

    tokenizer = tiny_tokenizer()
    data = Dataset.from_dict(
        {"prompt": [s.rsplit(" ", 2)[0] for s in CORPUS], "completion": CORPUS}
    )
    data = data.map(lambda e: {"completion": " " + e["completion"].rsplit(" ", 2)[1]})
    trainer = LoraPlusSFTTrainer(
        model=lora_llama(),
        args=sft_config(tmp_path),
        train_dataset=data,
        processing_class=tokenizer,
        loraplus_lr_ratio=4,
    )
    trainer.train()
    loss = losses(trainer)
    assert len(loss) == 4 and loss[-1] < loss[0]
    g = groups(trainer.optimizer)
    assert set(g) == {"lora_A", "lora_B"}
    assert g["lora_B"]["lr"] == pytest.approx(4 * g["lora_A"]["lr"])
    assert "lr/lora_B" in trainer.state.log_history[0]


def test_trl_with_a_config_inheriting_both(tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    from dataclasses import dataclass

    @dataclass
    class LoraPlusSFTConfig(LoraPlusTrainingArguments, trl.SFTConfig):
        pass

    class LoraPlusSFTTrainer(LoraPlusMixin, trl.SFTTrainer):
        pass

    args = sft_config(tmp_path, cls=LoraPlusSFTConfig, loraplus_lr_ratio=2, max_steps=1)
    trainer = LoraPlusSFTTrainer(
        model=lora_llama(),
        args=args,
        train_dataset=Dataset.from_dict({"text": CORPUS}),
        processing_class=tiny_tokenizer(),
    )
    g = groups(trainer.create_optimizer())
    assert g["lora_B"]["lr"] == pytest.approx(2 * LR)
    # A LoraPlusTrainingArguments that TRL would convert to SFTConfig: a message with the fix.
    with pytest.raises(TypeError, match="as trainer kwargs"):
        LoraPlusSFTTrainer(
            model=lora_llama(),
            args=targs(tmp_path),
            train_dataset=Dataset.from_dict({"text": CORPUS}),
            processing_class=tiny_tokenizer(),
        )


# ---------------------------------------------------------------------------------------------
# Silent failure 1: DeepSpeed's own optimizer / scheduler
# ---------------------------------------------------------------------------------------------

DS_WITH_OPTIMIZER = {
    "zero_optimization": {"stage": 2},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
}


def test_deepspeed_optimizer_block_is_detected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='delete the "optimizer" block'):
        check_deepspeed_config(DS_WITH_OPTIMIZER)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(DS_WITH_OPTIMIZER))
    with pytest.raises(ValueError, match=r"optimizer.*block \(AdamW\)"):
        check_deepspeed_config(str(path))
    # TrainingArguments-like objects: args.deepspeed (dict or path) and args.hf_deepspeed_config
    with pytest.raises(ValueError, match="silently drop LoRA\\+"):
        check_deepspeed_config(SimpleNamespace(deepspeed=path))
    hf_cfg = SimpleNamespace(config=DS_WITH_OPTIMIZER)
    with pytest.raises(ValueError, match="skip create_optimizer"):
        check_deepspeed_config(SimpleNamespace(deepspeed=None, hf_deepspeed_config=hf_cfg))
    # a scheduler that sets one absolute lr on every group is refused; WarmupCosineLR scales
    with pytest.raises(ValueError, match=r"scheduler.*WarmupLR"):
        check_deepspeed_config({"scheduler": {"type": "WarmupLR"}})
    check_deepspeed_config({"scheduler": {"type": "WarmupCosineLR"}, "zero_optimization": {}})
    check_deepspeed_config({"zero_optimization": {"stage": 3}})
    check_deepspeed_config(targs(tmp_path))
    assert deepspeed_config(json.dumps(DS_WITH_OPTIMIZER)) == DS_WITH_OPTIMIZER


def test_trainer_refuses_a_deepspeed_optimizer_at_construction(tmp_path: Path) -> None:
    # TrainingArguments(deepspeed=...) needs the deepspeed package; set the field afterwards.
    args = targs(tmp_path)
    args.deepspeed = DS_WITH_OPTIMIZER
    with pytest.raises(ValueError, match='delete the "optimizer" block'):
        LoraPlusTrainer(model=lora_bert(), args=args)
    with pytest.raises(ValueError, match='delete the "optimizer" block'):
        loraplus_optimizer_for(args, lora_bert())


# ---------------------------------------------------------------------------------------------
# Silent failure 2: resuming restores the checkpoint's learning rates
# ---------------------------------------------------------------------------------------------


def test_compare_param_groups() -> None:
    saved = [
        {"role": "lora_A", "lr": 0.0, "initial_lr": 1e-3, "weight_decay": 0.0},
        {"role": "lora_B", "lr": 0.0, "initial_lr": 16e-3, "weight_decay": 0.0},
    ]
    assert compare_param_groups(saved, saved) == []
    new = [dict(saved[0]), {**saved[1], "initial_lr": 4e-3, "weight_decay": 0.1}]
    changes = compare_param_groups(saved, new)
    assert changes[0] == "ratio 16 -> ratio 4"
    assert "lora_B: lr 0.016 -> 0.004" in changes
    assert "lora_B: weight decay 0 -> 0.1" in changes
    with pytest.raises(ValueError, match="not written by LoRA\\+"):
        compare_param_groups([{"lr": 1e-3}, {"lr": 1e-3}], saved)
    with pytest.raises(ValueError, match="different LoRA\\+ groups"):
        compare_param_groups(saved, [*saved, {"role": "vector", "lr": 1.0}])


class LrsAtStart(TrainerCallback):
    """The scheduler's last lrs and the groups' lrs as training (re)starts, before any step."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last = [float(lr) for lr in kwargs["lr_scheduler"].get_last_lr()]
        self.groups = [float(g["lr"]) for g in kwargs["optimizer"].param_groups]


def test_resume_with_a_changed_ratio_applies_the_new_one(tmp_path: Path) -> None:
    common = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "weight_decay": 0.01}
    first = LoraPlusTrainer(
        model=lora_bert(),
        args=targs(tmp_path, loraplus_lr_ratio=16, **common),
        train_dataset=cls_data(),
    )
    first.train()
    ckpt = tmp_path / "checkpoint-2"
    saved = read_checkpoint_param_groups(ckpt)  # torch.load(weights_only=True)
    assert [g["role"] for g in saved] == ["lora_A", "lora_B"]
    assert saved[1]["initial_lr"] == pytest.approx(16 * LR)

    start = LrsAtStart()
    second = LoraPlusTrainer(
        model=lora_bert(),
        args=targs(tmp_path, loraplus_lr_ratio=4, **{**common, "weight_decay": 0.0}),
        train_dataset=cls_data(),
        callbacks=[start],
    )
    with pytest.warns(UserWarning, match=r"ratio 16 -> ratio 4.*lora_B: lr 0.08 -> 0.02"):
        second.train(resume_from_checkpoint=str(ckpt))
    # at step 2 of the schedule, before a step: the scheduler already reports the new lrs
    assert start.groups[0] > 0 and start.groups[1] == pytest.approx(4 * start.groups[0])
    assert start.last == start.groups
    g = groups(second.optimizer)
    assert g["lora_B"]["initial_lr"] == pytest.approx(4 * LR)
    assert g["lora_A"]["initial_lr"] == pytest.approx(LR)
    assert g["lora_B"]["weight_decay"] == 0.0
    assert second.lr_scheduler.base_lrs == pytest.approx([LR, 4 * LR])
    assert second.optimizer.state  # Adam moments came from the checkpoint
    resumed = [e for e in second.state.log_history if "loss" in e and e["step"] > 2]
    assert [e["step"] for e in resumed] == [3, 4]  # the schedule position was kept
    first_run = {e["step"]: e for e in first.state.log_history if "loss" in e}
    for e in resumed:
        assert e["lr/lora_B"] == pytest.approx(4 * e["lr/lora_A"])
        assert e["lr/lora_A"] == pytest.approx(first_run[e["step"]]["lr/lora_A"])

    # the failure being guarded against: the Trainer's own loading restores the old ratio
    class Unguarded(LoraPlusTrainer):
        _load_optimizer_and_scheduler = Trainer._load_optimizer_and_scheduler

    control = Unguarded(
        model=lora_bert(),
        args=targs(tmp_path, loraplus_lr_ratio=4, **common),
        train_dataset=cls_data(),
    )
    control.train(resume_from_checkpoint=str(ckpt))
    assert groups(control.optimizer)["lora_B"]["initial_lr"] == pytest.approx(16 * LR)

    # the same settings resume silently
    third = LoraPlusTrainer(
        model=lora_bert(),
        args=targs(tmp_path, loraplus_lr_ratio=16, **common),
        train_dataset=cls_data(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        third.train(resume_from_checkpoint=str(ckpt))


def test_resume_from_a_plain_lora_checkpoint_names_the_groups(tmp_path: Path) -> None:
    args = targs(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    Trainer(model=lora_bert(), args=args, train_dataset=cls_data()).train()
    trainer = LoraPlusTrainer(model=lora_bert(), args=args, train_dataset=cls_data())
    with pytest.raises(ValueError, match=r"not written by LoRA\+.*deleting optimizer.pt"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


# ---------------------------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------------------------


def test_per_role_lrs_reach_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    args = targs(tmp_path, report_to=["tensorboard"], max_steps=3, loraplus_lr_ratio=8)
    trainer = LoraPlusTrainer(model=lora_bert(), args=args, train_dataset=cls_data())
    trainer.train()
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/lr/lora_A", "train/lr/lora_B", "train/learning_rate"} <= set(tags)
    a = [e.value for e in acc.Scalars("train/lr/lora_A")]
    b = [e.value for e in acc.Scalars("train/lr/lora_B")]
    assert len(a) == 3 and b == pytest.approx([8 * x for x in a])


def test_width_aware_arguments_reach_the_optimizer(tmp_path: Path) -> None:
    """loraplus_width_aware: down_proj (fan-in 64) gets half the lr_A of the fan-in-32 layers."""
    args = targs(tmp_path, loraplus_width_aware=True, loraplus_n_ref="32")
    trainer = LoraPlusTrainer(model=lora_llama(), args=args)
    groups = trainer.create_optimizer().param_groups
    lora_a = {g["fan_in"]: g["lr"] for g in groups if g["role"] == "lora_A"}
    assert lora_a == {32: pytest.approx(LR), 64: pytest.approx(LR / 2)}
    (lora_b,) = [g for g in groups if g["role"] == "lora_B"]
    assert lora_b["lr"] == pytest.approx(16 * LR) and lora_b["fan_in"] is None
    with pytest.raises(ValueError, match="n_ref only applies with width_aware=True"):
        LoraPlusTrainer(
            model=lora_llama(), args=targs(tmp_path, loraplus_n_ref=32.0)
        ).create_optimizer()


def test_callback_records_during_training(tmp_path: Path) -> None:
    callback = FeatureUpdateCallback(every=2)
    trainer = LoraPlusTrainer(
        model=lora_bert(),
        args=targs(tmp_path, max_steps=6, loraplus_lr_ratio=16.0),
        train_dataset=cls_data(),
        callbacks=[callback],
    )
    trainer.train()
    assert [row["step"] for row in callback.history] == [1.0, 3.0, 5.0]
    first = callback.history[0]
    # Step 1 from B = 0 (Init[1]): A's step cannot move the features, B's does.
    assert first["delta_a"] == 0.0 and first["delta_b"] > 0.0
    later = callback.history[-1]
    assert later["delta_a"] > 0.0 and math.isfinite(later["balance_log2"])
    assert callback.probe is not None and callback.probe.hooks == []
    # per-layer records: 2 x (query, key, value, attention/FFN output denses, intermediate), pooler
    layers = later["layers"]
    assert len(layers) == len(callback.probe.layers) == 13
    assert {r["kind"] for r in layers} == {"q", "k", "v", "o", "mlp", "other"}
    assert statistics.median(r["delta_a"] for r in layers) == later["delta_a"]
    assert all(r["balance_log2"] is None for r in first["layers"])  # δ¹ = 0: no balance, not inf


class LogCapture(TrainerCallback):
    """A reporter stand-in: what a TensorBoard callback placed after the probe would receive."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        self.logs.append(dict(logs or {}))


def test_callback_sends_per_kind_scalars_to_the_logs(tmp_path: Path) -> None:
    probe, reporter = FeatureUpdateCallback(every=2), LogCapture()
    trainer = LoraPlusTrainer(
        model=lora_bert(),
        args=targs(tmp_path, max_steps=4, logging_steps=2, loraplus_lr_ratio=16.0),
        train_dataset=cls_data(),
        callbacks=[probe, reporter],
    )
    trainer.train()
    step_logs = [log for log in reporter.logs if "loss" in log]
    assert len(step_logs) == 2
    # step 2's log carries the probe of step 1 (δ¹ = 0: δ's only), step 4's that of step 3
    assert "probe/q/delta_b" in step_logs[0] and "probe/q/balance_log2" not in step_logs[0]
    expected = kind_scalars(probe.history[1]["layers"])
    assert {k: v for k, v in step_logs[1].items() if k.startswith("probe/")} == expected
    assert set(expected) >= {f"probe/{k}/balance_log2" for k in ("q", "k", "v", "o", "mlp")}
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert history[1]["probe/mlp/delta_a"] == expected["probe/mlp/delta_a"]


def test_mixin_takes_every_setting_as_a_keyword(tmp_path: Path) -> None:
    """The mixin's keywords are the settings' (TRAINER_NAMES), so width_aware, n_ref and the
    auto-ratio config reach the optimizer from a plain TrainingArguments too."""
    from loraplus.autoratio import AutoRatioConfig, controller

    plain = targs(tmp_path, cls=TrainingArguments)
    trainer = LoraPlusTrainer(
        model=lora_llama(), args=plain, loraplus_width_aware=True, loraplus_n_ref=64
    )
    groups = trainer.create_optimizer().param_groups
    lora_a = {g["fan_in"]: g["lr"] for g in groups if g["role"] == "lora_A"}
    assert lora_a == {32: pytest.approx(2 * LR), 64: pytest.approx(LR)}  # lr · 64 / fan-in
    auto = LoraPlusTrainer(
        model=lora_llama(),
        args=plain,
        loraplus_lr_ratio="auto",
        loraplus_auto_ratio=AutoRatioConfig(start=4, every=1),
    )
    opt = auto.create_optimizer()
    found = controller(opt)
    assert found is not None and found.auto == AutoRatioConfig(start=4, every=1)
    assert {g["role"]: g["lr"] for g in opt.param_groups}["lora_B"] == pytest.approx(4 * LR)
    with pytest.raises(ValueError, match="^loraplus_n_ref, loraplus_width_aware: n_ref only"):
        LoraPlusTrainer(model=lora_llama(), args=plain, loraplus_n_ref=64)
