"""`loraplus merge RUN_OR_ADAPTER --out DIR`: the adapter merged into its base, as a plain model.

Loads the adapter's base (a built-in name resolves through loraplus.zoo) with the classifier's
labels, merges with peft's merge_and_unload and writes safetensors weights, config.json (labels
included) and the tokenizer: a folder that `AutoModelFor...from_pretrained(DIR)` loads alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loraplus.cli.common import CLIError, Subparsers


def add_parser(subparsers: Subparsers) -> None:
    """`loraplus merge RUN_OR_ADAPTER --out DIR`."""
    parser = subparsers.add_parser(
        "merge",
        help="merge a run's adapter into its base model and save the plain model",
        description="Merge the LoRA adapter of a run folder (its adapter/) or an adapter folder "
        "into its base model (peft's merge_and_unload) and write the merged model to --out: "
        "safetensors weights, config.json with the classifier's labels, and the tokenizer.",
    )
    parser.add_argument(
        "source", metavar="RUN_OR_ADAPTER", help="output folder of `loraplus train`, or an adapter"
    )
    parser.add_argument("--out", metavar="DIR", required=True, help="folder for the merged model")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a folder already at --out"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the paths, then load, merge and save."""
    from loraplus.adapter import adapter_folder, merge, read_labels

    folder = adapter_folder(args.source)
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise CLIError(
            f"--out {args.out} already exists: pass an empty or new folder, or --overwrite."
        )
    if out.resolve() in (folder.resolve(), *folder.resolve().parents):
        raise CLIError(
            f"--out {args.out} would replace the adapter it merges: pass another folder."
        )
    merge(folder, out)
    labels = read_labels(folder).get("id2label", {})
    print(
        f"merged {folder} into its base: {out}/ (model.safetensors, config.json, tokenizer"
        + (f"; labels {', '.join(labels[i] for i in sorted(labels))})" if labels else ")")
    )
    return 0
