"""Our unimodal model next to the reference a user would pick instead, on the same split, in one command:

    python -m mmdigits.bench.peers [--experiment audio_only] [--seeds 0 1 2] [--data-dir DIR]
        [--members N] [OVERRIDE ...]

The experiment's task picks the peer. Audio (``experiment=audio_only``): aeon's MiniRocket
(``MiniRocketClassifier(random_state=0)``; ``pip install -e ".[peers]"``), fit on every utterance of the
training speakers (our train and validation parts), zero-padded to 93 frames. Image (``--experiment
image_only``): scikit-learn's ``SVC()`` (RBF kernel, its defaults), the classic kernel-machine reference on
MNIST, fit on every training image (0..1 pixels). Each is scored on the rows our run of that experiment is
scored on. Ours trains as the experiment does (its own seeds). Printed side by side: test accuracy, fit time
(ours: the whole run), items/s at test.

A match recipe that starts from experts (``--experiment match_from_experts``) is compared with its experts
composed without training (soft, calibrated soft and hard rules) and with the default run, per seed
(:mod:`mmdigits.bench.match`).

``--members N`` also scores ours as an ensemble of N runs per seed s (seeds s, s + 100, ...; the first is the
single run of seed s), as a user would: ``python -m mmdigits.evaluate ckpt_path=[...]``. Its time is the
members' runs plus that command; its rate, the members' rates combined (they run one after another).

``--folds K`` runs both on each fold of speaker-grouped cross-validation (``data=speaker_folds``): the peer
and our seeds on the same folds, with the paired per-fold differences (McNemar's test per fold and seed, a
paired permutation test over every fold's utterances); with ``--members N``, for our single runs (the seeds
given) and for our ensembles of N (seeds s, s + 100, ...), each against the peer.

Hydra overrides (``key=value`` words, anywhere in the command) change our runs, and the split the peer reads
where they touch the data: ``python -m mmdigits.bench.peers audio_encoder=rocket`` puts MiniRocket as our
encoder next to aeon's. What the options set (experiment, seed, data.dir, hydra.run.dir) is refused as one.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from mmdigits.bench.common import compose, quiet_logging
from mmdigits.bench.references import minirocket, svc
from mmdigits.tasks import TASKS, Task, get_task
from mmdigits.utils.run import ready_datamodule


class Peer(NamedTuple):
    name: str
    fit_and_score: Callable[[Any], dict[str, Any]]
    items: str  # what the table counts
    train: str  # what the peer is fit on, after the count
    test: str  # what the test split holds, after the count


PEERS = {  # by the one modality a digit task reads
    "audio": Peer(
        "aeon MiniRocket (random_state=0)", minirocket, "utterances", "utterances of the training speakers",
        "Spoken Arabic Digits, {n} test utterances of unseen speakers",
    ),
    "image": Peer(
        "scikit-learn SVC (RBF kernel, defaults)", svc, "images", "images of the training split",
        "MNIST, {n} test images",
    ),
}  # fmt: skip


def peer_for(task: Task) -> Peer | None:
    """The peer of a task that names a digit from one modality: the reference for that modality; None for
    any other task (binary, or reading both modalities)."""
    if task.binary or len(task.modalities) != 1:
        return None
    return PEERS.get(task.modalities[0])


OWN_KEYS = {  # what each of our runs gets from the command's options, not from an override
    "experiment": "--experiment",
    "seed": "--seeds",
    "data.dir": "--data-dir",
    "hydra.run.dir": "--out",
    "data.fold": "--folds",
}


def _command(module: str, args: list[str], run: Path) -> tuple[dict[str, Any], float]:
    """``python -m <module> args...`` as a user starts it: its run's metrics.json and its wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed ({run}):\n{proc.stderr[-2000:]}")
    return json.loads((run / "metrics.json").read_text()), wall


