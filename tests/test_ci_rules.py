"""Rules of the test suite itself: under CI (CI=true) a test that needs the shared data fails when it is missing
instead of skipping, and no test skips on its own terms (catch-all skips turn bugs into skips)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO

# One test per way a test reaches the shared data: the shared_data fixture, fixtures built on it, the micro
# fixture, and need_shared_data called directly.
NEEDS_DATA = [
    "tests/test_data.py::test_byte_rule_on_official_val_sample_equals_decoded_utf8",
    "tests/test_eval.py::test_batching_does_not_change_scores",
    "tests/test_eval_modes.py::test_document_cut_windows_never_reach_before_the_targets_document",
    "tests/test_byte_rule.py::test_the_caseops_tokenizer_is_refused",
    "tests/test_train.py::test_cli_train_quick",
    "tests/test_faults.py::TestMismatch::test_disagreement_is_an_error_naming_all_three_values",
    "tests/test_recipes_e2e.py::test_recipe_runs_end_to_end_from_the_cli[tiny]",
]


def outcomes(tmp_path, ci: bool) -> dict[str, str]:
    """Run NEEDS_DATA in a fresh pytest with the shared data pointed at an empty folder; test id -> outcome."""
    empty = tmp_path / "no_data"
    empty.mkdir(exist_ok=True)
    report = tmp_path / f"report_{ci}.xml"
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PGOLF_SHARED_DATA=str(empty), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    if ci:
        env["CI"] = "true"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                    *NEEDS_DATA], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    result = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        result[f"{case.get('classname')}::{case.get('name')}"] = next(iter(kinds), "passed")
    return result


@pytest.mark.slow
def test_tests_that_need_the_shared_data_fail_under_ci_and_skip_elsewhere(tmp_path):
    under_ci, elsewhere = outcomes(tmp_path, ci=True), outcomes(tmp_path, ci=False)
    assert len(under_ci) >= len(NEEDS_DATA) and set(under_ci) == set(elsewhere)
    assert {k: v for k, v in under_ci.items() if v not in ("failure", "error")} == {}
    assert {k: v for k, v in elsewhere.items() if v != "skipped"} == {}


def test_no_test_skips_on_its_own_terms():
    """pytest.skip / importorskip only in conftest's need (shared data, a system tool, Linux: a failure under CI);
    skipif only for a missing CUDA device."""
    found = []
    for path in sorted((REPO / "tests").glob("*.py")):
        if path.name == "conftest.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("skip", "importorskip", "skipif", "xfail"):
                line = ast.get_source_segment(path.read_text(encoding="utf-8"), node) or ""
                context = path.read_text(encoding="utf-8").splitlines()[node.lineno - 1]
                if node.attr == "skipif" and "cuda" in context:
                    continue
                found.append(f"{path.name}:{node.lineno}: {line}")
    assert found == []


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("", False), ("false", False)])
def test_ci_is_read_from_the_environment(monkeypatch, value, expected):
    from conftest import under_ci
    monkeypatch.setenv("CI", value)
    assert under_ci() is expected
