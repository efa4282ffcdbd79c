"""pgolf compare / report: the Welch test against known values, refusals of incomparable runs, the tables."""

from __future__ import annotations

import json
import math

import pytest

from pgolf.cli import main
from pgolf.cli.report import (ComparisonError, RunFolderError, compare_runs, load_runs, markdown_table, report_rows,
                          split_sides, welch_one_sided)

VAL_SHA = {"fineweb_val_000000.bin": "9550dedf"}


def fake_run(root, name, *, seed, val_loss, val_bpb=None, recipe="baseline", eval_mode="plain", val_sha=None,
             tokenizer_sha="4f5e8adb", val_targets=680035, legal=True, env=True, steps=3):
    """A finished run folder with result.json, env.json and log.jsonl (no training)."""
    run = root / name
    run.mkdir(parents=True)
    result = {"recipe": recipe, "scale": "tiny", "seed": seed, "val_loss": val_loss,
              "val_bpb": val_bpb if val_bpb is not None else val_loss / math.log(2) / 2.4,
              "artifact_bytes": 1_234_567, "code_bytes": 60_000, "model_bytes": 1_174_567, "under_limit": True,
              "steps": steps, "train_seconds": 12.5, "eval_seconds": 3.25, "eval_mode": eval_mode, "legal": legal,
              "val_targets": val_targets, "val_bytes": 1_634_550, "val_tokens_limited": False}
    (run / "result.json").write_text(json.dumps(result))
    if env:
        (run / "env.json").write_text(json.dumps({"tokenizer_sha256": tokenizer_sha,
                                                  "val_sha256": val_sha if val_sha is not None else VAL_SHA}))
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": 7.0 - s * 0.1 + seed * 1e-4}) + "\n"
                                           for s in range(1, steps + 1)))
    return run


# ----------------------------------------------------------------------------- statistics

def test_welch_textbook_example():
    # Wikipedia "Welch's t-test", example 1 (unequal variances, n = 15 each): t = 2.46, df = 25.0, two-sided
    # p = 0.021. Exact values computed with scipy.stats.ttest_ind(b, a, equal_var=False, alternative="greater").
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    test = welch_one_sided(b, a, margin=0.0)
    assert test.t == pytest.approx(2.455356398286006, rel=1e-9)
    assert test.df == pytest.approx(24.988529290231416, rel=1e-9)
    assert test.p == pytest.approx(0.010689000731433496, rel=1e-7)
    assert 2 * test.p == pytest.approx(0.021, abs=5e-4)


def test_welch_with_margin_hand_checked():
    # Two seeds per side with the same spread: df = 2(n-1) = 2 exactly, so p has the closed form above.
    a = [2.080, 2.090]          # mean 2.085
    b = [2.060, 2.070]          # mean 2.065; A - B = 0.020 nats
    test = welch_one_sided(a, b, margin=0.005)
    se = math.sqrt(2 * (0.005 ** 2 * 2) / 2)  # var = 0.00005 per side, /n=2 -> 0.000025 each
    t = (0.020 - 0.005) / se
    assert test.df == pytest.approx(2.0, rel=1e-12)
    assert test.t == pytest.approx(t, rel=1e-12)
    assert test.p == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), rel=1e-9)


def test_welch_matches_scipy_on_record_like_numbers():
    from scipy import stats
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(20):
        a = list(2.07 + 0.002 * rng.standard_normal(int(rng.integers(2, 6))))
        b = list(2.06 + 0.004 * rng.standard_normal(int(rng.integers(2, 6))))
        ours = welch_one_sided(a, b, margin=0.005)
        ref = stats.ttest_ind(np.array(a) - 0.005, np.array(b), equal_var=False, alternative="greater")
        assert ours.p == pytest.approx(float(ref.pvalue), rel=1e-8, abs=1e-14)
        assert ours.t == pytest.approx(float(ref.statistic), rel=1e-9)


def test_welch_degenerate_and_too_few_values():
    assert welch_one_sided([2.0, 2.0], [1.9, 1.9], 0.005).p == 0.0
    assert welch_one_sided([2.0, 2.0], [1.999, 1.999], 0.005).p == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        welch_one_sided([2.0], [1.9, 1.8])


# ----------------------------------------------------------------------------- compare

