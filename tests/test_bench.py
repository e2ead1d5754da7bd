"""``python -m mmdigits.bench``: every row of the side-by-side table comes out, with consistent ratios."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_bench_table(tiny_dataset_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmdigits.bench.__main__ import main

    main(
        [
            "--data-dir",
            str(tiny_dataset_dir),
            "--batches",
            "2",
            "--rounds",
            "2",
            "--padding-epochs",
            "1",
            "--padding-seeds",
            "1",
        ]
    )
    rows = [
        r.split(" | ") for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "---" not in r
    ]
    table = {r[0].lstrip("| "): r[1:] for r in rows[1:]}
    assert float(table["train pairs/s (default model)"][0]) > 0
    for name in ("image_only", "audio_only", "default"):
        bf16, fp32, ratio = table[
            f"train pairs/s, bf16 autocast vs float32 ({name} model, median of 2 rounds)"
        ]
        assert float(bf16) > 0 and float(fp32) > 0
        assert float(re.match(r"ratio ([\d.]+)", ratio).group(1)) == pytest.approx(
            float(bf16) / float(fp32), abs=0.01
        )
    prefixes = ("predict pairs/s, default vs seed (median of 2 rounds", "predict pairs/s, experiment=match_")
    for prefix in prefixes:
        ours, seed, ratio = table[next(k for k in table if k.startswith(prefix))]
        stated = float(re.match(r"ratio ([\d.]+)", ratio).group(1))
        assert float(ours) > 0 and float(seed) > 0
        assert stated == pytest.approx(float(ours) / float(seed), rel=0.01, abs=0.01)
    epoch_rows = {k: v for k, v in table.items() if k.startswith("epoch s, bucketed vs")}
    assert len(epoch_rows) == 2, table.keys()  # pad-93 with the dense and with the packed RNN
    baselines = 0
    for ours, base, ratio in epoch_rows.values():
        stated = float(re.match(r"ratio ([\d.]+)", ratio).group(1))
        o, b = float(ours), float(base)  # printed to 0.01 s
        assert (o - 0.005) / (b + 0.005) - 1e-3 <= stated <= (o + 0.005) / max(b - 0.005, 1e-9) + 1e-3
        baselines += "faster baseline" in ratio
    assert baselines == 1
    assert sum(k.startswith("test acc (unseen speakers)") for k in table) == 2
    lightning = table[next(k for k in table if k.startswith("epoch s, Lightning vs plain loop"))]
    assert float(re.match(r"ratio ([\d.]+)", lightning[2]).group(1)) > 0


def test_data_bench_reports_build_time_and_loader_speed(
    tiny_raw_dir: Path, tiny_dataset_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m mmdigits.bench.data --build-from RAW_DIR``: the build's seconds, then pairs/s for every
    sampler x bucketing setting (the speeds the integration tests leave to the benchmark)."""
    from mmdigits.bench.data import main
    from mmdigits.data.samplers import SAMPLERS

    build = ["--build-from", str(tiny_raw_dir), "--no-verify"]
    assert main(["--dir", str(tiny_dataset_dir), "--batches", "1", *build]) == 0
    out = capsys.readouterr().out
    built = re.search(r"^build \(raw corpora -> challenge files, default settings\): ([\d.]+) s$", out, re.M)
    assert built and float(built[1]) > 0
    rows = [r.split() for r in out.splitlines() if r.split()[:1] in ([s] for s in SAMPLERS)]
    assert sorted((r[0], r[1]) for r in rows) == sorted((s, b) for s in SAMPLERS for b in ("False", "True"))
    assert all(float(r[4]) > 0 for r in rows)  # pairs/s


def test_peers_bench_says_how_to_install_a_missing_peer(tiny_dataset_dir, monkeypatch):
    import builtins

    from mmdigits.bench import references

    real_import = builtins.__import__

    def no_aeon(name, *args, **kwargs):
        if name.startswith("aeon"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_aeon)
    assert references.minirocket(None) == {"missing": 'aeon is not installed: pip install -e ".[peers]"'}


def test_each_unimodal_digit_task_gets_the_peer_of_its_modality() -> None:
    """The task object picks the peer: MiniRocket for the spoken digit, SVC for the written one, none for a
    task that reads both modalities."""
    from mmdigits.bench.peers import peer_for
    from mmdigits.tasks import TASKS, get_task

    chosen = {name: getattr(peer_for(get_task(name)), "name", None) for name in TASKS}
    assert chosen == {
        "audio_digit": "aeon MiniRocket (random_state=0)",
        "image_digit": "scikit-learn SVC (RBF kernel, defaults)",
        "match": None,
        "digit": None,
    }


