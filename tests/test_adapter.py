"""loraplus.adapter and `loraplus merge`: adapters that name a portable base and carry labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train import KeepModel, tiny_cls_config, tiny_files  # noqa: F401  (a fixture)

from loraplus import cli
from loraplus.adapter import load_adapter, portable_base, read_labels
from loraplus.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["the movie was good", "the plot was dull and boring", "superb actor"]


def test_portable_base_names_a_built_in_not_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for given in ("minilm", "MiniLM", "all-MiniLM-L6-v2", "smollm2-135m"):
        assert portable_base(given) in ("minilm", "smollm2")
    assert portable_base("org/some-model") == "org/some-model"  # a hub id as given
    (tmp_path / "mine").mkdir()
    monkeypatch.chdir(tmp_path)
    assert portable_base("mine") == str(tmp_path / "mine")  # a local folder, absolute


@pytest.fixture(scope="module")
def trained(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, torch.Tensor, dict[str, object]]:
    """A tiny 2-class run on a base whose own head has 3 classes; the trained model's logits."""
    keep = KeepModel()
    out = tmp_path_factory.mktemp("adapter") / "run"
    result = train(tiny_cls_config(tiny_files, out), callbacks=[keep])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        logits = keep.model.eval()(**batch).logits
    return result.output_dir, logits, batch


def test_the_adapter_names_its_base_and_carries_its_labels(
    trained: tuple[Path, torch.Tensor, dict[str, object]],
    tiny_files: dict[str, Path],  # noqa: F811
) -> None:
    from peft import AutoPeftModelForSequenceClassification

    run, logits, batch = trained
    adapter = run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_files["bert"].resolve())
    names = json.loads((run / "metrics.json").read_text())["data"]["label_names"]
    assert json.loads((adapter / "labels.json").read_text()) == {
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }
    model, _ = load_adapter(run)  # a run folder: its adapter/
    assert model.config.id2label == dict(enumerate(names))
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, logits)
    # plain peft, the labels passed as keywords (the base's own 3-class head is replaced)
    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(
        adapter, **read_labels(adapter), ignore_mismatched_sizes=True
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, logits)


def test_merge_writes_a_plain_model_with_the_adapters_logits_and_labels(
    trained: tuple[Path, torch.Tensor, dict[str, object]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run, logits, batch = trained
    out = tmp_path / "merged"
    assert cli.main(["merge", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()  # no keywords
    names = json.loads((run / "metrics.json").read_text())["data"]["label_names"]
    assert merged.config.id2label == dict(enumerate(names))
    assert f"labels {', '.join(names)})" in printed
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert AutoTokenizer.from_pretrained(out)(TEXTS)["input_ids"] == batch_ids(batch)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, logits, rtol=1e-5, atol=1e-5)

    assert cli.main(["merge", str(run), "--out", str(out)]) == 2  # not over an existing folder
    assert capsys.readouterr().err.splitlines()[-1] == (  # after the test's own loading bars
        f"error: --out {out} already exists: pass an empty or new folder, or --overwrite."
    )
    assert cli.main(["merge", str(run), "--out", str(out), "--overwrite"]) == 0
    assert cli.main(["merge", str(tmp_path), "--out", str(tmp_path / "m2")]) == 2
    assert "holds no adapter_config.json" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()


def batch_ids(batch: dict[str, object]) -> list[list[int]]:
    """The batch's token ids without padding."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor)
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


def test_an_adapter_whose_base_is_gone_is_refused_in_one_line(
    trained: tuple[Path, torch.Tensor, dict[str, object]],
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    moved = tmp_path / "adapter"
    shutil.copytree(trained[0] / "adapter", moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "gone").mkdir()  # its config is left, its weights are gone
    shutil.copy(tiny_files["bert"] / "config.json", tmp_path / "gone" / "config.json")
    assert cli.main(["merge", str(moved), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Cannot load the base model '{tmp_path / 'gone'}' of {moved} (")
    assert err.count("\n") == 1 and not (tmp_path / "m").exists()
