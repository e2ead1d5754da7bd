"""``python -m mmdigits.bench``: every row of the side-by-side table comes out, with consistent ratios."""

from __future__ import annotations

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
    assert all(float(v) > 0 for v in table["predict pairs/s, default vs seed"][:2])
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
