"""experiment=match_from_experts: one command finds or trains its experts (reused when finished, resumed when
cut short), fuses them, and tests them composed; the composition rules; bench.peers' match mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobRuntime
from hydra.utils import instantiate

import mmdigits.train as train_module
from mmdigits import from_experts
from mmdigits.errors import MMDigitsError
from mmdigits.models.composition import binary_scores, compose, match_probability
from mmdigits.models.loading import load_checkpoint_model
from mmdigits.models.pretrained import StartFromExperts
from mmdigits.utils.run import ready_datamodule
from tests.hydra_utils import compose_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = [
    "trainer.max_epochs=1",
    "data.batch_size=32",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.rich_progress_bar",
]
# the experts with small encoders (the recipe below takes the same ones), each with a validation part
AUDIO = ["experiment=audio_only", "data.val_fraction=0.1", "audio_encoder=cnn1d"]
IMAGE = ["experiment=image_only", "image_encoder=lenet"]


def listed(overrides: list[str]) -> str:
    return "[" + ",".join(f"'{o}'" for o in overrides) + "]"


def recipe(
    data_dir: Path, experts_dir: Path, audio: list[str] = AUDIO, image: list[str] = IMAGE
) -> list[str]:
    """The recipe's overrides on the tiny data: tiny experts, one epoch each."""
    return [
        f"paths.data_dir={data_dir}",
        f"experts.dir={experts_dir}",
        "audio_encoder=cnn1d",
        "image_encoder=lenet",
        f"experts.audio={listed(audio)}",
        f"experts.image={listed(image)}",
        f"experts.overrides={listed(QUIET)}",
        *QUIET,
    ]


def run_recipe(out: Path, data_dir: Path, experts_dir: Path) -> tuple[dict, int]:
    """One in-process ``python -m mmdigits.train experiment=match_from_experts``: its metrics, and how many
    runs it trained (itself and each expert it trained or resumed)."""
    calls = []

    def counted(cfg, ckpt_path):
        calls.append(cfg.paths.output_dir)
        return train(cfg, ckpt_path)

    train = train_module._train
    cfg = compose_cfg("train", ["experiment=match_from_experts", *recipe(data_dir, experts_dir)], out)
    JobRuntime.instance().set("name", "recipe_job")  # what @hydra.main sets; composing an expert sets "app"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "_train", counted)
        metrics = train_module.train(cfg)
    return metrics, len(calls)


def mtimes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset_dir):
    """The recipe run twice with the same experts' directory; the experts' files between the two."""
    base = tmp_path_factory.mktemp("from_experts")
    first, first_calls = run_recipe(base / "run1", tiny_dataset_dir, base / "experts")
    hydra_after = (HydraConfig.get().runtime.output_dir, JobRuntime.instance().get("name"))  # run_recipe's
    files = {m: mtimes(Path(e["dir"])) for m, e in first["experts"].items()}
    second, second_calls = run_recipe(base / "run2", tiny_dataset_dir, base / "experts")
    return {
        "base": base,
        "first": first,
        "second": second,
        "calls": (first_calls, second_calls),
        "files": files,
        "hydra_after": hydra_after,
    }


def test_the_recipe_trains_its_experts_once_then_reuses_them(runs):
    first, second = runs["first"], runs["second"]
    assert runs["calls"] == (3, 1)  # the experts and the fusion; then the fusion alone
    # composing and training the experts left Hydra's state to the recipe (a sweep's next job reads it)
    assert runs["hydra_after"] == (str(runs["base"] / "run1"), "recipe_job")
    assert {m: e["status"] for m, e in first["experts"].items()} == {"image": "trained", "audio": "trained"}
    assert {m: e["status"] for m, e in second["experts"].items()} == {"image": "reused", "audio": "reused"}
    for m, e in second["experts"].items():
        directory = Path(e["dir"])
        assert directory.parent == runs["base"] / "experts" and directory.name == e["config_hash"]
        assert mtimes(directory) == runs["files"][m]  # not a file of a finished expert was written again
        assert second["pretrained"][m] == e["checkpoint"] == first["experts"][m]["checkpoint"]
        assert json.loads((directory / "calibration.json").read_text())["temperature"] == e["temperature"]
    assert first["run_name"].endswith("_from_experts")
    rules = ("soft", "calibrated", "hard", "temperatures")
    assert {r: second["composition"][r] for r in rules} == {r: first["composition"][r] for r in rules}
    assert second["fusion_wall_time_s"] <= second["wall_time_s"]


