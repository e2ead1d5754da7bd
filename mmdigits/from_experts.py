"""A recipe that starts from unimodal experts (``experts`` in its config, ``experiment=match_from_experts``):
its run finds or trains each expert, starts its own encoders and heads from them, and tests, next to itself,
the experts composed without training (:mod:`mmdigits.models.composition`).

``experts.<modality>`` is the expert's ``python -m mmdigits.train`` overrides (``[experiment=audio_only,
data.val_fraction=0.1]``); the recipe's ``seed`` and ``paths.*`` come before them, ``experts.overrides`` after
them (for every expert, e.g. ``['trainer=gpu']``). The expert's run directory is ``<experts.dir>/<hash>/``,
the hash being :func:`~mmdigits.utils.rundir.config_hash` of its composed config (the run directory left
out, so the hash names the config alone). There:

* ``metrics.json``: finished, reused (nothing is trained);
* ``checkpoints/last.ckpt`` without it: cut short, resumed (``ckpt_path=last``);
* anything else: trained, over whatever a start that left no checkpoint wrote (``overwrite=true``).

The expert trains in this process, through the ``train`` function the command hands over, and logs into
``<hash>/train.log`` as well. Its temperature is then fitted on its own validation part (``calibration.json``
there, fitted once), so every expert needs one (``data.val_fraction > 0``).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobRuntime
from omegaconf import DictConfig, OmegaConf, read_write

from mmdigits.data.splits import image_keys
from mmdigits.errors import MMDigitsError
from mmdigits.models.calibration import collect_logits, fit_temperature, scores
from mmdigits.models.composition import composition_scores, expert_logits
from mmdigits.models.loading import load_checkpoint_model
from mmdigits.models.pretrained import config_differences
from mmdigits.tasks import MODALITIES, get_task
from mmdigits.utils.config import compose_config
from mmdigits.utils.io import atomic_write_json
from mmdigits.utils.run import ready_datamodule
from mmdigits.utils.rundir import config_hash

log = logging.getLogger("mmdigits.train")
KEYS = (*MODALITIES, "dir", "overrides")
INHERITED = ("paths.data_dir", "paths.raw_dir", "paths.log_dir")
PLACEHOLDER_DIR = "<expert run dir>"  # the run directory while the hash is taken: the hash names the config
CALIBRATION_FILE = "calibration.json"


@dataclass
class Expert:
    modality: str
    dir: str
    config_hash: str
    checkpoint: str
    status: str  # reused, resumed, trained
    wall_time_s: float  # its own run's (the time it took to train, whenever it did)
    temperature: float  # fitted on its own validation part
    calibration_s: float
    validation: dict[str, float]  # there: acc, and ece / nll before and after the temperature (_scaled)
    shared_with_validation: dict[str, int]  # what it trained on that the recipe validates on (0: nothing)


def wanted(cfg: DictConfig) -> dict[str, list[str]]:
    """``{modality: overrides}`` of ``cfg.experts`` ({} without it); an error for keys it does not know."""
    spec = cfg.get("experts")
    if not spec:
        return {}
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise MMDigitsError(f"experts.{unknown[0]}: unknown key; experts takes {', '.join(KEYS)}")
    given = {m: spec[m] for m in MODALITIES if spec.get(m) is not None}
    for m, overrides in given.items():
        if not OmegaConf.is_list(overrides):
            raise MMDigitsError(f"experts.{m}={overrides!r}: expected a list of overrides")
    return {m: [str(o) for o in overrides] for m, overrides in given.items()}


def _quoted(value: Any) -> str:
    if value is None:
        return "null"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def expert_overrides(cfg: DictConfig, modality: str) -> list[str]:
    """The expert's overrides: the recipe's seed and paths (unless its own set them), its own, the shared."""
    own = wanted(cfg)[modality] + [str(o) for o in cfg.experts.get("overrides") or []]
    given = {o.lstrip("+~").split("=", 1)[0] for o in own}
    inherited = [f"seed={cfg.seed}"] if cfg.get("seed") is not None and "seed" not in given else []
    inherited += [f"{k}={_quoted(OmegaConf.select(cfg, k))}" for k in INHERITED if k not in given]
    return inherited + own


@contextmanager
def own_hydra_state() -> Iterator[None]:
    """Composing an expert's config replaces Hydra's global state (the app, its config, the job's name that a
    sweep's next job takes): put the recipe's back afterwards."""
    hydra, hydra_cfg = GlobalHydra.instance().hydra, HydraConfig.instance().cfg
    job = copy.deepcopy(JobRuntime.instance().conf)
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        if hydra is not None:
            GlobalHydra.instance().initialize(hydra)
        HydraConfig.instance().cfg = hydra_cfg
        JobRuntime.instance().conf = job


def expert_config(cfg: DictConfig, modality: str) -> tuple[DictConfig, str, Path]:
    """The expert's composed config (its run directory set), its hash and its run directory. Call it inside
    :func:`own_hydra_state`."""
    expert = compose_config("train", expert_overrides(cfg, modality), PLACEHOLDER_DIR)
    digest = config_hash(expert)
    directory = Path(str(cfg.experts.dir)) / digest
    with read_write(expert.hydra):
        expert.hydra.runtime.output_dir = str(directory)
    HydraConfig.instance().set_config(expert)
    return expert, digest, directory


def check_expert(cfg: DictConfig, expert: DictConfig, modality: str) -> None:
    """Before anything trains: the expert names the digit from ``modality`` alone, keeps a validation part,
    and has the encoder config of the recipe."""
    task = get_task(expert.data.task)
    where = f"experts.{modality}={list(wanted(cfg)[modality])}"
    if task.binary or tuple(task.modalities) != (modality,):
        raise MMDigitsError(
            f"{where} trains task {task.name!r}; an expert names the digit from the {modality} alone"
        )
    if not expert.data.get("val_fraction"):
        raise MMDigitsError(
            f"{where} leaves no validation part (data.val_fraction={expert.data.val_fraction}); the expert's "
            "temperature is fitted there: add data.val_fraction=0.1 to its overrides"
        )
    key = f"{modality}_encoder"
    theirs, ours = (OmegaConf.to_container(c.model[key], resolve=True) if c.model.get(key) else None
                    for c in (expert, cfg))  # fmt: skip
    differ = config_differences(theirs, ours)
    if differ:
        raise MMDigitsError(
            f"{where}: its {key} differs from this recipe's ({'; '.join(differ[:3])}); the recipe starts its "
            f"encoder from the expert's, so give both the same {key}"
        )


def find_or_train(
    cfg: DictConfig,
    modality: str,
    train: Callable[[DictConfig], dict[str, Any]],
    recipe_dm: Callable[[], Any],
) -> Expert:
    """The expert of ``modality``: reused, resumed or trained in ``<experts.dir>/<hash>/``, with its
    temperature and what it shares with the validation part of ``recipe_dm()`` (this run's datamodule, set up
    for fit; called once the expert is ready)."""
    with own_hydra_state():
        expert, digest, directory = expert_config(cfg, modality)
        check_expert(cfg, expert, modality)
        if (directory / "metrics.json").is_file():
            status = "reused"
            log.info("expert %s: reused %s (finished: metrics.json)", modality, directory)
        else:
            status = "resumed" if (directory / "checkpoints" / "last.ckpt").is_file() else "trained"
            log.info("expert %s: %s in %s (%s)", modality, "resuming" if status == "resumed" else "training",
                     directory, " ".join(expert_overrides(cfg, modality)))  # fmt: skip
            expert.ckpt_path = "last" if status == "resumed" else None
            expert.overwrite = status == "trained"  # a start that left no checkpoint: over it
            with log_file(directory / "train.log"):
                train(expert)
        metrics = json.loads((directory / "metrics.json").read_text())
        checkpoint = directory / "checkpoints" / Path(str(metrics["best_model_path"])).name
        expert_dm = ready_datamodule(expert.data)
        fit = expert_temperature(expert_dm, directory, checkpoint)
        shared = shared_with_validation(expert_dm, recipe_dm(), modality)
    if any(shared.values()):
        log.warning("expert %s trained on %s of this run's validation part: its choices lean to that expert",
                    modality, shared)  # fmt: skip
    return Expert(modality, str(directory), digest, str(checkpoint), status, float(metrics["wall_time_s"]),
                  float(fit["temperature"]), float(fit["seconds"]), fit["val"], shared)  # fmt: skip


def shared_with_validation(expert_dm: Any, recipe_dm: Any, modality: str) -> dict[str, int]:
    """What the recipe's validation part shares with the part an expert trained on (both datamodules set up
    for fit): an image expert's images, by their pixels; an audio expert's speakers, or its utterances by
    content where a build has no speaker ids."""
    theirs, ours = expert_dm.data.train, recipe_dm.data.train
    trained, val = expert_dm.parts.train, recipe_dm.parts.val
    if modality == "image":
        return {
            "images": len(np.intersect1d(image_keys(theirs.written[trained]), image_keys(ours.written[val])))
        }
    if theirs.speaker is not None and ours.speaker is not None:
        return {"speakers": len(np.intersect1d(theirs.speaker[trained], ours.speaker[val]))}
    seen, held = (
        {split.spoken(r).tobytes() for r in rows} for split, rows in ((theirs, trained), (ours, val))
    )
    return {"utterances": len(seen & held)}


@contextmanager
def log_file(path: Path) -> Iterator[None]:
    """The process's log records also go to ``path`` (the expert's own log) while the block runs."""
    root = logging.getLogger()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def expert_temperature(dm: Any, directory: Path, checkpoint: Path) -> dict[str, Any]:
    """The temperature of ``checkpoint`` fitted on the validation part of its run's datamodule ``dm``
    (``calibration.json``, fitted once): ``temperature``, ``seconds`` (the fit's: loading the checkpoint,
    scoring the validation part, fitting) and ``val`` (the scores there before and after it)."""
    path = directory / CALIBRATION_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("checkpoint") == checkpoint.name:
            return saved
    start = time.perf_counter()
    model = load_checkpoint_model(checkpoint)
    logits, targets = collect_logits(model, dm.val_dataloader())
    temperature = fit_temperature(logits, targets)
    seconds = time.perf_counter() - start
    report = {"temperature": temperature, "val": scores(logits, targets, temperature), "seconds": seconds,
              "checkpoint": checkpoint.name, "pairs": len(targets)}  # fmt: skip
    atomic_write_json(path, report)
    log.info(
        "expert %s: temperature %.3f on its %d validation items", directory.name, temperature, len(targets)
    )
    return report


def find_or_train_experts(
    cfg: DictConfig, train: Callable[[DictConfig], dict[str, Any]]
) -> dict[str, Expert]:
    """Every expert of ``cfg.experts`` ({} without it), in MODALITIES' order."""
    experts = wanted(cfg)
    if experts and not cfg.experts.get("dir"):
        raise MMDigitsError("experts.dir: where the experts' runs go is not set")
    recipe_dm = functools.cache(lambda: ready_datamodule(cfg.data))  # built once, after the first expert
    return {m: find_or_train(cfg, m, train, recipe_dm) for m in experts}


