"""Side-by-side benchmarks: ``python -m mmdigits.bench [--data-dir DIR] [--only throughput|...]``.

Prints one table with:
  throughput  training pairs/s of the default model and inference pairs/s (default and match_accurate's
              model vs the seed model, taking turns; the median of --rounds passes each)
  precision   training pairs/s under bfloat16 autocast (trainer=cpu_bf16) vs float32, taking turns, for the
              image-only, audio-only and default models
  overhead    one epoch through Lightning vs a plain PyTorch loop, same model/data/process (target <= 1.10)
  padding     length-bucketed dynamic padding vs padding to 93 frames, same model (target <= 0.7),
              with the test accuracy each reaches (mean ± std over seeds); the pad-93 baseline is timed
              with the dense and the packed RNN, and the ratio uses the faster
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from typing import Any

import lightning as L
import torch

from mmdigits.bench.common import compose, quiet_trainer
from mmdigits.utils.run import ready_datamodule

log = logging.getLogger("mmdigits.bench")


def _build(overrides: list[str], data_dir: str) -> tuple[Any, Any]:
    from hydra.utils import instantiate

    cfg = compose([f"data.dir={data_dir}", *overrides])
    dm = ready_datamodule(cfg.data)
    model = instantiate(cfg.model)
    model.set_normalization(dm.stats)
    return model, dm


def plain_epoch(model: Any, loader: Any, limit: int | None, bf16: bool = False) -> float:
    """The reference: a hand-written loop doing exactly what Lightning's training loop does for us
    (``bf16``: under bfloat16 autocast, as Lightning's ``bf16-mixed`` precision on CPU)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model._step(batch, "train")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def lightning_epoch(model: Any, dm: Any, limit: int | None) -> float:
    model.hparams.scheduler = None
    model.hparams.optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=limit or 1.0, limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=dm.train_dataloader())
    return time.perf_counter() - start


PRECISION_MODELS = (
    ("image_only", ["experiment=image_only"]),
    ("audio_only", ["experiment=audio_only"]),
    ("default", []),
)


def bench_overhead(data_dir: str, limit: int | None) -> dict[str, float]:
    model, dm = _build([], data_dir)
    loader = dm.train_dataloader()
    n = min(limit or len(loader), len(loader))
    plain_epoch(model, loader, 3)  # warm-up (allocator, oneDNN kernels)
    t_plain = plain_epoch(model, loader, n)
    t_light = lightning_epoch(model, dm, n)
    t_plain2 = plain_epoch(model, loader, n)  # again, so drift on a busy machine shows
    t_ref = min(t_plain, t_plain2)
    return {"batches": n, "plain_s": t_ref, "lightning_s": t_light, "ratio": t_light / t_ref}


def bench_throughput(data_dir: str, limit: int | None, rounds: int = 5) -> dict[str, float]:
    """Training pairs/s of the default model; inference pairs/s of the default, seed and match_accurate
    models. The inference arms take turns for ``rounds`` rounds and each reports its median, so a machine
    whose speed drifts (this one moves by 30 % within minutes) slows every arm alike."""
    model, dm = _build([], data_dir)
    loader = dm.train_dataloader()
    n = min(limit or len(loader), len(loader))
    pairs = sum(len(b["target"]) for _, b in zip(range(n), loader))
    train_s = plain_epoch(model, loader, n)
    out = {"train_pairs_per_s": pairs / train_s}
    models = (("default", []), ("seed", ["model=seed"]), ("accurate", ["experiment=match_accurate"]))
    arms = {}
    for name, overrides in models:
        model, dm = _build(overrides, data_dir)
        dm.setup("predict")
        arms[name] = (model.eval(), dm.predict_dataloader())
        with torch.inference_mode():
            model.predict_proba(next(iter(arms[name][1])))  # warm-up (allocator, oneDNN kernels), once
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, (model, loader) in arms.items():
            rates[name].append(_inference_rate(model, loader))
    for name, r in rates.items():
        out[f"predict_pairs_per_s_{name}"] = statistics.median(r)
    return out


def bench_precision(data_dir: str, limit: int | None, rounds: int = 5) -> dict[str, float]:
    """Training pairs/s in float32 and under bfloat16 autocast (``trainer=cpu_bf16``), the two taking turns
    on the same batches for ``rounds`` rounds (median of each), for the image-only, audio-only and default
    models. The gain depends on the CPU's bfloat16 units (AVX512_BF16, AMX)."""
    out = {}
    for name, overrides in PRECISION_MODELS:
        model, dm = _build(overrides, data_dir)
        batches = [b for _, b in zip(range(limit or 30), dm.train_dataloader())]
        pairs = sum(len(b["target"]) for b in batches)
        for bf16 in (False, True):
            plain_epoch(model, batches, 3, bf16)  # warm-up (allocator, oneDNN kernels of each precision)
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for bf16, r in rates.items():
                r.append(pairs / plain_epoch(model, batches, None, bf16))
        out[f"{name}_fp32"], out[f"{name}_bf16"] = (
            statistics.median(rates[False]),
            statistics.median(rates[True]),
        )
    return out