def test_peers_bench_side_by_side(tiny_dataset_dir, tmp_path, capsys):
    """MiniRocket and our audio-only runs on the same tiny split, one table (CI installs the peers extra);
    ours also as an ensemble of its two runs, scored by evaluate."""
    pytest.importorskip("aeon")
    from mmdigits.bench.peers import main

    args = ["--data-dir", str(tiny_dataset_dir), "--seeds", "0", "--members", "2", "--out", str(tmp_path)]
    assert main([*args, "--experiment", "audio_only", "trainer.max_epochs=2"]) == 0
    out = capsys.readouterr().out
    rows = [r for r in out.splitlines() if r.startswith("| ") and "---" not in r]
    peer = next(r for r in rows if "MiniRocket" in r).split(" | ")
    assert 0 <= float(peer[1].split()[0]) <= 1 and float(peer[2]) > 0 and "wrong" in peer[1]
    ours = [r.split(" | ") for r in rows if r.startswith("| ours, experiment=audio_only")]
    assert [r[0] for r in ours] == [
        "| ours, experiment=audio_only trainer.max_epochs=2, seed=0",
        "| ours, experiment=audio_only trainer.max_epochs=2, seed=100",
    ]
    assert all(r[4] == "whole run: train on every row, test |" for r in ours)  # no validation part
    assert "mean of 2 seeds" in out
    assert len(list(tmp_path.glob("audio_only_trainer.max_epochs-2_seed*/metrics.json"))) == 2
    ens = next(r for r in rows if r.startswith("| ours, ensemble of the 2 runs")).split(" | ")
    evaluated = json.loads((tmp_path / "ensemble2_trainer.max_epochs-2_seed0" / "metrics.json").read_text())
    assert float(ens[1]) == pytest.approx(evaluated["test/acc"], abs=5e-5)
    assert len(evaluated["ckpt_path"]) == 2 and float(ens[2]) > sum(float(r[2]) for r in ours)


def test_peers_bench_passes_overrides_to_our_runs(tiny_dataset_dir, tmp_path, capsys, monkeypatch):
    """Hydra overrides (key=value words, wherever they stand) reach our runs (here: MiniRocket as our
    encoder) and the row names them; the peer still gets the run's split."""
    from mmdigits.bench import peers
    from mmdigits.models.loading import read_checkpoint

    seen = []

    def fake_peer(dm):
        seen.append(len(dm.train_set) + len(dm.val_set))
        return {"missing": "not under test"}

    monkeypatch.setitem(peers.PEERS, "audio", peers.PEERS["audio"]._replace(fit_and_score=fake_peer))
    args = [
        "--data-dir",
        str(tiny_dataset_dir),
        "--seeds",
        "3",
        "audio_encoder=rocket",  # after a many-valued option: still an override
        "trainer.max_epochs=2",
        "--out",
        str(tmp_path),
    ]
    assert peers.main(args) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| ours,"))
    assert row.startswith(
        "| ours, experiment=audio_only audio_encoder=rocket trainer.max_epochs=2, seed=3 | "
    )
    run = tmp_path / "audio_only_audio_encoder-rocket_trainer.max_epochs-2_seed3"
    metrics = json.loads((run / "metrics.json").read_text())
    encoder = read_checkpoint(metrics["best_model_path"])["hyper_parameters"]["audio_encoder"]["_target_"]
    assert encoder == "mmdigits.models.audio.RocketEncoder" and seen and seen[0] > 0

    with pytest.raises(SystemExit):  # what the command's options set is refused as an override
        peers.main([*args, "seed=1"])
    assert "seed=1: the command sets seed itself; use --seeds" in capsys.readouterr().err


def test_peers_bench_image_side(tiny_dataset_dir, tmp_path, capsys, monkeypatch):
    """An image-only experiment gets the image peer (scikit-learn's SVC), fit on every training image and
    scored on the test images our run is scored on; without --data-dir every part reads the experiment's
    data.dir; a task without a peer is refused, naming the choices."""
    from hydra.utils import instantiate

    from mmdigits.bench.common import compose
    from mmdigits.bench.peers import main
    from mmdigits.models.loading import read_checkpoint

    monkeypatch.setenv("MMDIGITS_DATA_DIR", str(tiny_dataset_dir))  # paths.data_dir, the default data.dir
    args = ["--seeds", "0", "--out", str(tmp_path), "trainer.max_epochs=2"]
    assert main([*args, "--experiment", "image_only"]) == 0
    out = capsys.readouterr().out
    dm = instantiate(compose(["experiment=image_only", f"data.dir={tiny_dataset_dir}"]).data, _convert_="all")
    dm.setup("fit")
    dm.setup("test")
    assert f"MNIST, {len(dm.test_set)} test images;" in out and "| images/s |" in out
    peer = next(r for r in out.splitlines() if r.startswith("| scikit-learn SVC")).split(" | ")
    acc, wrong, n = re.match(r"([\d.]+) \((\d+)/(\d+) wrong\)", peer[1]).groups()
    assert int(n) == len(dm.test_set) and float(acc) == pytest.approx(1 - int(wrong) / int(n), abs=5e-5)
    assert float(acc) > 0.5  # images and digits line up: chance is 0.1
    assert f"fit on the {len(dm.train_set) + len(dm.val_set)} images" in peer[4]
    ours = json.loads((tmp_path / "image_only_trainer.max_epochs-2_seed0" / "metrics.json").read_text())
    trained_on = read_checkpoint(ours["best_model_path"])["datamodule_hyper_parameters"]["dir"]
    assert Path(trained_on) == tiny_dataset_dir
    row = next(
        r
        for r in out.splitlines()
        if r.startswith("| ours, experiment=image_only trainer.max_epochs=2, seed=0")
    )
    assert float(row.split(" | ")[1]) == pytest.approx(ours["test/acc"], abs=5e-5)
    assert row.split(" | ")[4] == "whole run: train, validate, test |"

    with pytest.raises(SystemExit):
        main([*args, "--experiment", "match"])
    assert "the peers are for the unimodal tasks ['audio_digit', 'image_digit']" in capsys.readouterr().err
