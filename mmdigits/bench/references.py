"""The outside references a user would pick instead of our unimodal models, fit and scored on our splits:
aeon's MiniRocket for spoken digits, scikit-learn's RBF-kernel SVC for written ones (``mmdigits.bench.peers``
and ``mmdigits.bench.match`` print them beside ours)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

PAD = 93  # the longest Arabic utterance: MiniRocket needs equal lengths


def _padded(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n, 13, 93) raw MFCC zero-padded past each utterance, and the digits, of a BatchDataset."""
    audio, _ = ds.t.audio(ds.aud, PAD)
    return audio.transpose(1, 2).numpy().astype(np.float64), ds.target.numpy()


def _pixels(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n, 784) pixels on the 0..1 scale, and the digits, of a BatchDataset."""
    return ds.t.images[ds.rows].numpy().astype(np.float32) / 255.0, ds.target.numpy()


def _fit_and_score(clf: Any, dm: Any, features: Any) -> dict[str, Any]:
    """Fit ``clf`` on the train and validation parts' ``features``, score it on the test part."""
    x_train, y_train = (np.concatenate(a) for a in zip(features(dm.train_set), features(dm.val_set)))
    x_test, y_test = features(dm.test_set)
    start = time.perf_counter()
    clf.fit(x_train, y_train)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = clf.predict(x_test)
    rate = len(x_test) / (time.perf_counter() - start)
    return {"acc": float((pred == y_test).mean()), "errors": int((pred != y_test).sum()), "n": len(y_test),
            "fit_s": fit_s, "per_s": rate, "correct": pred == y_test}  # fmt: skip


def minirocket(dm: Any) -> dict[str, Any]:
    """aeon's MiniRocket on the datamodule's audio-digit split; ``{"missing": hint}`` without aeon."""
    try:
        from aeon.classification.convolution_based import MiniRocketClassifier
    except ImportError:
        return {"missing": 'aeon is not installed: pip install -e ".[peers]"'}
    return _fit_and_score(MiniRocketClassifier(random_state=0), dm, _padded)


def svc(dm: Any) -> dict[str, Any]:
    """scikit-learn's RBF-kernel SVC (its defaults; a larger kernel cache, which changes only the speed) on
    the datamodule's image-digit split."""
    from sklearn.svm import SVC

    return _fit_and_score(SVC(cache_size=2000), dm, _pixels)
