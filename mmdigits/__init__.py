"""mmdigits: learning from a handwritten digit image and a spoken digit at once (Lightning + Hydra).

Importing the package registers the config resolvers the Hydra configs use:
``${mmdigits.run_name:task,audio_encoder,image_encoder,fusion}`` (a run's name from its choices) and
``${mmdigits.pid:}`` (the launching process's id: run directories started in the same second differ).
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def _run_name(task: str, audio_encoder: str | None, image_encoder: str | None, fusion: str | None) -> str:
    from mmdigits.tasks import get_task

    return get_task(task).run_name(audio_encoder, image_encoder, fusion)


OmegaConf.register_new_resolver("mmdigits.run_name", _run_name, replace=True)
OmegaConf.register_new_resolver("mmdigits.pid", os.getpid, use_cache=True, replace=True)
