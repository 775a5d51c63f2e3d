"""The device of this worker process: one worker per device, chosen before torch is imported."""

from __future__ import annotations

import os

from api.core.settings import Settings


def configure(settings: Settings) -> str:
    """Pin the process to its device via ``CUDA_VISIBLE_DEVICES`` (only ever before CUDA initialises).

    ``auto`` leaves the environment alone (the library picks CUDA when present); ``cpu`` hides every GPU;
    ``cuda:N`` shows only GPU N, which the library then sees as ``cuda``.
    """
    device = settings.device
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    return device