def test_an_expert_cut_short_resumes_from_its_last_checkpoint(runs, tmp_path, tiny_dataset_dir):
    audio = Path(runs["second"]["experts"]["audio"]["dir"])
    before = mtimes(audio)
    (audio / "metrics.json").unlink()  # as a run stopped after its last epoch, before its test
    metrics, calls = run_recipe(tmp_path / "run", tiny_dataset_dir, runs["base"] / "experts")
    assert {m: e["status"] for m, e in metrics["experts"].items()} == {"image": "reused", "audio": "resumed"}
    assert calls == 2 and (audio / "metrics.json").is_file()
    best = Path(metrics["experts"]["audio"]["checkpoint"]).relative_to(audio)
    assert mtimes(audio)[str(best)] == before[str(best)]  # resumed at its end: no epoch trained again


def test_composition_is_recorded_on_the_fusions_test_pairs(runs):
    comp = runs["first"]["composition"]
    for rule in ("soft", "calibrated", "hard"):
        assert comp[rule]["n"] == 200 and comp[rule]["acc"] == pytest.approx(1 - comp[rule]["errors"] / 200)
    assert comp["pairs_per_s"] > 0
    assert comp["temperatures"] == {m: runs["first"]["experts"][m]["temperature"] for m in ("image", "audio")}


def test_composition_is_recorded_on_the_validation_pairs_too(runs, tiny_dataset_dir, tmp_path):
    """The fusion and the experts composed, both on the validation part the experts kept: where the recipe's
    settings are weighed against composing alone, without the test split."""
    comp = runs["first"]["composition_validation"]
    cfg = compose_cfg("train", ["experiment=match_from_experts", *recipe(tiny_dataset_dir, tmp_path)])
    pairs = len(ready_datamodule(cfg.data).val_set)  # the recipe's validation pairs
    for rule in ("soft", "calibrated", "hard"):
        assert comp[rule]["n"] == pairs and comp[rule]["acc"] == pytest.approx(
            1 - comp[rule]["errors"] / pairs
        )
    assert comp["temperatures"] == runs["first"]["composition"]["temperatures"]
    assert comp != runs["first"]["composition"]


def test_a_run_without_validation_pairs_composes_nothing_there():
    """data.val_fraction=0 leaves the recipe no validation pairs: nothing to compose on, and no crash."""
    expert = from_experts.Expert("image", "d", "h", "missing.ckpt", "reused", 1.0, 1.0, 0.0, {}, {})
    assert from_experts.composition_report({"image": expert, "audio": expert}, [], "cpu") is None


def test_each_experts_calibration_is_recorded_beside_its_accuracy(runs):
    """Each expert's validation accuracy, ECE and NLL, before and after its temperature, reach the recipe's
    metrics.json; the temperature is fitted to lower the NLL, so it never raises it."""
    for m in ("image", "audio"):
        val = runs["first"]["experts"][m]["validation"]
        assert set(val) == {"acc", "ece", "ece_scaled", "nll", "nll_scaled"}
        assert 0 <= val["acc"] <= 1 and 0 <= val["ece_scaled"] <= 1 and 0 <= val["ece"] <= 1
        assert val["nll_scaled"] <= val["nll"] + 1e-9
        assert runs["second"]["experts"][m]["validation"] == val  # a reused expert's, as fitted


def test_the_fusions_validation_holds_nothing_its_experts_trained_on(runs):
    """Each expert keeps the recipe's validation part out of its training: the fusion's checkpoint is chosen
    on speakers and images new to both experts, and metrics.json says so."""
    shared = {m: e["shared_with_validation"] for m, e in runs["first"]["experts"].items()}
    assert shared == {"image": {"images": 0}, "audio": {"speakers": 0}}


