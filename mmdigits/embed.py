"""t-SNE + KMeans look at a model's test-set embeddings: ``python -m mmdigits.embed ckpt_path=...``
(see :mod:`mmdigits.analysis.embeddings`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from mmdigits.analysis.embeddings import analyse, collect_embeddings, plot_embeddings
from mmdigits.models.loading import load_model_and_data
from mmdigits.utils.cli import clean_errors
from mmdigits.utils.run import write_json
from mmdigits.utils.rundir import claim_output_dir, claimed

log = logging.getLogger("mmdigits.embed")


def embed(cfg: DictConfig) -> dict[str, Any]:
    model, dm = load_model_and_data(cfg)
    dm.prepare_data()
    dm.setup("predict")
    emb = collect_embeddings(model, dm.predict_dataloader())
    metrics, points = analyse(emb, int(cfg.max_points), int(cfg.seed), float(cfg.perplexity))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_embeddings(points, out / "embeddings.png")
    metrics["ckpt_path"] = str(cfg.ckpt_path)
    write_json(out / "embed_metrics.json", metrics)
    summary = {k: v for k, v in metrics.items() if isinstance(v, dict) and "ari" in v}
    log.info("cluster scores: %s", summary)
    for m, r in metrics.get("latent", {}).items():
        log.info("%s latent classes as digits (Hungarian): acc %.4f, map %s", m, r["acc"], r["mapping"])
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="embed")
@clean_errors
def main(cfg: DictConfig) -> None:
    with claimed(cfg, claim_output_dir):
        embed(cfg)


if __name__ == "__main__":
    main()
