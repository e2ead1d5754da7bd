"""mmdigits.embed: t-SNE/KMeans analysis and the latent-class -> digit mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmdigits.analysis.embeddings import analyse, latent_mapping, purity
from mmdigits.embed import embed
from tests.hydra_utils import compose_cfg
from tests.trained_runs import seed_runs


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dataset_dir):
    return seed_runs(tmp_path_factory.getbasetemp(), tiny_dataset_dir)[0]


def test_purity_and_hungarian_mapping():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert purity(np.array([5, 5, 7, 7, 7, 9]), labels) == pytest.approx(5 / 6)
    latent = (labels + 3) % 10  # a permutation of the digits
    res = latent_mapping(latent, labels)
    assert res["acc"] == 1.0 and res["identity_acc"] == 0.0
    assert res["mapping"][3] == 0 and res["mapping"][5] == 2


def test_analyse_without_labels_says_so():
    rng = np.random.default_rng(0)
    emb = {"image": rng.normal(size=(30, 4)), "audio": rng.normal(size=(30, 3))}
    emb["fused"] = np.concatenate([emb["image"], emb["audio"]], 1)
    emb["fused_source"] = np.array("concatenated features")
    metrics, points = analyse(emb, max_points=20)
    assert "no digit labels" in metrics["note"] and "image" not in metrics
    assert points["fused"][0].shape == (20, 2) and points["fused"][1] is None


def test_embed_cli_function_writes_plot_and_metrics(run, tmp_path, tiny_dataset_dir):
    cfg = compose_cfg(
        "embed", [f"ckpt_path={run['ckpt']}", f"data.dir={tiny_dataset_dir}", "max_points=150"], tmp_path
    )
    metrics = embed(cfg)
    saved = json.loads((tmp_path / "embed_metrics.json").read_text())
    assert saved["n_points"] == 150
    for name in ("image", "audio", "fused"):
        assert 0 < metrics[name]["purity"] <= 1 and -1 <= metrics[name]["ari"] <= 1
    assert metrics["image"]["n"] == 150 and metrics["fused"]["n"] < 150  # fused: same-digit pairs only
    # agreement fusion trained with digit supervision: its latent classes are (mostly) the digits
    for m in ("image", "audio"):
        lat = saved["latent"][m]
        assert sorted(lat["mapping"].values()) == list(range(10))
        assert lat["acc"] >= lat["identity_acc"] and lat["acc"] > 0.3
    assert (tmp_path / "embeddings.png").stat().st_size > 1000