def test_what_a_validation_part_shares_with_an_experts_training_is_counted(make_tiny_datamodule):
    """An expert whose validation speakers differ from the recipe's (another split seed) trained on some of
    the recipe's validation speakers, and on their images: both are counted, by speaker and by pixels."""
    recipe = make_tiny_datamodule(task="match", seed=0)
    recipe.setup("fit")
    for task, modality, key in (("image_digit", "image", "images"), ("audio_digit", "audio", "speakers")):
        same, other = make_tiny_datamodule(task=task, seed=0), make_tiny_datamodule(task=task, seed=1)
        same.setup("fit"), other.setup("fit")
        assert from_experts.shared_with_validation(same, recipe, modality) == {key: 0}
        counted = from_experts.shared_with_validation(other, recipe, modality)[key]
        train, val = other.data.train, recipe.parts.val
        if modality == "audio":
            expected = len(set(train.speaker[other.parts.train]) & set(train.speaker[val]))
        else:
            seen = {train.written[r].tobytes() for r in other.parts.train}
            expected = len({train.written[r].tobytes() for r in val} & seen)
        assert counted == expected > 0


def sharpened(checkpoint: str, out: Path, factor: float = 30.0) -> str:
    """A copy of an expert's checkpoint whose digit read-out is ``factor`` times steeper: one epoch on the
    tiny data leaves posteriors near uniform, which would make any two match probabilities alike."""
    ckpt = torch.load(checkpoint, weights_only=True)
    for k in [k for k in ckpt["state_dict"] if k.startswith("fusion.head.")]:
        ckpt["state_dict"][k] = ckpt["state_dict"][k] * factor
    torch.save(ckpt, out)
    return str(out)


def test_the_fused_model_starts_at_the_soft_composition(runs, tiny_dataset_dir, tmp_path):
    experts = {
        m: sharpened(e["checkpoint"], tmp_path / f"{m}.ckpt") for m, e in runs["first"]["experts"].items()
    }
    overrides = recipe(tiny_dataset_dir, runs["base"] / "experts") + ["model.test_time_shifts=false"]
    cfg = compose_cfg("train", ["experiment=match_from_experts", *overrides], tmp_path)
    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    fused = {}
    for spec in ({}, {**experts, "heads": True}):  # a fresh model, then one started from the experts
        model, dm = instantiate(cfg.model, pretrained=spec), instantiate(cfg.data, _convert_="all")
        L.Trainer(max_epochs=0, callbacks=[StartFromExperts()], **quiet).fit(model, datamodule=dm)
        dm.setup("test")
        batch = next(iter(dm.test_dataloader()))
        with torch.no_grad():
            fused[bool(spec)] = model.eval()(batch).sigmoid().double()
    img, aud = (load_checkpoint_model(experts[m]) for m in ("image", "audio"))
    img.hparams["test_time_shifts"] = False  # the fused model above reads one view of the image too
    with torch.no_grad():
        composed = match_probability(img(batch), aud(batch))
        calibrated = match_probability(img(batch), aud(batch), (3.0, 3.0))
    assert composed.std() > 0.02  # posteriors far from uniform: the comparisons below can fail
    assert torch.allclose(fused[True], composed, atol=1e-5)
    assert not torch.allclose(fused[False], composed, atol=1e-2)
    assert not torch.allclose(calibrated, composed, atol=1e-2)


def test_composition_rules_on_hand_made_posteriors():
    k = math.log(9) + 3  # logit 3 above nine equal others: p = e^3 / (e^3 + 9) for the named digit
    named = lambda d: torch.tensor([k if i == d else math.log(9) for i in range(10)]) - math.log(9)  # noqa: E731
    img = torch.stack([named(0), named(0), named(1)])
    aud = torch.stack([named(0), named(1), named(1)])
    p, q = math.exp(3) / (math.exp(3) + 9), 1 / (math.exp(3) + 9)
    same, other = p * p + 9 * q * q, 2 * p * q + 8 * q * q
    assert torch.allclose(match_probability(img, aud), torch.tensor([same, other, same], dtype=torch.float64))
    assert same < 0.5  # two 69 % posteriors of one digit: the soft rule says "no match"
    decisions = compose(img, aud, temperatures=(0.5, 0.5))  # sharper: 98 % each, sum 0.96
    assert decisions["soft"].tolist() == [False, False, False]
    assert decisions["hard"].tolist() == [True, False, True]  # the argmaxes agree
    assert decisions["calibrated"].tolist() == [True, False, True]
    assert compose(img, aud, temperatures=(2.0, 2.0))["calibrated"].tolist() == [False, False, False]
    target = torch.tensor([True, False, False])
    scores = binary_scores(decisions["hard"], target)  # one true match found, one false match
    assert scores == {"acc": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3), "errors": 1, "n": 3}


