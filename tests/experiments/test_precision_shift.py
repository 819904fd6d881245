"""experiments/precision_shift.py: the shift between two sweeps against the seed spread, on
made-up sweep directories, so both verdicts are seen."""

import csv
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))
import precision_shift  # noqa: E402

SEED_LOSSES = [2.08, 2.10, 2.06]  # sample std 0.02


def sweep_dir(path: Path, shift: float, a2: float, dtype: str) -> Path:
    path.mkdir()
    rows = [
        ("lr-N1-lr0.01", "lr", 3.0, 0.01),
        ("lr-N1-lr0.02", "lr", 2.9, 0.02),
        ("N1-D1", "main", 2.5, 0.02),
        ("N1-D2", "main", 2.2, 0.02),
        ("N2-D1", "main", 2.3, 0.015),
    ]
    for name, *_ in rows:
        (path / "runs" / name).mkdir(parents=True)
        (path / "runs" / name / "config.yaml").write_text(f"model:\n  compute_dtype: {dtype}\n")
    with open(path / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "group", "loss", "lr"])
        for name, group, loss, lr in rows:
            w.writerow([name, group, loss + (shift if group == "main" else 0.0), lr])
    fit = {
        "seed_spread": {"std": 0.02, "n": 3, "names": ["N1-D2"], "losses": SEED_LOSSES},
        "summary": {"a": {"approach2": {"value": a2, "ci95": [a2 - 0.02, a2 + 0.02]}}},
    }
    (path / "fit.json").write_text(json.dumps(fit))
    return path


@pytest.mark.parametrize(
    "shift, a2, passed",
    [
        (0.005, 0.51, True),  # rms 0.005 < std 0.02, a moves 0.01 < 0.02
        (0.03, 0.51, False),  # every main loss up 0.03: more than the seeds disagree
        (0.005, 0.55, False),  # losses close but the exponent moves 0.05 > 0.02
    ],
)
def test_verdicts(tmp_path, shift, a2, passed):
    a = sweep_dir(tmp_path / "a", 0.0, 0.50, "float32")
    b = sweep_dir(tmp_path / "b", shift, a2, "bfloat16")
    lines, ok = precision_shift.report(a, b, "fp32", "bf16")
    assert ok is passed
    assert lines[-1] == ("all 3 checks PASS" if passed else "1 checks FAIL")
    main = next(x for x in lines if x.startswith("| main |"))
    assert f"+{shift:.4f}" in main  # the mean shift of the three main rows
    lr_row = next(x for x in lines if x.startswith("| lr |"))
    assert "+0.0000" in lr_row


def test_sweeps_in_the_same_dtype_are_no_comparison(tmp_path):
    a = sweep_dir(tmp_path / "a", 0.0, 0.50, "float32")
    b = sweep_dir(tmp_path / "b", 0.0, 0.50, "float32")
    lines, ok = precision_shift.report(a, b, "fp32", "bf16")
    assert not ok
    assert "- FAIL: each sweep ran in one dtype, not the same (fp32: 5 in float32; bf16: 5 in" in (
        "\n".join(lines)
    )
