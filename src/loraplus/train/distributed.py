"""Several processes (torchrun, accelerate launch): the TrainingArguments that make them DDP.

transformers decides the parallel mode from the environment when TrainingArguments is built. On a
machine without CUDA, accelerate makes several processes distributed only when asked for the CPU:
without `use_cpu=True` each process trains alone, on the whole data, after initializing a
process group ("process group is initialized, but parallel_mode != DISTRIBUTED"). So on CPU
several processes get `use_cpu=True` and the gloo backend; on GPUs the defaults (NCCL) stand.
"""

from __future__ import annotations

import os
from typing import Any


def launched_world_size() -> int:
    """How many processes the launcher started (WORLD_SIZE and MPI equivalents; 1 alone)."""
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(key)
        if value and value.isdigit():
            return int(value)
    return 1


def parallel_arguments() -> dict[str, Any]:
    """TrainingArguments settings for this launch: CPU DDP over gloo when there is no GPU."""
    import torch

    if launched_world_size() <= 1 or torch.cuda.is_available():
        return {}
    return {"use_cpu": True, "ddp_backend": "gloo"}


def check_distributed(args: Any) -> None:
    """Refuse a multi-process launch that transformers would not run as DDP (each process alone)."""
    from transformers.training_args import ParallelMode

    launched = launched_world_size()
    if launched > 1 and args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise ValueError(
            f"{launched} processes were launched, but transformers set them up as "
            f"{args.parallel_mode.value} (each would train alone on all the data). Launch with "
            "torchrun --nproc_per_node N, or accelerate launch --multi_cpu / --multi_gpu."
        )


def init_deepspeed_comm(args: Any) -> None:
    """DeepSpeed's own comm layer over the launched processes, before the model loads.

    Under ZeRO-3 the model is partitioned as it loads (deepspeed.zero.Init), which reads the world
    size from DeepSpeed's comm layer; on CPU nothing has set that up yet, so ZeRO-3 would see one
    process and refuse the batch sizes.
    """
    if not getattr(args, "deepspeed", None) or launched_world_size() <= 1:
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend=args.ddp_backend or None)
