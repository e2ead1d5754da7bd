from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdigits.data.samplers import EvalBatchSampler, TrainBatchSampler
from mmdigits.errors import DataError
from tests.synthetic import spoken_objects, write_challenge_files


def collect(loader: object) -> list[dict[str, torch.Tensor]]:
    return list(loader)  # type: ignore[call-overload]


def test_match_batches_follow_contract(make_tiny_datamodule: Callable) -> None:
    dm = make_tiny_datamodule()
    dm.prepare_data()
    dm.setup("fit")
    assert dm.task.num_outputs == 1 and dm.has_digit_labels and 0.2 < dm.pos_rate < 0.4
    batches = collect(dm.train_dataloader())
    b = batches[0]
    assert set(b) == {"image", "audio", "lengths", "target", "image_digit", "audio_digit", "index"}
    B = len(b["index"])
    assert b["image"].dtype == torch.float32 and b["image"].shape == (B, 1, 28, 28)
    assert b["image"].max() > 1.0 and b["image"].min() >= 0  # raw 0..255
    assert b["audio"].dtype == torch.float32 and b["audio"].shape[0] == B and b["audio"].shape[2] == 13
    assert b["audio"].shape[1] == int(b["lengths"].max())
    assert b["lengths"].dtype == torch.int64 and b["lengths"].min() >= 1
    assert b["target"].dtype == torch.float32 and b["index"].dtype == torch.int64
    for batch in batches:
        mask = torch.arange(batch["audio"].shape[1])[None, :] >= batch["lengths"][:, None]
        assert (batch["audio"][mask] == 0).all()
        assert (batch["audio"][~mask].abs().sum(-1) > 0).all()
    seen = torch.cat([x["index"] for x in batches])
    assert len(seen) == len(dm.train_set) and len(set(seen.tolist())) == len(seen)  # one epoch, each row once
    assert torch.equal(b["target"] == 1, b["image_digit"] == b["audio_digit"])
    val = collect(dm.val_dataloader())
    assert sum(len(x["index"]) for x in val) == len(dm.val_set)


def test_pad_to_and_batch_values(make_tiny_datamodule: Callable, tiny_dataset_dir: Path) -> None:
    dm = make_tiny_datamodule(pad_to=93)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["audio"].shape[1] == 93
    spoken = spoken_objects(tiny_dataset_dir, "train")
    written = np.load(tiny_dataset_dir / "written_train.npy")
    for j in range(3):
        r, n = int(b["index"][j]), int(b["lengths"][j])
        assert np.array_equal(b["audio"][j, :n].numpy(), spoken[r])
        assert np.array_equal(b["image"][j].reshape(-1).numpy(), written[r].astype(np.float32))


def test_bucketing_reduces_padding(make_tiny_datamodule: Callable) -> None:
    def pad_fraction(bucketing: bool) -> float:
        dm = make_tiny_datamodule(bucketing=bucketing, batch_size=16)
        dm.setup("fit")
        ds = dm.train_set
        sampler = TrainBatchSampler(len(ds), 16, lengths=ds.lengths, bucketing=bucketing, bucket_batches=10)
        total = real = 0
        for idx in sampler:
            L = ds.lengths[idx.numpy()]
            total += L.max() * len(L)
            real += L.sum()
        return 1 - real / total

    assert pad_fraction(True) < 0.5 * pad_fraction(False)


@pytest.mark.parametrize("mode", ["weighted", "undersample"])
def test_balanced_samplers(make_tiny_datamodule: Callable, mode: str) -> None:
    dm = make_tiny_datamodule(sampler=mode)
    dm.setup("fit")
    ep = [torch.cat([b["target"] for b in dm.train_dataloader()]) for _ in range(2)]
    for t in ep:
        assert abs(t.mean().item() - 0.5) < 0.06
    n_pos = int(dm.train_set.target.sum())
    if mode == "undersample":
        assert len(ep[0]) == 2 * n_pos
    else:
        assert len(ep[0]) == len(dm.train_set)


def test_sampler_seeded_per_epoch() -> None:
    s = TrainBatchSampler(100, 8, seed=1)
    s.set_epoch(3)
    a = [b.tolist() for b in s]
    s.set_epoch(3)
    assert [b.tolist() for b in s] == a
    s.set_epoch(4)
    assert [b.tolist() for b in s] != a
    s2 = TrainBatchSampler(100, 8, seed=1)
    s2.set_epoch(3)
    assert [b.tolist() for b in s2] == a  # resuming at epoch 3 reproduces the order
    assert [b.tolist() for b in s2] != a  # plain loops advance the epoch


