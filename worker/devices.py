"""The devices of this worker process (one, or several for multi-device jobs), chosen before torch is imported."""

from __future__ import annotations

import os

from api.core.settings import Settings


def configure(settings: Settings) -> str:
    """Pin the process to its device via ``CUDA_VISIBLE_DEVICES`` (only ever before CUDA initialises).

    ``auto`` leaves the environment alone (the library picks CUDA when present); ``cpu`` hides every GPU;
    ``cuda:N`` shows only GPU N, which the library then sees as ``cuda``; ``cuda:N,M,...`` shows those GPUs
    (single-device jobs train on the first; a job with ``resources.gpus`` K > 1 on the first K).
    """
    device = settings.device
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    return device


def visible_gpus() -> list[str]:
    """The GPU ids this worker owns: ``CUDA_VISIBLE_DEVICES`` as ``configure`` set it, else every GPU torch sees.

    Imports torch when the environment does not say: call it in the process that runs steps.
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]
