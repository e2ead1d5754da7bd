"""python -m mmdigits.bench.peers --folds K: the peer and our recipe on the same speaker folds."""

from __future__ import annotations

import numpy as np
import pytest

from mmdigits.analysis.runs import runs_frame
from mmdigits.data.build import build_dataset

SMALL = {"n_train": 300, "n_test": 150, "match_rate": 0.3}


def test_peer_and_ours_and_our_ensembles_on_the_same_speaker_folds(tiny_raw_dir, tmp_path, capsys):
    pytest.importorskip("aeon")
    from mmdigits.bench.peers import main

    for fold in (0, 1):  # the builds data=speaker_folds points at (built here without checksums)
        out = tmp_path / "data" / "speaker_folds" / f"arabic_k2_fold{fold}"
        opts = {"verify": False, "download": False, "split": "speaker_folds", "folds": 2, "fold": fold}
        build_dataset(out, tiny_raw_dir, **opts, **SMALL)
    args = [
        "--folds",
        "2",
        "--seeds",
        "0",
        "--members",
        "2",
        "--out",
        str(tmp_path / "runs"),
        "trainer.max_epochs=2",
        f"paths.data_dir={tmp_path / 'data'}",
        "data.build={n_train: 300, n_test: 150, match_rate: 0.3}",
    ]
    assert main(args) == 0
    rows = [
        r.split(" | ") for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "---" not in r
    ]
    assert rows[0][1].startswith("aeon MiniRocket")
    for what in ("seed 0", "ensemble of 2 (seed 0)"):
        folds = [r for r in rows if r[0].startswith("| fold ") and r[0].endswith(f", {what}")]
        assert [r[0] for r in folds] == [f"| fold 0, {what}", f"| fold 1, {what}"]
        for r in folds:
            peer, ours, diff = float(r[1]), float(r[2]), float(r[3])
            assert diff == pytest.approx(ours - peer, abs=1e-4) and 0 <= float(r[4]) <= 1
        kind = "ensembles of 2" if "ensemble" in what else "runs"
        mean = next(r for r in rows if r[0].startswith(f"| {kind}: mean of 2 folds"))
        expected = (float(folds[0][2]) + float(folds[1][2])) / 2
        assert float(mean[2].split()[0]) == pytest.approx(expected, abs=1e-4)
    runs = tmp_path / "runs"
    assert len(list(runs.glob("audio_only*fold-0*seed0/test_predictions.npy"))) == 1
    assert len(list(runs.glob("audio_only*fold-0*seed100/test_predictions.npy"))) == 1  # the second member
    ensembles = sorted(runs.glob("ensemble2*fold-0*/test_predictions.npy"))
    assert len(ensembles) == 1 and len(list(runs.glob("ensemble2*fold-1*/test_predictions.npy"))) == 1
    single = np.load(next(runs.glob("audio_only*fold-0*seed0/test_predictions.npy")))
    ensemble = np.load(ensembles[0])  # the same rows (the test pairs' own indices), so they pair
    assert np.array_equal(ensemble[:, :2], single[:, :2]) and not np.array_equal(
        single[:, 0], np.arange(len(single))
    )
    report = runs_frame([runs])  # each ensemble is read as of its members' fold and first seed
    ensembles = report[report["run"].str.startswith("ensemble2")]
    assert sorted(ensembles["fold"]) == [0, 1] and set(ensembles["seed"]) == {0}


def test_the_fold_is_the_commands_to_set(capsys):
    from mmdigits.bench.peers import main

    with pytest.raises(SystemExit):
        main(["--folds", "2", "data.fold=1"])
    assert "use --folds" in capsys.readouterr().err