def ours(
    data_dir: str, experiment: str, seed: int, out: Path, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """One ``python -m mmdigits.train experiment=... [overrides]`` run."""
    run = out / f"{_slug([experiment, *overrides])}_seed{seed}"
    args = [
        f"experiment={experiment}",
        *overrides,
        f"data.dir={data_dir}",
        f"seed={seed}",
        f"hydra.run.dir={run}",
        "logger=csv",
        "overwrite=true",
        "~callbacks.rich_progress_bar",
        "trainer.enable_progress_bar=false",
    ]
    m, wall = _command("mmdigits.train", args, run)
    return {
        "acc": m["test/acc"],
        "wall_s": wall,
        "per_s": m.get("test/pairs_per_s"),
        "ckpt": m["best_model_path"],
        "dir": run,
    }


def ensemble(data_dir: str, members: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """``python -m mmdigits.evaluate ckpt_path=[...]`` on the members' checkpoints."""
    ckpts = ",".join(m["ckpt"] for m in members)
    m, wall = _command(
        "mmdigits.evaluate", [f"ckpt_path=[{ckpts}]", f"data.dir={data_dir}", f"hydra.run.dir={out}"], out
    )
    rates = [r["per_s"] for r in members]
    per_s = 1 / sum(1 / r for r in rates) if all(rates) else None
    return {
        "acc": m["test/acc"],
        "wall_s": wall + sum(r["wall_s"] for r in members),
        "per_s": per_s,
        "dir": out,
    }


def _slug(words: Sequence[str]) -> str:
    return re.sub(r"[^\w.+-]+", "-", "_".join(words)).strip("-")  # a path Hydra can take as a value


def _rate(r: dict[str, Any]) -> str:
    return f"{r['per_s']:,.0f}" if r["per_s"] else ""


# ----------------------------------------------------------------------------- --folds K
def _fold_data(args: argparse.Namespace, fold: int) -> tuple[list[str], Any]:
    over = [*args.overrides, "data=speaker_folds", f"data.folds={args.folds}", f"data.fold={fold}"]
    return over, compose([f"experiment={args.experiment}", *over])


def compare_on_folds(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Both on each speaker fold (``data=speaker_folds data.folds=K data.fold=i``); every fold, the mean over
    folds with its t interval, and the paired differences: McNemar's test per fold and seed, and a paired
    permutation test with the folds' utterances pooled (our seeds averaged per utterance). With
    ``--members N`` the same for our ensembles of N runs per seed, beside the single runs."""

    from mmdigits.analysis import stats

    kinds = ["runs"] + ([f"ensembles of {args.members}"] if args.members > 1 else [])
    rows: dict[str, list[tuple[str, ...]]] = {k: [] for k in kinds}
    our_acc: dict[str, list[float]] = {k: [] for k in kinds}
    our_pool: dict[str, dict[tuple[int | None, int], np.ndarray]] = {k: {} for k in kinds}
    peer_acc, peer_pool, peer = [], {}, None
    for fold in range(args.folds):
        over, cfg = _fold_data(args, fold)
        peer = peer_for(get_task(cfg.data.task))
        if peer is None:
            parser.error(f"experiment={args.experiment}: --folds compares the unimodal recipes with a peer")
        dm = ready_datamodule(cfg.data, ("fit", "test"))
        result = peer.fit_and_score(dm)
        if "missing" in result:
            parser.error(result["missing"])
        peer_acc.append(result["acc"])
        peer_pool[(fold, 0)] = result["correct"]
        accs: dict[str, list[float]] = {k: [] for k in kinds}
        for seed in args.seeds:
            members = [ours(str(cfg.data.dir), args.experiment, seed + 100 * k, Path(args.out), over)
                       for k in range(args.members)]  # fmt: skip
            scored = [("runs", f"seed {seed}", members[0])]
            if args.members > 1:
                out = Path(args.out) / f"ensemble{args.members}_{_slug(over)}_seed{seed}"
                ens = ensemble(str(cfg.data.dir), members, out)
                scored.append((kinds[1], f"ensemble of {args.members} (seed {seed})", ens))
            for kind, name, r in scored:
                pred = stats.read_predictions(r["dir"])
                correct = pred[:, 2] == pred[:, 1]
                if len(correct) != len(result["correct"]):
                    raise RuntimeError(
                        f"fold {fold}: ours scored {len(correct)} items, the peer {result['n']}"
                    )
                our_pool[kind][(fold, seed)] = correct
                accs[kind].append(r["acc"])
                p = stats.mcnemar_p(correct, result["correct"])
                diff = f"{r['acc'] - result['acc']:+.4f}"
                row = (f"{result['acc']:.4f}", f"{r['acc']:.4f}", diff, f"{p:.2g}", str(result["n"]))
                rows[kind].append((f"fold {fold}, {name}", *row))
        for kind in kinds:
            our_acc[kind].append(float(np.mean(accs[kind])))
    assert peer is not None
    pm, plo, phi = stats.seed_interval(peer_acc)
    print(f"\nspeaker-grouped {args.folds}-fold cross-validation, experiment={args.experiment}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"| fold | {peer.name} | ours | ours - peer | paired p | {peer.items} |\n|---|---|---|---|---|---|")
    for kind in kinds:
        p_all = stats.paired_permutation_p(stats.pool(our_pool[kind])[None], stats.pool(peer_pool)[None])
        om, olo, ohi = stats.seed_interval(our_acc[kind])
        label = "" if len(kinds) == 1 else f"{kind}: "
        cis = f"{pm:.4f} [{plo:.4f}, {phi:.4f}]", f"{om:.4f} [{olo:.4f}, {ohi:.4f}]"
        rows[kind].append(
            (f"{label}mean of {args.folds} folds [95 % CI]", *cis, f"{om - pm:+.4f}", f"{p_all:.2g}", "")
        )
        rows[kind].append(
            (f"{label}worst fold", f"{min(peer_acc):.4f}", f"{min(our_acc[kind]):.4f}", "", "", "")
        )
        for r in rows[kind]:
            print("| " + " | ".join(r) + " |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", help="the dataset directory (default: the experiment's data.dir)")
    parser.add_argument("--experiment", default="audio_only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--members", type=int, default=1, help="also score ensembles of N runs per seed")
    parser.add_argument("--out", default="logs/bench/peers", help="where our runs go")
    parser.add_argument(
        "--folds", type=int, default=0, help="speaker-grouped cross-validation: both on each of K folds"
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for our runs, e.g. audio_encoder=rocket (anywhere)"
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    # key=value words are overrides wherever they stand, so that `--seeds 0 1 audio_encoder=rocket` works
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = parser.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides
    for a in overrides:
        key = a.lstrip("+~").split("=")[0]
        if key in OWN_KEYS:
            parser.error(f"{a}: the command sets {key} itself; use {OWN_KEYS[key]}")
    warnings.filterwarnings("ignore")
    if args.folds:
        return compare_on_folds(args, parser)

    data = [f"data.dir={args.data_dir}"] if args.data_dir else []
    cfg = compose([f"experiment={args.experiment}", *args.overrides, *data])
    data_dir = str(cfg.data.dir)  # every run of the command reads this one
    task = get_task(cfg.data.task)
    if cfg.get("experts"):  # a recipe started from experts: next to them composed, and the default run
        from mmdigits.bench.match import compare_with_experts

        if args.members > 1:
            parser.error(f"--members: experiment={args.experiment} is compared with its experts, per seed")
        return compare_with_experts(args, data)
    peer = peer_for(task)
    if peer is None:
        with_peer = sorted(name for name in TASKS if peer_for(get_task(name)) is not None)
        parser.error(
            f"experiment={args.experiment} solves task {task.name!r}; the peers are for the unimodal "
            f"tasks {with_peer} (e.g. --experiment audio_only or --experiment image_only), and for match "
            "recipes that start from experts (--experiment match_from_experts)"
        )
    dm = ready_datamodule(cfg.data, ("fit", "test"))
    n_train, n_test = len(dm.train_set) + len(dm.val_set), len(dm.test_set)

    rows = []
    result = peer.fit_and_score(dm)
    if "missing" in result:
        print(f"{peer.name} skipped: {result['missing']}", file=sys.stderr)
        rows.append((peer.name, "not installed", "", "", result["missing"]))
    else:
        acc = f"{result['acc']:.4f} ({result['errors']}/{result['n']} wrong)"
        note = f"fit on the {n_train} {peer.train}"
        rows.append((peer.name, acc, f"{result['fit_s']:.1f}", f"{result['per_s']:,.0f}", note))
    accs, ens_accs = [], []
    label = " ".join([f"experiment={args.experiment}", *args.overrides])
    run_note = (
        "whole run: train, validate, test" if cfg.data.val_fraction else "whole run: train on every row, test"
    )
    ensemble_tag = f"ensemble{args.members}_" + (_slug(args.overrides) + "_" if args.overrides else "")
    for seed in args.seeds:
        members = []
        for k in range(args.members):
            r = ours(data_dir, args.experiment, seed + 100 * k, Path(args.out), args.overrides)
            members.append(r)
            accs.append(r["acc"])
            name = f"ours, {label}, seed={seed + 100 * k}"
            rows.append((name, f"{r['acc']:.4f}", f"{r['wall_s']:.1f}", _rate(r), run_note))
        if args.members > 1:
            r = ensemble(data_dir, members, Path(args.out) / f"{ensemble_tag}seed{seed}")
            ens_accs.append(r["acc"])
            name = f"ours, ensemble of the {args.members} runs above (seed {seed})"
            rows.append(
                (name, f"{r['acc']:.4f}", f"{r['wall_s']:.1f}", _rate(r), "the members' runs + evaluate")
            )
    for what, values in (("seeds", accs), (f"ensembles of {args.members}", ens_accs)):
        if len(values) > 1:
            mean = f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
            rows.append((f"ours, mean of {len(values)} {what}", mean, "", "", ""))
    print(f"\n{peer.test.format(n=n_test)}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| model | test acc | fit / run s | {peer.items}/s | notes |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    quiet_logging()  # the command's own output only; in-process callers keep their logging
    sys.exit(main())
