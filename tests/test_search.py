"""Hyperparameter search on Optuna (``-m hparams_search=...``, mmdigits' sweeper in hydra_plugins/): the study
persists in its storage, an interrupted search continues toward its total, pruned trials are pruned and not
failures, workers share a study, and optuna-dashboard shows it. Searches run as the command a user types."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from mmdigits.errors import MMDigitsError  # noqa: E402
from mmdigits.search.space import search_space  # noqa: E402
from mmdigits.search.study import JOURNAL_FILE, check_command, open_storage  # noqa: E402
from mmdigits.utils.rundir import config_hash  # noqa: E402
from tests.hydra_utils import compose_cfg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMPLETE, PRUNED, FAIL, RUNNING = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING


def search(sweep_dir: Path, data_dir: Path, *extra: str, n_trials: int = 4, epochs: int = 2) -> list[str]:
    """``python -m mmdigits.train -m hparams_search=optuna`` on the tiny dataset, ``epochs`` epochs a job."""
    return [
        sys.executable, "-m", "mmdigits.train", "-m", "hparams_search=optuna",
        f"hydra.sweep.dir={sweep_dir}", f"hydra.sweeper.n_trials={n_trials}", f"trainer.max_epochs={epochs}",
        "test=false", f"data.dir={data_dir}", "data.batch_size=32", "data.eval_batch_size=64",
        "~callbacks.rich_progress_bar", "trainer.enable_model_summary=false", *extra,
    ]  # fmt: skip


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=ENV)


def study_of(sweep_dir: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="optuna", storage=open_storage(None, sweep_dir))


def finished_runs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))


@pytest.mark.slow
def test_an_interrupted_search_continues_to_its_total(tmp_path, tiny_dataset_dir):
    sweep = tmp_path / "search"
    kill = [
        "+callbacks.kill._target_=tests.search_helpers.KillInThirdRun",
        f"+callbacks.kill.marker={tmp_path}/x",
    ]
    first = run(search(sweep, tiny_dataset_dir, *kill))
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert [t.state for t in study_of(sweep).trials] == [COMPLETE, COMPLETE, RUNNING]  # left behind
    (cut,) = [p for p in sweep.glob("2_*") if (p / "checkpoints" / "last.ckpt").is_file()]

    again = run(search(sweep, tiny_dataset_dir, *kill))  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    trials = study_of(sweep).trials
    assert sum(t.state == COMPLETE for t in trials) == 4 and len(finished_runs(sweep)) == 4
    interrupted = trials[2]
    assert interrupted.state == FAIL and interrupted.user_attrs["interrupted"] is True
    (resumed,) = [t for t in trials if t.user_attrs.get("resumes") == 2]
    assert resumed.state == COMPLETE and resumed.params == interrupted.params
    assert resumed.user_attrs["run_dir"] == str(cut)  # the same run directory, resumed from its last.ckpt
    assert "partial, resuming" in (cut / "train.log").read_text()
    assert "complete: 4" in (sweep / "optimization_results.yaml").read_text()

    third = run(search(sweep, tiny_dataset_dir, *kill))  # a finished study: nothing more to run
    assert third.returncode == 0 and len(study_of(sweep).trials) == len(trials)


@pytest.mark.slow
def test_a_pruned_trial_is_recorded_as_pruned_and_the_search_succeeds(tmp_path, tiny_dataset_dir):
    sweep = tmp_path / "search"
    always = [
        "~hydra/sweeper/pruner",
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.01}",
    ]
    proc = run(search(sweep, tiny_dataset_dir, *always, n_trials=2, epochs=3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(sweep).trials
    assert [t.state for t in trials] == [PRUNED, PRUNED]
    for t in trials:
        assert list(t.intermediate_values) == [0]  # val/acc after epoch 1, then pruned
        metrics = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert metrics["stopped_by"] == "pruned" and metrics["epochs"] < 3
        assert not (Path(t.user_attrs["run_dir"]) / "error.txt").exists()
    assert not list((sweep / "failed_jobs").glob("*"))


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, tiny_dataset_dir):
    sweep = tmp_path / "search"
    wait = [  # each worker's first trial waits until both workers hold one
        "+callbacks.peer._target_=tests.search_helpers.WaitForTrials",
        f"+callbacks.peer.storage={sweep / JOURNAL_FILE}",
    ]
    cmd = search(sweep, tiny_dataset_dir, *wait)
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ]
    time.sleep(1)
    procs.append(
        subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    )
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errs)
    trials = study_of(sweep).trials
    assert [t.state for t in trials] == [COMPLETE] * 4  # 4 in all, none twice
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4 and len(finished_runs(sweep)) == 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dashboard_lists_the_trials_of_a_study(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium to open the dashboard in (Debian: apt-get install -y chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    study = optuna.create_study(storage=open_storage(None, tmp_path), study_name="demo", direction="maximize")
    for i, state in enumerate([COMPLETE, COMPLETE, PRUNED, COMPLETE]):
        trial = study.ask()
        trial.suggest_float("model.optimizer.lr", 1e-4, 1e-2, log=True)
        trial.report(0.5 + i / 10, step=0)
        study.tell(trial, 0.6 + i / 10 if state == COMPLETE else None, state=state)
    port = free_port()
    cmd = ["optuna-dashboard", str(tmp_path / JOURNAL_FILE), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = json.loads(urllib.request.urlopen(f"{url}/api/studies", timeout=2).read())
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.3)
        (summary,) = studies["study_summaries"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"{url}/dashboard/studies/{summary['study_id']}/trials")
            page.wait_for_selector("text=4 Trials", timeout=30_000)
            text = page.inner_text("body")
            browser.close()
        assert "demo" in text
        assert all(f"Trial {n}" in text for n in range(4)) and "Pruned" in text
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_search_space_from_the_config_and_the_command_line():
    space = search_space(
        {
            "model.optimizer.lr": "tag(log, interval(0.0005, 0.01))",
            "+model.audio_encoder.channels": "choice([32,64],[64,128])",
        },
        ["hparams_search=optuna", "fusion=concat,gated", "data.batch_size=range(32, 129, 32)"],
    )
    assert space.fixed == ["hparams_search=optuna"]
    dists = space.params
    assert dists["model.optimizer.lr"].log and dists["data.batch_size"].high == 128
    trial = optuna.create_study().ask()
    overrides = space.overrides(space.suggest(trial))
    assert overrides[0] == "hparams_search=optuna"
    assert any(
        o in overrides
        for o in ("+model.audio_encoder.channels=[32,64]", "+model.audio_encoder.channels=[64,128]")
    )
    assert any(o.startswith("fusion=") for o in overrides)


@pytest.fixture
def restore_hydra_config():
    """compose_cfg registers its config as the current Hydra config: a search's (MULTIRUN) must not outlive
    the test."""
    from hydra.core.hydra_config import HydraConfig

    saved = HydraConfig.instance().cfg
    yield
    HydraConfig.instance().cfg = saved


def test_a_trials_number_is_not_part_of_its_runs_config(tmp_path, restore_hydra_config):
    """A trial queued again after an interruption has a new number: its run directory must still resume."""
    one = compose_cfg("train", ["hparams_search=optuna", "callbacks.optuna_pruning.trial=2"], tmp_path)
    other = compose_cfg("train", ["hparams_search=optuna", "callbacks.optuna_pruning.trial=5"], tmp_path)
    assert config_hash(one) == config_hash(other)


def test_a_study_continues_only_under_the_command_that_started_it():
    study = optuna.create_study()
    started = {
        "overrides": ["hparams_search=optuna", "trainer.max_epochs=2"],
        "params": {"lr": "Float(0, 1)"},
    }
    check_command(study, started)
    check_command(study, {**started, "overrides": started["overrides"][::-1]})  # the same overrides
    with pytest.raises(MMDigitsError, match=r"the study's \['trainer.max_epochs=2'\], this command's \['tr"):
        check_command(study, {**started, "overrides": ["hparams_search=optuna", "trainer.max_epochs=3"]})


@pytest.mark.parametrize("search", ["optuna", "lr_width"])
def test_a_trials_objective_scores_the_checkpoint_it_keeps(search, tmp_path, restore_hydra_config):
    """A trial is scored by the best epoch of its validation accuracy; the checkpoint it keeps (the one the
    best trial's test reads) must be that epoch's, whatever the recipe under the search monitors."""
    cfg = compose_cfg("train", [f"hparams_search={search}"], tmp_path)
    assert cfg.optimized_metric == "val/acc_best" and cfg.hydra.sweeper.direction == "maximize"
    kept = cfg.callbacks.model_checkpoint
    assert (kept.monitor, kept.mode) == ("val/acc", "max")