@pytest.mark.parametrize("mode", ["none", "weighted", "undersample"])
@pytest.mark.parametrize("bucketing", [False, True])
def test_ddp_sharding(mode: str, bucketing: bool) -> None:
    rng = np.random.default_rng(0)
    n = 1000
    labels, lengths = rng.random(n) < 0.2, rng.integers(4, 90, n)
    kw = {"mode": mode, "labels": labels, "lengths": lengths, "bucketing": bucketing, "seed": 5}
    full = TrainBatchSampler(n, 32, **kw)
    r0, r1 = (TrainBatchSampler(n, 32, num_replicas=2, rank=r, **kw) for r in (0, 1))
    b0, b1 = list(r0), list(r1)
    assert len(b0) == len(b1) == len(r0)
    i0, i1 = torch.cat(b0).numpy(), torch.cat(b1).numpy()
    epoch_rows = full.epoch_indices(0)
    assert sorted(np.concatenate([i0, i1]).tolist()) == sorted(epoch_rows.tolist())
    if mode == "none":
        assert set(i0.tolist()).isdisjoint(i1.tolist())
        assert set(i0.tolist()) | set(i1.tolist()) == set(range(n))


def test_eval_sharding() -> None:
    full = torch.cat(list(EvalBatchSampler(1001, 64))).tolist()
    assert full == list(range(1001))
    s0, s1 = EvalBatchSampler(1001, 64, 2, 0), EvalBatchSampler(1001, 64, 2, 1)
    assert len(s0) == len(s1)
    assert torch.cat(list(s0)).tolist() + torch.cat(list(s1)).tolist() == list(range(1001))


def test_datamodule_uses_trainer_world(make_tiny_datamodule: Callable) -> None:
    class FakeTrainer:
        world_size, global_rank = 2, 1

    dm = make_tiny_datamodule()
    dm.setup("fit")
    dm.trainer = FakeTrainer()  # type: ignore[assignment]
    rows = torch.cat([b["index"] for b in dm.train_dataloader()])
    assert len(rows) == (len(dm.train_set) + 1) // 2
    val = torch.cat([b["index"] for b in dm.val_dataloader()])
    assert len(val) == len(dm.val_set) // 2


def test_speaker_disjoint_val_and_train_only_stats(
    make_tiny_datamodule: Callable, tiny_dataset_dir: Path
) -> None:
    dm = make_tiny_datamodule(val_fraction=0.2)
    dm.setup("fit")
    spk = np.load(tiny_dataset_dir / "speaker_spoken_train.npy")
    tr, va = dm.train_set.rows.numpy(), dm.val_set.rows.numpy()
    assert 40 <= len(va) <= 120 and len(tr) + len(va) <= 400
    assert set(spk[tr]).isdisjoint(spk[va])
    written = np.load(tiny_dataset_dir / "written_train.npy")
    assert not {w.tobytes() for w in written[tr]} & {w.tobytes() for w in written[va]}  # no image on both
    source = np.load(tiny_dataset_dir / "source_written_train.npy")
    left_out = np.setdiff1d(np.arange(400), np.concatenate([tr, va]))
    assert np.isin(source[left_out], source[va]).all()  # only rows whose image is in validation left out
    spoken = spoken_objects(tiny_dataset_dir, "train")
    frames = np.concatenate([spoken[i] for i in tr]).astype(np.float64)
    assert torch.allclose(
        dm.stats["audio_mean"], torch.tensor(frames.mean(0), dtype=torch.float32), atol=1e-4
    )
    assert torch.allclose(dm.stats["audio_std"], torch.tensor(frames.std(0), dtype=torch.float32), atol=1e-4)
    img = np.load(tiny_dataset_dir / "written_train.npy")[tr] / 255.0
    assert abs(dm.stats["image_mean"].item() - img.mean()) < 1e-5
    assert abs(dm.stats["image_std"].item() - img.std()) < 1e-5
    assert dm.stats["audio_mean"].shape == (13,) and dm.stats["image_mean"].shape == ()
    assert all(v.dtype == torch.float32 for v in dm.stats.values())
    all_img = np.load(tiny_dataset_dir / "written_train.npy") / 255.0
    assert abs(dm.stats["image_mean"].item() - all_img.mean()) > 1e-6  # really the train part only


def test_val_without_speaker_ids_shares_no_utterance_or_image(
    tiny_dataset_dir: Path, tmp_path: Path, caplog
) -> None:
    """The original challenge files have no speaker ids and reuse each utterance in many pairs: validation
    takes whole utterances (by content) and no image of it is trained on; the log reports the overlap."""
    from mmdigits.data.datamodule import MMDigitsDataModule

    write_challenge_files(tiny_dataset_dir, tmp_path)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    dm = MMDigitsDataModule(dir=str(tmp_path), batch_size=32, val_fraction=0.2)
    dm.prepare_data()  # user-owned: untouched, no build
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before
    assert not dm.has_digit_labels
    spoken = np.load(tmp_path / "spoken_train.npy", allow_pickle=True)
    written = np.load(tmp_path / "written_train.npy")
    tr, va = dm.train_set.rows.numpy(), dm.val_set.rows.numpy()
    utt = lambda rows: {spoken[r].tobytes() for r in rows}  # noqa: E731
    img = lambda rows: {written[r].tobytes() for r in rows}  # noqa: E731
    assert 40 <= len(va) <= 120 and not utt(tr) & utt(va) and not img(tr) & img(va)
    assert "by utterance" in caplog.text and "'utterances': 0, 'images': 0" in caplog.text
    b = next(iter(dm.train_dataloader()))
    assert "image_digit" not in b and "audio_digit" not in b
    p = next(iter(dm.predict_dataloader()))
    assert "target" not in p and len(set(p["index"].tolist())) == len(p["index"])
    with pytest.raises(DataError, match="no labels for the test split"):
        dm.test_dataloader()
    dm2 = MMDigitsDataModule(dir=str(tmp_path), task="digit")
    with pytest.raises(DataError, match="only the match task is available"):
        dm2.setup("fit")


