"""Mutation testing of the code behind the score (issue #20 item 5): mutmut over eval/ and the byte rule.

mutmut changes one small thing at a time (an operator, a constant, a comparison, a dropped argument) in every
function of src/pgolf/eval/ and in the byte-rule functions of src/pgolf/data/tokenizer.py, and runs the tests
that cover that function; a mutant the tests do not notice "survives". The score is killed / (killed +
survived + timeouts counted as killed are reported apart). Each run works on a copy of the tree in a temporary
folder, so the repository is never touched:

    python benchmarks/mutation.py --label after                    # the working tree with its tests
    python benchmarks/mutation.py --label before --ref e289191     # sources and tests of an older commit
    python benchmarks/mutation.py --label after --recheck          # after adding tests: rerun the survivors only

Each call updates its label in benchmarks/results/mutation.json (other labels are kept), with the score, the
counts, and every surviving mutant with its diff; survivors listed in EQUIVALENT below carry the reason they
cannot be killed (an equivalent mutant: the same function computed another way, or only a message changed).
`--only 'pgolf.eval.bpb.*' --merge` runs whole modules and keeps the label's other modules (a run in parts:
the entry says which modules are not run yet, and `complete` when none is left). `--recheck` reruns only the
mutants a label's run did not kill, with the tests of the working tree, and updates that entry (its `rechecks`
list says when and with which tree): tests are only ever added, so a mutant killed before stays killed.
`--max-children` sets the parallel workers (default 2); on 2 shared cores a whole run takes several hours (a
surviving mutant runs every test that covers its function), hence the parts.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
import tomllib
from io import BytesIO
from pathlib import Path

import tomli_w

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
from pgolf.training.runs import write_json  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "mutation.json"
MUTATED_FILES = ["src/pgolf/eval/*", "src/pgolf/data/tokenizer.py"]
# mutants that are run: all of eval/, and the byte rule of tokenizer.py (not its loading or training helpers)
MUTANTS = ["pgolf.eval.*", "pgolf.data.tokenizer.x_byte_tables__mutmut_*",
           "pgolf.data.tokenizer.xǁByteTablesǁtarget_bytes__mutmut_*", "pgolf.data.tokenizer.x_stream_bytes__mutmut_*",
           "pgolf.data.tokenizer.x_piece_types__mutmut_*"]
# The fast, targeted tests of those modules (the slow multi-process ones are left out by -m).
TESTS = ["tests/test_eval.py", "tests/test_eval_ranks.py", "tests/test_eval_modes.py", "tests/test_score_first.py",
         "tests/test_ttt_reference.py", "tests/test_eval_compile.py", "tests/test_byte_rule.py",
         "tests/test_evaluate_artifact.py::test_tail_drop_scores_exactly_the_challenges_targets",
         "tests/test_evaluate_artifact.py::test_tail_settings_are_checked",
         "tests/test_data.py::test_byte_rule_on_official_val_sample_equals_decoded_utf8",
         "tests/test_data.py::test_trained_tokenizer_keeps_exact_bytes"]
# The leak tests build modules from pgolf's source text, which in mutmut's copy holds every mutant: left out.
# test_cli_eval_flags only checks the CLI's plumbing of eval flags (the modes it reaches have their own tests) and
# takes ~50 s: every surviving mutant of the functions it covers would pay for it. The tests that trace the
# forwards with dynamo (fullgraph) are left out too: mutmut's trampoline around every eval function reads a
# ContextVar, which dynamo cannot trace; test_eval_compile's other tests check the compiled path eagerly.
PYTEST_ARGS = ["-p", "no:cacheprovider", "-m", "not slow and not gpu", "-k",
               "not deliberate_leak and not test_cli_eval_flags and not compiles_one_graph and not traced_whole", "-q"]

# Lines that only build text (error messages, notes, the time cap's "where"): not part of any score, not mutated.
TEXT_ONLY_LINES = [r"raise \w+\(", r"^\s*f?[\"']", r"^\s*\+ \(f?[\"']", r"\bnotes\b", r"deadline\.check\(",
                   r"deadline, f[\"']"]
# Runs each mutant's tests fastest first (by the durations mutmut measured), so a killed mutant costs little.
ORDER_PLUGIN = "mutation_fastest_first"
ORDER_PLUGIN_SOURCE = '''
import json
from pathlib import Path

def pytest_collection_modifyitems(items):
    stats = Path("mutmut-stats.json")
    durations = json.loads(stats.read_text()).get("duration_by_test", {}) if stats.is_file() else {}
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
'''

# Survivors that no test can kill, by mutant name: why the mutant computes the same score. Grouped by reason.
_CHUNK = "pgolf.eval.ttt_chunk.x_chunk_ttt_nll__mutmut_"
_PLAIN = "pgolf.eval.bpb.x_plain_nll__mutmut_"
_CLIP = "pgolf.eval.windows.x_clip_to_documents__mutmut_"
_SLIDING = "pgolf.eval.sliding.x_sliding_nll__mutmut_"
_PRE = "pgolf.eval.ttt_pre.x_pre_ttt__mutmut_"
_EQUIVALENT_GROUPS: dict[str, list[str]] = {
    "windows.score / k instead of // k: the scores are non-decreasing and, for an integer c, score / k >= c exactly "
    "when score // k >= c, so searchsorted finds the same chunk bounds": [f"{_CHUNK}21"],
    "SGD built without its lr: before each chunk's training every group's lr is set to cosine_lr, so the initial "
    "lr is never used": [f"{_CHUNK}43"],
    "one more chunk bound (np.arange(total + 2)): the loop reads bounds[0 .. total] only": [f"{_CHUNK}58"],
    "plain_nll's use_compiled defaults to True: its one caller, evaluate, always passes use_compile(cfg, device)":
        [f"{_PLAIN}1"],
    "a rank with no window sends torch.zeros(1) instead of an empty tensor: gather_concat pads every part to the "
    "largest count (>= 1) and cuts this rank's part to its count, 0": [f"{_PLAIN}114"],
    "not killable on the CPU: the local scores are already on the model's device there, so .to(None) is "
    ".to(device); on GPUs the CPU tensor reaches NCCL, which refuses it (an error, never a different score)":
        [f"{_PLAIN}139"],
    "np.searchsorted's side left to its default, which is 'left'": [f"{_CLIP}27"],
    "the window lists hold Python ints and are never empty (every tiling has a window), so np.asarray makes them "
    "int64 without being told": [f"{_CLIP}56", f"{_CLIP}58"],
    "message only: the 'where' that a time-cap error names": [f"{_SLIDING}{n}" for n in (27, 36, 37)],
    "notes only: the stride and the kind of windows that the notes name": [f"{_SLIDING}{n}" for n in range(43, 51)],
    "AdamW built without eps: torch's default eps is 1e-8, the value passed": [f"{_PRE}31"],
    "notes only: the first and last training loss in the notes (no losses only when eval.ttt_epochs is 0, which "
    "check_eval_config refuses for eval.ttt = 'pre')": [f"{_PRE}{n}" for n in (59, 60, 64, 65)],
    "log_softmax over dim +1 of 2-D (positions x vocab) logits is dim -1": ["pgolf.eval.audit.x__record__mutmut_6"],
    "np.sum of an integer array narrower than int64 sums in int64 already (numpy's default for integers)":
        ["pgolf.eval.result.x_summarize__mutmut_10", "pgolf.eval.result.x_summarize__mutmut_12"],
}
EQUIVALENT: dict[str, str] = {name: reason for reason, names in _EQUIVALENT_GROUPS.items() for name in names}


def export_tree(ref: str | None, dest: Path) -> str:
    """src/, tests/ and pyproject.toml of `ref` (a git revision) or of the working tree, into dest; returns a label."""
    parts = ["src", "tests", "pyproject.toml"]
    if ref is None:
        for part in parts:
            source = REPO / part
            if source.is_dir():
                shutil.copytree(source, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, dest / part)
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", *parts], capture_output=True,
                               text=True).stdout.strip()
        return f"{head.stdout.strip()}{' + uncommitted changes' if dirty else ''}"
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, *parts], capture_output=True, check=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True,
                          check=True).stdout.strip()


def configure(dest: Path, tests: list[str], timeout_multiplier: float) -> list[str]:
    """Write mutmut's settings into the copy's pyproject.toml; returns the tests that exist in that tree."""
    present = [t for t in tests if (dest / t.split("::")[0]).is_file()]
    config = tomllib.loads((dest / "pyproject.toml").read_text())
    config.setdefault("tool", {})["mutmut"] = {
        "source_paths": ["src"], "only_mutate": MUTATED_FILES, "do_not_mutate_patterns": TEXT_ONLY_LINES,
        "pytest_add_cli_args_test_selection": present, "pytest_add_cli_args": PYTEST_ARGS + ["-p", ORDER_PLUGIN],
        "also_copy": [f"{ORDER_PLUGIN}.py"], "timeout_multiplier": timeout_multiplier,
        "use_git_change_detection": False,
    }
    (dest / f"{ORDER_PLUGIN}.py").write_text(ORDER_PLUGIN_SOURCE)
    (dest / "pyproject.toml").write_text(tomli_w.dumps(config))
    return present


REPORT_SCRIPT = """
import json, sys
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files
import fnmatch
patterns = json.loads(sys.argv[1])
out = []
for path in walk_mutatable_files():
    m = SourceFileMutationData(path=path)
    m.load()
    for name, code in sorted(m.exit_code_by_key.items()):
        if not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        status = status_by_exit_code[code]
        entry = {"name": name, "file": str(path), "status": status}
        if status not in ("killed", "caught by type check", "not checked"):
            entry["diff"] = get_diff_for_mutant(name, path=path)
        out.append(entry)
