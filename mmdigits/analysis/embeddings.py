"""t-SNE + KMeans look at a model's test-set embeddings: ``python -m mmdigits.embed ckpt_path=...``.

Image, audio and fused embeddings (fused = the concat fusion's hidden layer, else the concatenated modality
features) are clustered with KMeans(10) in feature space; purity and adjusted Rand index are measured against
the true digits. With per-modality heads (late/agreement fusions), the argmax latent class of each modality is
mapped to digits by Hungarian assignment, which makes it an unsupervised digit classifier.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmdigits.models.fusion import ConcatFusion
from mmdigits.models.module import MultimodalModule
from mmdigits.utils.io import atomic_savefig

log = logging.getLogger("mmdigits.embed")


@torch.no_grad()
def collect_embeddings(model: MultimodalModule, loader: Any) -> dict[str, np.ndarray]:
    """Per-row arrays in row order: ``<modality>`` features, ``fused``, ``<modality>_latent``
    (argmax head class when the fusion has per-modality heads), ``<modality>_digit`` labels when
    present, ``target`` and ``index``."""
    model.eval()
    names = model.modalities
    parts: dict[str, list[np.ndarray]] = {}

    def add(key: str, x: torch.Tensor) -> None:
        parts.setdefault(key, []).append((x.float() if x.is_floating_point() else x).cpu().numpy())

    for batch in loader:
        feats = model.encode(batch)
        for m, f in zip(names, feats):
            add(m, f)
        fusion = model.fusion
        if isinstance(fusion, ConcatFusion) and len(fusion.head) > 1:
            add("fused", fusion.head[:-1](torch.cat(feats, dim=-1)))
        else:
            add("fused", torch.cat(feats, dim=-1))
        heads = model.fuse(feats).modality_logits
        if hasattr(fusion, "combine") and heads is not None:  # the fusion's own heads, not aux probes
            for m, lg in zip(names, heads):
                add(f"{m}_latent", lg.argmax(-1))
        for key in ("image_digit", "audio_digit", "target", "index"):
            if key in batch:
                add(key, batch[key])
    out = {k: np.concatenate(v) for k, v in parts.items()}
    if "index" in out:  # loaders may sort rows by length
        order = np.argsort(out["index"], kind="stable")
        out = {k: v[order] for k, v in out.items()}
    hidden = isinstance(model.fusion, ConcatFusion) and len(model.fusion.head) > 1
    out["fused_source"] = np.array("concat fusion hidden layer" if hidden else "concatenated features")
    return out


def purity(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of points whose cluster's majority label is their own label."""
    hits = sum(np.bincount(labels[clusters == c]).max() for c in np.unique(clusters))
    return float(hits / len(labels))


def cluster_scores(x: np.ndarray, labels: np.ndarray, seed: int = 0, k: int = 10) -> dict[str, float]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(x)
    clusters = KMeans(n_clusters=min(k, len(x)), n_init=10, random_state=seed).fit_predict(z)
    return {
        "purity": purity(clusters, labels),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "n": len(x),
    }


def latent_mapping(latent: np.ndarray, digits: np.ndarray, k: int = 10) -> dict[str, Any]:
    """Hungarian assignment latent class -> digit maximising agreement; accuracy of the mapped prediction."""
    from scipy.optimize import linear_sum_assignment

    n_lat = max(int(latent.max()) + 1, k)
    conf = np.zeros((n_lat, k), np.int64)
    np.add.at(conf, (latent, digits), 1)
    rows, cols = linear_sum_assignment(-conf)
    mapping = {int(r): int(c) for r, c in zip(rows, cols)}
    return {
        "mapping": mapping,
        "acc": float(conf[rows, cols].sum() / len(latent)),
        "identity_acc": float(np.mean(latent == digits)),
        "confusion": conf.tolist(),
    }


def tsne(x: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(StandardScaler().fit_transform(x))


def views(emb: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Embedding name -> (features, digit labels or None); fused uses pairs whose two digits agree."""
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for m in ("image", "audio"):
        if m in emb:
            out[m] = (emb[m], emb.get(f"{m}_digit"))
    same = None
    if "image_digit" in emb and "audio_digit" in emb:
        same = emb["image_digit"] == emb["audio_digit"]
    if sum(m in emb for m in ("image", "audio")) == 2:
        if same is None:
            out["fused"] = (emb["fused"], None)
        else:
            out["fused"] = (emb["fused"][same], emb["image_digit"][same])
    return out


def analyse(
    emb: dict[str, np.ndarray], max_points: int = 2000, seed: int = 0, perplexity: float = 30.0
) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray | None]]]:
    """(metrics, name -> (2-D t-SNE points, labels)) for a random subset of at most ``max_points`` rows."""
    n = len(next(v for k, v in emb.items() if k in ("image", "audio")))
    rows = np.sort(np.random.default_rng(seed).permutation(n)[:max_points])
    sub = {k: (v[rows] if v.ndim and len(v) == n else v) for k, v in emb.items()}
    metrics: dict[str, Any] = {"n_points": len(rows), "fused_source": str(emb["fused_source"])}
    has_labels = any(k.endswith("_digit") for k in sub)
    if not has_labels:
        metrics["note"] = "no digit labels in this data: purity/ARI and latent mapping not computed"
        log.warning(metrics["note"])
    points = {}
    for name, (x, labels) in views(sub).items():
        if len(x) < 5:
            continue
        if labels is not None:
            metrics[name] = cluster_scores(x, labels, seed)
        points[name] = (tsne(x, seed, perplexity), labels)
    for m in ("image", "audio"):
        if f"{m}_latent" in sub and f"{m}_digit" in sub:
            metrics.setdefault("latent", {})[m] = latent_mapping(sub[f"{m}_latent"], sub[f"{m}_digit"])
    return metrics, points


def plot_embeddings(points: dict[str, tuple[np.ndarray, np.ndarray | None]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(points)), figsize=(5 * max(1, len(points)), 4.6), squeeze=False)
    for ax, (name, (xy, labels)) in zip(axes[0], points.items()):
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=6)
        ax.set(title=f"{name} (t-SNE)", xticks=[], yticks=[])
    if points and next(iter(points.values()))[1] is not None:
        fig.colorbar(sc, ax=axes[0].tolist(), ticks=range(10), label="digit")
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path