def test_digit_tasks(make_tiny_datamodule: Callable) -> None:
    dm = make_tiny_datamodule(task="digit")
    dm.setup("fit")
    assert dm.task.num_outputs == 10 and len(dm.train_set) + len(dm.val_set) <= 400
    b = next(iter(dm.train_dataloader()))
    assert b["target"].dtype == torch.int64 and torch.equal(b["image_digit"], b["audio_digit"])
    assert torch.equal(b["target"], b["image_digit"])
    dm = make_tiny_datamodule(task="digit", digit_pairing="matched")
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) <= 120
    dm = make_tiny_datamodule(task="audio_digit")
    dm.setup("fit")
    aud = dm.train_set.aud.numpy()
    assert len(np.unique(aud)) == len(aud)
    b = next(iter(dm.train_dataloader()))
    assert torch.equal(b["target"], b["audio_digit"])
    dm = make_tiny_datamodule(task="image_digit")
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.test_set) == 100  # 200 test pairs from 100 tiny test images, deduped
    with pytest.raises(DataError, match="use_digit_labels"):
        make_tiny_datamodule(task="digit", use_digit_labels=False)


def test_match_only_batches_have_no_digit_keys(make_tiny_datamodule: Callable) -> None:
    dm = make_tiny_datamodule(use_digit_labels=False)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert "image_digit" not in b and "audio_digit" not in b and not dm.has_digit_labels


def test_eval_sampler_sorts_each_shard_by_length() -> None:
    lengths = np.random.default_rng(0).integers(1, 94, size=1001)
    shards = []
    for rank in (0, 1):
        s = EvalBatchSampler(1001, 64, 2, rank, lengths=lengths)
        rows = torch.cat(list(s)).numpy()
        assert np.all(np.diff(lengths[rows]) >= 0)  # shortest first, so batches pad to ~their own length
        assert sorted(rows.tolist()) == list(range(rank * 501, rank * 501 + len(rows)))  # its own shard
        shards.append(s)
    assert len(shards[0]) == len(shards[1])
    with pytest.raises(ValueError, match="1000 lengths for 1001 rows"):
        EvalBatchSampler(1001, 64, lengths=lengths[:1000])


def test_predict_order_and_state(make_tiny_datamodule: Callable) -> None:
    def frames(batches: list) -> int:
        return sum(b["audio"].shape[0] * b["audio"].shape[1] for b in batches)

    dm = make_tiny_datamodule(bucketing=False)
    dm.setup("predict")
    plain = list(dm.predict_dataloader())
    assert torch.cat([b["index"] for b in plain]).tolist() == list(range(200))
    dm = make_tiny_datamodule()  # bucketing: length-sorted rows, each exactly once, less padding
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    idx = torch.cat([b["index"] for b in batches])
    assert sorted(idx.tolist()) == list(range(200)) and idx.tolist() != list(range(200))
    assert frames(batches) < frames(plain)
    dm.setup("fit")
    dl = dm.train_dataloader()
    first = [b["index"] for b in dl]
    state = dm.state_dict()
    dm2 = make_tiny_datamodule()
    dm2.setup("fit")
    dm2.load_state_dict(state)
    assert state["train_sampler_epoch"] == 1
    second = [b["index"] for b in dm.train_dataloader()]
    resumed = [b["index"] for b in dm2.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(second, resumed)) and not torch.equal(first[0], second[0])


def test_lightning_fit_smoke(make_tiny_datamodule: Callable) -> None:
    import lightning as L
    from torch import nn

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(784 + 13, 1)

        def step(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
            a = b["audio"].sum(1) / b["lengths"][:, None]
            x = torch.cat([b["image"].flatten(1) / 255, a], 1)
            return nn.functional.binary_cross_entropy_with_logits(self.lin(x).squeeze(1), b["target"])

        def training_step(self, b: dict[str, torch.Tensor], i: int) -> torch.Tensor:
            return self.step(b)

        def validation_step(self, b: dict[str, torch.Tensor], i: int) -> None:
            self.log("val_loss", self.step(b))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        use_distributed_sampler=False,
    )
    dm = make_tiny_datamodule()
    trainer.fit(Tiny(), datamodule=dm)
    assert dm._train_sampler.epoch == 2  # Lightning called set_epoch(1), then one pass


def test_bench_smoke(tiny_dataset_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmdigits.bench.data import main

    assert main(["--dir", str(tiny_dataset_dir), "--batch-size", "32", "--batches", "3"]) == 0
    out = capsys.readouterr().out
    assert "undersample" in out and "pairs/s" in out