json.dump(out, sys.stdout)
"""


def run_mutmut(work: Path, patterns: list[str], max_children: int, log) -> tuple[int, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)  # mutmut puts its mutated copy of src/ first on the path itself
    mutmut = Path(sys.executable).parent / "mutmut"
    start = time.perf_counter()
    proc = subprocess.run([str(mutmut), "run", "--max-children", str(max_children), *patterns], cwd=work, env=env,
                          stdout=log, stderr=subprocess.STDOUT)
    return proc.returncode, time.perf_counter() - start


def collect(work: Path, patterns: list[str]) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", REPORT_SCRIPT, json.dumps(patterns)], cwd=work, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def summarise(counts: dict[str, int], listed: list[dict]) -> dict:
    """The score and the lists, from the status counts of every mutant and the entries of those not killed."""
    killed = counts.get("killed", 0) + counts.get("timeout", 0)  # a mutant that hangs the tests is noticed
    survived = [m for m in listed if m["status"] == "survived"]
    untested = [m for m in listed if m["status"] == "no tests"]
    explained = [dict(m, reason=EQUIVALENT[m["name"]]) for m in survived if m["name"] in EQUIVALENT]
    unexplained = [m for m in survived if m["name"] not in EQUIVALENT]
    scored = killed + counts.get("survived", 0) + counts.get("no tests", 0)
    return {
        "mutants": sum(counts.values()), "counts": dict(sorted(counts.items())),
        "score": round(killed / scored, 4) if scored else None,
        "score_without_equivalent": round(killed / (scored - len(explained)), 4) if scored - len(explained) else None,
        "survivors_unexplained": unexplained, "survivors_equivalent": explained,
        "untested": untested,
        "other": [m for m in listed if m["status"] not in ("killed", "timeout", "survived", "no tests")],
    }


def status_counts(mutants: list[dict]) -> dict[str, int]:
    return dict(sorted(Counter(m["status"] for m in mutants).items()))


def not_killed(mutants: list[dict]) -> list[dict]:
    return [m for m in mutants if m["status"] not in ("killed", "caught by type check")]


def module_of(name: str) -> str:
    """'pgolf.eval.bpb.x_evaluate__mutmut_3' -> 'pgolf.eval.bpb' (every mutated module is three names deep)."""
    return ".".join(name.split(".")[:3])


LISTS = ("survivors_unexplained", "survivors_equivalent", "untested", "other")


def listed_of(entry: dict) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "reason"} for key in LISTS for m in entry.get(key, [])]


def merged(previous: dict | None, everything: list[dict], run_info: dict) -> dict:
    """The label's entry after a run: the modules this run mutated replace theirs in `previous` (all of them when
    previous is None); `everything` is every mutant of the mutated files, those not run marked "not checked"."""
    totals = Counter(module_of(m["name"]) for m in everything)
    ran = [m for m in everything if m["status"] != "not checked"]
    done_by_module = Counter(module_of(m["name"]) for m in ran)
    ran_modules = sorted(done_by_module)
    for module, done in done_by_module.items():
        if done != totals[module]:
            raise SystemExit(f"{module}: {done} of its {totals[module]} mutants were run; --only must select whole "
                             f"modules (e.g. '{module}.*') for the result to be merged")
    modules = {k: v for k, v in (previous or {}).get("modules", {}).items() if k not in ran_modules}
    listed = [m for m in listed_of(previous or {}) if module_of(m["name"]) not in ran_modules]
    for module in ran_modules:
        mine = [m for m in ran if module_of(m["name"]) == module]
        modules[module] = {"mutants": len(mine), "counts": status_counts(mine), **run_info}
        listed += not_killed(mine)
    return entry_from(modules, listed, totals)


def entry_from(modules: dict, listed: list[dict], totals: dict[str, int]) -> dict:
    counts = sum((Counter(info["counts"]) for info in modules.values()), Counter())
    not_run = sorted(set(totals) - set(modules))
    return {"complete": not not_run, "modules_not_run": {m: totals[m] for m in not_run},
            "mutants_by_module": dict(sorted(totals.items())), "modules": dict(sorted(modules.items())),
            **summarise(counts, sorted(listed, key=lambda m: m["name"]))}


def recheck(previous: dict, rerun: list[dict], info: dict) -> dict:
    """The entry after re-running some of its not-killed mutants with today's tests: each rerun mutant takes its
    new status. Only mutants that the earlier run listed (survived, untested, other) may be rerun: a killed one
    stays killed as long as tests are only added, which is what a recheck is for."""
    listed = {m["name"]: m for m in listed_of(previous)}
    modules = {k: dict(v, counts=dict(v["counts"])) for k, v in previous["modules"].items()}
    for m in rerun:
        if m["name"] not in listed:
            raise SystemExit(f"--recheck: {m['name']} was not listed as surviving in the earlier run; rerun its "
                             "module instead")
        counts = modules[module_of(m["name"])]["counts"]
        old = listed[m["name"]]["status"]
        counts[old] -= 1
        counts[m["status"]] = counts.get(m["status"], 0) + 1
        listed[m["name"]] = m
    for v in modules.values():
        v["counts"] = {k: n for k, n in sorted(v["counts"].items()) if n}
    entry = entry_from(modules, not_killed(list(listed.values())), previous["mutants_by_module"])
    entry["rechecks"] = previous.get("rechecks", []) + [
        dict(info, rerun=len(rerun), now_killed=sum(m["status"] in ("killed", "timeout") for m in rerun))]
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="after", help="the entry of mutation.json to write (before, after, ...)")
    parser.add_argument("--ref", help="git revision to test (default: the working tree)")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--timeout-multiplier", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its mutants/ folder)")
    parser.add_argument("--only", action="append", metavar="PATTERN",
                        help="run only the mutants whose names match (whole modules, e.g. 'pgolf.eval.bpb.*')")
    parser.add_argument("--merge", action="store_true",
                        help="keep the label's other modules: the modules run replace theirs (a run in parts)")
    parser.add_argument("--recheck", action="store_true",
                        help="rerun the not-killed mutants of the label's earlier run (after adding tests) and update "
                             "that entry; with --only, just those of them that match")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    shared = Path(os.environ.get("PGOLF_SHARED_DATA", REPO.parent / "shared" / "data"))
    os.environ["PGOLF_SHARED_DATA"] = str(shared.resolve())  # the copy lives elsewhere: point it at the data
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {"benchmark": "mutation", "runs": {}}
    previous = report["runs"].get(args.label)
    patterns = args.only or MUTANTS
    if (args.recheck or args.merge) and previous is None:
        raise SystemExit(f"--recheck/--merge: {out} has no run labelled {args.label!r} to update")
    if args.recheck:
        names = [m["name"] for m in listed_of(previous)]
        patterns = [n for n in names if not args.only or any(fnmatch.fnmatch(n, p) for p in args.only)]
        if not patterns:
            raise SystemExit("--recheck: no listed mutant to rerun")
    work = Path(tempfile.mkdtemp(prefix="pgolf-mutation-"))
    try:
        tree = export_tree(args.ref, work)
        tests = configure(work, TESTS, args.timeout_multiplier)
        log_path = work / "mutmut.log"
        with open(log_path, "w") as log:
            code, seconds = run_mutmut(work, patterns, args.max_children, log)
        if code != 0:
            print(log_path.read_text()[-5000:], file=sys.stderr)
            print(f"mutmut exited with {code}; the copy is kept in {work}", file=sys.stderr)
            args.keep = True
            return code
        everything = collect(work, MUTANTS)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    command = "python benchmarks/mutation.py " + " ".join(sys.argv[1:])
    info = {"command": command, "tree": tree, "tests": tests, "max_children": args.max_children,
            "wall_seconds": round(seconds, 1)}
    if args.recheck:
        wanted = set(patterns)
        entry = recheck(previous, [m for m in everything if m["name"] in wanted], info)
    else:
        entry = merged(previous if args.merge else None, everything, info)
    report["runs"][args.label] = {
        "pytest_args": PYTEST_ARGS, "mutated": MUTANTS,
        "not_mutated_lines": {"patterns": TEXT_ONLY_LINES, "why": "they only build error messages and notes"},
        "mutmut": importlib.metadata.version("mutmut"), **entry}
    write_json(out, report)
    run = report["runs"][args.label]
    print(f"{args.label}: score {run['score']} ({run['counts']}); {len(run['survivors_unexplained'])} unexplained "
          f"survivors; modules not run: {sorted(run['modules_not_run']) or 'none'}; {seconds / 60:.0f} min; "
          f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