def test_the_recipes_own_experts_fit_it(tmp_path):
    """experiment=match_from_experts as scheduled: each expert has the recipe's encoder, a validation part,
    the recipe's seed, and a directory named by its config's hash (the same hash on every compose)."""
    cfg = compose_cfg("train", ["experiment=match_from_experts", "seed=2"], tmp_path)
    for m in ("audio", "image"):
        with from_experts.own_hydra_state():
            expert, digest, directory = from_experts.expert_config(cfg, m)
            from_experts.check_expert(cfg, expert, m)
        assert expert.seed == 2 and directory == Path("logs/experts") / digest
        with from_experts.own_hydra_state():
            assert from_experts.expert_config(cfg, m)[1] == digest
    with from_experts.own_hydra_state():
        other = compose_cfg("train", ["experiment=match_from_experts", "seed=1"], tmp_path)
        assert from_experts.expert_config(other, "audio")[1] != from_experts.expert_config(cfg, "audio")[1]


def test_the_recipes_experts_keep_the_fusions_validation_part(tmp_path):
    """As scheduled, each expert splits the recipe's own build with the recipe's fraction and seed, so its
    validation part is the fusion's: the fusion's choices are made on pairs neither expert trained on."""
    cfg = compose_cfg("train", ["experiment=match_from_experts", "seed=1"], tmp_path)
    for m in ("audio", "image"):
        with from_experts.own_hydra_state():
            expert = from_experts.expert_config(cfg, m)[0]
        for key in ("dir", "build", "split", "val_fraction", "seed"):
            assert expert.data[key] == cfg.data[key], (m, key)


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (["experiment=audio_only", "audio_encoder=cnn1d"], "leaves no validation part"),
        (["experiment=audio_only", "data.val_fraction=0.2"], "its audio_encoder differs from this recipe's"),
        (["model=image_only"], "trains task 'image_digit'; an expert names the digit from the audio alone"),
    ],
)
def test_an_expert_that_cannot_serve_is_refused_before_anything_trains(
    audio, message, tmp_path, tiny_dataset_dir
):
    cfg = compose_cfg("train", ["experiment=match_from_experts", *recipe(tiny_dataset_dir, tmp_path, audio)])

    def never(cfg):
        raise AssertionError("trained")

    with pytest.raises(MMDigitsError, match=message):
        from_experts.find_or_train(cfg, "audio", never, lambda: never(cfg))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # two commands in their own processes (about 30 s on 2 busy cores)
def test_bench_prints_the_experts_composed_the_fused_model_and_the_default_run(
    runs, tiny_dataset_dir, capsys
):
    from mmdigits.bench.peers import main

    overrides = [o for o in recipe(tiny_dataset_dir, runs["base"] / "experts") if not o.startswith("~")]
    assert main(["--experiment", "match_from_experts", "--seeds", "0", "--out", str(runs["base"] / "bench"),
                 *overrides]) == 0  # fmt: skip
    rows = [
        r.split(" | ") for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "---" not in r
    ]
    names = [r[0].lstrip("| ") for r in rows[1:]]
    assert len(names) == 6
    expected = ("experts composed, soft", "experts composed, calibrated soft (T_img=",
                "experts composed, hard", "fused: experiment=match_from_experts",
                "default: python -m mmdigits.train")  # fmt: skip
    for name, start in zip(names, expected):
        assert name.startswith(start) and name.endswith(", seed 0"), name
    # aeon's MiniRocket, fit in the same command on the audio expert's training speakers: every row's wall
    # time is also given as a multiple of its fit time
    peer = rows[-1]
    assert names[-1].startswith("aeon MiniRocket (random_state=0)")
    assert float(peer[1]) == pytest.approx(
        1 - int(peer[3].split("/")[0]) / int(peer[3].split("/")[1]), abs=1e-4
    )
    fit_s = float(peer[4])
    assert fit_s > 0 and peer[7].rstrip(" |") == "1.0×"
    for r in rows[1:-1]:
        errors, n = map(int, r[3].split("/"))
        assert n == 200 and float(r[1]) == pytest.approx(1 - errors / n, abs=1e-4)
        assert float(r[4]) > 0 and float(r[5].replace(",", "")) > 0
        assert r[7].rstrip(" |") == f"{float(r[4]) / fit_s:.1f}×"  # from the times as printed
    assert all("audio reused, image reused" in r[6] for r in rows[1:4])  # the CLI found the same experts