def pretrained_spec(cfg: DictConfig, experts: dict[str, Expert]) -> dict[str, Any]:
    """``{"pretrained": spec}`` for the model's constructor: model.pretrained with each expert's checkpoint
    ({} without experts)."""
    if not experts:
        return {}
    given = cfg.model.get("pretrained")
    spec = OmegaConf.to_container(given, resolve=True) if given is not None else {}
    for m, e in experts.items():
        if spec.get(m):
            raise MMDigitsError(
                f"model.pretrained.{m}={spec[m]} and experts.{m} both name the {m} expert; keep one"
            )
        spec[m] = e.checkpoint
    return {"pretrained": {"heads": True, **spec}}


def record(experts: dict[str, Expert]) -> dict[str, Any]:
    return {m: asdict(e) for m, e in experts.items()}


def composition_report(experts: dict[str, Expert], loader: Any, device: Any = "cpu") -> dict[str, Any] | None:
    """The image and audio experts composed on ``loader``'s pairs (None unless both are experts): each rule's
    scores, the temperatures, and the experts' inference seconds and pairs/s. None without pairs."""
    if set(experts) != {"image", "audio"} or not len(loader):
        return None
    models = [load_checkpoint_model(experts[m].checkpoint) for m in ("image", "audio")]
    (img, aud), targets, seconds = expert_logits(models, loader, device)
    temperatures = [experts["image"].temperature, experts["audio"].temperature]
    report: dict[str, Any] = composition_scores(img, aud, targets, temperatures)
    report["temperatures"] = {"image": temperatures[0], "audio": temperatures[1]}
    report["inference_s"] = sum(seconds)
    report["pairs_per_s"] = len(targets) / sum(seconds) if sum(seconds) > 0 else None
    for rule in ("soft", "calibrated", "hard"):
        log.info("composed experts, %s: acc %.4f (%d/%d wrong)", rule, report[rule]["acc"],
                 report[rule]["errors"], report[rule]["n"])  # fmt: skip
    return report


def composition_device(cfg: DictConfig) -> torch.device:
    """Where the experts are composed: the recipe's GPU when its trainer uses one, else the CPU."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