def _bf16_units() -> str:
    """The CPU's bfloat16 units as torch sees them (torch.cpu's probes are private: absent -> not listed)."""
    probes = (("AVX512_BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
    return ", ".join(name for name, probe in probes if getattr(torch.cpu, probe, lambda: False)())


def _inference_rate(model: Any, loader: Any) -> float:
    with torch.inference_mode():
        start, n = time.perf_counter(), 0
        for batch in loader:
            model.predict_proba(batch)
            n += len(batch["index"])
    return n / (time.perf_counter() - start)


def bench_padding(data_dir: str, epochs: int, seeds: int, extra: list[str] | None = None) -> dict[str, Any]:
    """Same CRNN, audio-digit task: bucketed dynamic padding vs fixed 93 frames, ``seeds`` runs per arm.

    The pad-93 baseline runs with both RNN implementations (dense, which reads the padding, and packed,
    which skips it; same weights give the same outputs) and the ratio is taken against the faster one.
    Epoch time covers training and validation; accuracy is on the test split (unseen speakers).
    """
    import numpy as np

    pad93 = ["data.bucketing=false", "data.pad_to=93"]
    arms = {
        "bucketed": ["data.bucketing=true"],
        "pad93": pad93,
        "pad93_packed": [*pad93, "model.audio_encoder.packed=true"],
    }
    times: dict[str, list[float]] = {a: [] for a in arms}
    accs: dict[str, list[float]] = {a: [] for a in arms}
    for seed in range(seeds):
        for name, overrides in arms.items():  # interleaved, so drift on a busy machine hits both arms
            L.seed_everything(seed, workers=True)
            model, dm = _build(
                ["model=audio_only", "audio_encoder=crnn", f"seed={seed}", *overrides, *(extra or [])],
                data_dir,
            )
            trainer = quiet_trainer(max_epochs=epochs, num_sanity_val_steps=0)
            start = time.perf_counter()
            trainer.fit(model, datamodule=dm)
            times[name].append((time.perf_counter() - start) / epochs)
            accs[name].append(trainer.test(model, datamodule=dm, verbose=False)[0]["test/acc"])
    out: dict[str, Any] = {}
    for name in arms:
        out[f"{name}_epoch_s"] = float(np.mean(times[name]))
        out[f"{name}_acc_mean"] = float(np.mean(accs[name]))
        out[f"{name}_acc_std"] = float(np.std(accs[name]))
    for name in ("pad93", "pad93_packed"):
        out[f"{name}_ratio"] = out["bucketed_epoch_s"] / out[f"{name}_epoch_s"]
    out["baseline"] = min(("pad93", "pad93_packed"), key=lambda a: out[f"{a}_epoch_s"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="Dataset")
    parser.add_argument("--batches", type=int, default=None, help="limit batches per timed epoch")
    parser.add_argument("--rounds", type=int, default=5, help="inference passes per model, taken in turns")
    parser.add_argument("--padding-epochs", type=int, default=10)
    parser.add_argument("--padding-seeds", type=int, default=3)
    parser.add_argument("--only", choices=["throughput", "precision", "overhead", "padding"], default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    rows: list[tuple[str, str, str, str]] = []
    if args.only in (None, "throughput"):
        t = bench_throughput(args.data_dir, args.batches, args.rounds)
        rows.append(("train pairs/s (default model)", f"{t['train_pairs_per_s']:.0f}", "", ""))
        seed = t["predict_pairs_per_s_seed"]
        rows.append(
            (
                f"predict pairs/s, default vs seed (median of {args.rounds} rounds in turn)",
                f"{t['predict_pairs_per_s_default']:.0f}",
                f"{t['predict_pairs_per_s_seed']:.0f}",
                f"ratio {t['predict_pairs_per_s_default'] / seed:.2f}; >= 20000 (default)",
            )
        )
        rows.append(
            (
                "predict pairs/s, experiment=match_accurate's model vs seed",
                f"{t['predict_pairs_per_s_accurate']:.0f}",
                f"{t['predict_pairs_per_s_seed']:.0f}",
                f"ratio {t['predict_pairs_per_s_accurate'] / seed:.2f}",
            )
        )
    if args.only in (None, "precision"):
        p = bench_precision(args.data_dir, args.batches, args.rounds)
        for name, _ in PRECISION_MODELS:
            rows.append(
                (
                    f"train pairs/s, bf16 autocast vs float32 ({name} model, median of {args.rounds} rounds)",
                    f"{p[f'{name}_bf16']:.0f}",
                    f"{p[f'{name}_fp32']:.0f}",
                    f"ratio {p[f'{name}_bf16'] / p[f'{name}_fp32']:.2f}",
                )
            )
    if args.only in (None, "overhead"):
        o = bench_overhead(args.data_dir, args.batches)
        rows.append(
            (
                f"epoch s, Lightning vs plain loop ({o['batches']} batches)",
                f"{o['lightning_s']:.2f}",
                f"{o['plain_s']:.2f}",
                f"ratio {o['ratio']:.3f} (target <= 1.10)",
            )
        )
    if args.only in (None, "padding"):
        p = bench_padding(args.data_dir, args.padding_epochs, args.padding_seeds)
        label = f"crnn, audio digit, {args.padding_epochs} epochs x {args.padding_seeds} seeds"
        base = p["baseline"]
        for arm in ("pad93", "pad93_packed"):
            rows.append(
                (
                    f"epoch s, bucketed vs {arm} ({label})",
                    f"{p['bucketed_epoch_s']:.2f}",
                    f"{p[f'{arm}_epoch_s']:.2f}",
                    f"ratio {p[f'{arm}_ratio']:.3f}"
                    + (" (faster baseline; target <= 0.7)" if arm == base else ""),
                )
            )
            rows.append(
                (
                    f"test acc (unseen speakers), bucketed vs {arm}",
                    f"{p['bucketed_acc_mean']:.4f} ± {p['bucketed_acc_std']:.4f}",
                    f"{p[f'{arm}_acc_mean']:.4f} ± {p[f'{arm}_acc_std']:.4f}",
                    "no loss of accuracy",
                )
            )
    cpu = (
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bfloat16 units: {_bf16_units() or 'none'}"
    )
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}")
    print("| measure | ours | baseline | ratio / target |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    logging.getLogger("lightning").setLevel(logging.ERROR)  # the command's own output only
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    main()