def test_compare_reports_means_difference_and_p_value(tmp_path):
    a = [fake_run(tmp_path, f"a{i}", seed=s, val_loss=v) for i, (s, v) in enumerate([(1, 2.080), (2, 2.090), (3, 2.085)])]
    b = [fake_run(tmp_path, f"b{i}", seed=s, val_loss=v) for i, (s, v) in enumerate([(1, 2.060), (2, 2.070), (3, 2.062)])]
    comp = compare_runs(a, b)
    assert comp.a.mean("val_loss") == pytest.approx(2.085)
    assert comp.diff_loss == pytest.approx(2.064 - 2.085)
    expected = welch_one_sided([2.080, 2.090, 2.085], [2.060, 2.070, 2.062], 0.005)
    assert comp.test.p == pytest.approx(expected.p)
    assert comp.warnings == []
    text = comp.format()
    assert "B - A: -0.02100 nats" in text and "p = " in text


def test_compare_warns_below_three_seeds_and_skips_test_with_one(tmp_path):
    a = [fake_run(tmp_path, "a", seed=1, val_loss=2.08)]
    b = [fake_run(tmp_path, "b1", seed=1, val_loss=2.06), fake_run(tmp_path, "b2", seed=2, val_loss=2.07)]
    comp = compare_runs(a, b)
    assert comp.test is None and not comp.significant()
    assert any("side A has 1 run" in w for w in comp.warnings)
    assert any("side B has 2 runs" in w for w in comp.warnings)


def test_compare_refuses_different_validation_data(tmp_path):
    a = [fake_run(tmp_path, "a", seed=1, val_loss=2.08)]
    b = [fake_run(tmp_path, "b", seed=1, val_loss=2.06, val_sha={"fineweb_val_000000.bin": "ffff"})]
    with pytest.raises(ComparisonError, match=r"validation data \(env.json val_sha256\) differ"):
        compare_runs(a, b)
    forced = compare_runs(a, b, force=True)
    assert forced.forced_problems and "validation data" in forced.forced_problems[0]


@pytest.mark.parametrize("change, message", [
    ({"tokenizer_sha": "0000"}, "tokenizers"),
    ({"eval_mode": "sliding"}, "evaluation modes"),
    ({"val_targets": 2048}, "scored validation targets"),
    ({"env": False}, "no env.json"),
])
def test_compare_refuses_other_mismatches(tmp_path, change, message):
    a = [fake_run(tmp_path, "a", seed=1, val_loss=2.08)]
    b = [fake_run(tmp_path, "b", seed=1, val_loss=2.06, **change)]
    with pytest.raises(ComparisonError, match=message):
        compare_runs(a, b)


def test_cli_compare_json_plot_and_refusal(tmp_path, capsys):
    a = [str(fake_run(tmp_path, f"a{s}", seed=s, val_loss=2.08 + s * 1e-3)) for s in (1, 2, 3)]
    b = [str(fake_run(tmp_path, f"b{s}", seed=s, val_loss=2.06 + s * 1e-3)) for s in (1, 2, 3)]
    plot = tmp_path / "cmp.png"
    assert main(["compare", *a, "--", *b, "--json", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["diff_val_loss_nats"] == pytest.approx(-0.02)
    assert out["welch_one_sided"]["p"] < 0.01 and out["beats_by_margin_at_p_0.01"] is True
    assert plot.stat().st_size > 1000
    bad = str(fake_run(tmp_path, "bad", seed=9, val_loss=2.0, eval_mode="sliding"))
    assert main(["compare", "--plot", str(plot), *a, "--", bad]) == 2
    assert "evaluation modes" in capsys.readouterr().err
    assert main(["compare", *a, *b]) == 2
    assert "separated by --" in capsys.readouterr().err


def test_split_sides():
    assert split_sides(["a", "b", "--", "c"]) == (["a", "b"], ["c"])
    assert split_sides(["--", "a", "--", "c"]) == (["a"], ["c"])
    with pytest.raises(ComparisonError):
        split_sides(["a", "--"])


# ----------------------------------------------------------------------------- report

def test_report_renders_every_run(tmp_path, capsys):
    runs = [fake_run(tmp_path / "runs", f"r{i}", seed=i, val_loss=2.0 + i / 10, recipe=f"rec{i}", legal=i != 2)
            for i in range(4)]
    rows = report_rows(load_runs([tmp_path / "runs"]))  # a folder of run folders expands to its runs
    assert [r["run"] for r in rows] == [r.name for r in runs]
    table = markdown_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(runs)
    assert lines[0].startswith("| run | recipe | seed | val_bpb | artifact bytes | steps | train s | eval s | legal |")
    assert "| 1,234,567 |" in lines[2] and "**no**" in lines[4]
    plot = tmp_path / "curves.png"
    assert main(["report", *map(str, runs), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert all(f"| r{i} | rec{i} |" in out for i in range(4))
    assert plot.stat().st_size > 1000
    assert main(["report", str(runs[0]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["val_bpb"] == pytest.approx(rows[0]["val_bpb"])


def test_report_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="no result.json"):
        load_runs([tmp_path / "empty"])
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no result.json" in capsys.readouterr().err
