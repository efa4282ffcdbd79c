"""Fault suite figures (issue #9): run tests/test_faults.py (plus the never-unpickle check of test_artifact.py)
under pytest with a JUnit XML report, and tabulate cases tried / passed per category.

Categories are the test classes of tests/test_faults.py: Artifacts (byte flips in every region and every tensor
part, truncations, non-artifacts, well-checksummed but ill-formed headers, loading never unpickles), Memory
bound (crafted files loaded by a fresh process; each case's peak-RSS increase is reported), Data (bad
shards and folders, before training), Mismatch (tokenizer / data / model vocabulary), Config (bad keys, types and
combinations, in Python and through the CLI), Training (NaN/inf, SIGTERM + resume, disk full at a checkpoint),
Writes (failing writes of checkpoints, artifacts, shards and run files) and Distributed (a gloo rank killed or
hung). Artifact tests also count every damaged file they tried to load and how many loaded silently.

    python benchmarks/faults.py [--out benchmarks/results/faults.json] [--no-slow]

Writes the JSON and prints the markdown table (also written beside the JSON as faults.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_faults.py", "tests/test_artifact.py::test_loading_never_unpickles_or_evaluates"]
CATEGORIES = {  # test class -> (category, what it covers)
    "TestArtifacts": ("Artifacts", "one byte flipped in every region and every tensor part, truncations, "
                                   "non-artifacts, ill-formed headers with valid checksums; never unpickles"),
    "TestMemoryBound": ("Memory bound", "crafted files with valid checksums loaded by a fresh process: decompression "
                                        "bombs (all four compressors, the header too), 500,000-deep JSON, configs "
                                        "asking for 26.8 B parameters, a million layers or 2**71-element tensors: "
                                        "refused within +100 MB peak RSS"),
    "TestData": ("Shards and data folders", "bad magic/version, size mismatch, truncation, id >= vocab, empty or "
                                            "missing folders and splits, bad tokenizer: errors before training"),
    "TestMismatch": ("Vocabulary mismatches", "tokenizer vs data vs model.vocab_size, all three values named"),
    "TestConfig": ("Config", "unknown keys (nearest key suggested), wrong types, impossible combinations, "
                             "over budget: Python and CLI (exit 2)"),
    "TestTraining": ("Training", "NaN/inf loss (exit 3, last good weights kept), SIGTERM at steps 1/3/5/2+4 then "
                                 "resume bit-identical, torn log line, damaged checkpoint at --resume, disk full at a checkpoint"),
    "TestWrites": ("Failing writes", "full disk / read-only folder while writing checkpoints, artifacts, shards, "
                                     "result.json, log.jsonl, config.toml: previous files intact; damaged checkpoints"),
    "TestDistributed": ("Distributed", "one of two gloo ranks killed or hung: the survivor exits non-zero with a "
                                       "message within a bound (direct launch and torchrun)"),
}


def category_of(classname: str, name: str) -> str:
    cls = classname.rsplit(".", 1)[-1]
    if cls in CATEGORIES:
        return cls
    if "never_unpickles" in name:
        return "TestArtifacts"
    return cls


def run_suite(junit: Path, slow: bool) -> tuple[int, float]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
           "-o", "junit_family=xunit1", *TESTS]
    if not slow:
        cmd += ["-m", "not slow"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return proc.returncode, time.perf_counter() - start


def child_cpu_seconds() -> float:
    """CPU seconds (user + system) of every finished child process: the suite's cost on one free core."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summarise(junit: Path) -> dict:
    tree = ET.parse(junit)
    rows: dict[str, dict] = {}
    cases = []
    corruptions = silent = 0
    for case in tree.iter("testcase"):
        cls = category_of(case.get("classname", ""), case.get("name", ""))
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed", "error": "failed", "skipped": "skipped"}[tag]
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        corruptions += int(props.get("corruptions", 0))
        peak = {"peak_rss_added_mb": float(props["peak_rss_added_mb"])} if "peak_rss_added_mb" in props else {}
        silent += int(props.get("silent_loads", 0))
        row = rows.setdefault(cls, {"tried": 0, "passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0})
        row["tried"] += outcome != "skipped"
        row[outcome] += 1
        row["seconds"] += float(case.get("time", 0))
        if peak:
            row["peak_rss_added_mb"] = max(row.get("peak_rss_added_mb", 0.0), peak["peak_rss_added_mb"])
        cases.append({"category": cls, "test": case.get("name"), "outcome": outcome,
                      "seconds": round(float(case.get("time", 0)), 3), **peak,
                      **({"corruptions": int(props["corruptions"])} if "corruptions" in props else {})})
    order = list(CATEGORIES) + sorted(set(rows) - set(CATEGORIES))
    categories = [{"category": CATEGORIES.get(c, (c, ""))[0], "covers": CATEGORIES.get(c, (c, ""))[1],
                   **{k: (round(v, 1) if k == "seconds" else v) for k, v in rows[c].items()}}
                  for c in order if c in rows]
    return {"categories": categories, "cases": cases, "corrupted_artifacts_tried": corruptions,
            "corrupted_artifacts_loaded_silently": silent}


def markdown(summary: dict) -> str:
    lines = ["| category | cases tried | passed | peak RSS added | what is covered |", "| --- | ---: | ---: | ---: | --- |"]
    for row in summary["categories"]:
        peak = f"{row['peak_rss_added_mb']:.1f} MB" if "peak_rss_added_mb" in row else "—"
        lines.append(f"| {row['category']} | {row['tried']} | {row['passed']} | {peak} | {row['covers']} |")
    tried = sum(r["tried"] for r in summary["categories"])
    passed = sum(r["passed"] for r in summary["categories"])
    lines.append(f"| **total** | **{tried}** | **{passed}** | | {summary['corrupted_artifacts_tried']:,} damaged "
                 f"artifact files loaded, {summary['corrupted_artifacts_loaded_silently']} silently |")
    measured = [c for c in summary["cases"] if "peak_rss_added_mb" in c]
    if measured:
        lines += ["", "| crafted file (memory bound) | outcome | peak RSS added |", "| --- | --- | ---: |"]
        for c in measured:
            what = c["test"].split("[", 1)[-1].rstrip("]")
            lines.append(f"| {what} | {c['outcome']} | {c['peak_rss_added_mb']:.1f} MB |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "faults.json"))
    parser.add_argument("--no-slow", action="store_true", help="skip the distributed (slow-marked) cases")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "faults.xml"
        code, seconds = run_suite(junit, slow=not args.no_slow)
        cpu_seconds = child_cpu_seconds()
        if not junit.is_file():
            print("pytest wrote no report", file=sys.stderr)
            return 2
        summary = summarise(junit)
    import torch

    report = {"benchmark": "faults", "command": "python benchmarks/faults.py", "pytest_exit_status": code,
              "wall_seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
              "load_average_at_start": round(load, 1), "python": platform.python_version(), "torch": torch.__version__,
              "cpu_count": os.cpu_count(), "tests": TESTS, **summary}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(summary)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out} ({seconds:.0f} s wall, {cpu_seconds:.0f} s CPU, load {load:.1f} at start; "
          f"pytest exit status {code})")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
