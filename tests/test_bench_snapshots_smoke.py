"""Smoke test of bench/bench_snapshots.py: the quick run completes and prints every row.

It checks that the benchmark runs and reports a positive figure for the small
and the large image in every row, and a verdict per target; it never checks a
timing against a target (the machine is noisy, and the verdicts are the
benchmark's to print).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_snapshots.py")
NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"

HEADINGS = [
    "== 1. Making a snapshot",
    "== 2. Listing 10,000 snapshots",
    "== 3. Opening a version 500 commits old",
    "== 4. History of one global over",
    "== Verdict ==",
]
ROWS = [
    r"make a snapshot \(ms\)",
    r"list 10,000 snapshots \(ms\)",
    r"store\.view\(old\) \+ close \(ms\)",
    r"img\.at\(old\), read one root value \(ms\)",
    r"open read-only \+ view\(old\) \+ close \(ms\)",
    r"reference: open the head read-only \+ close \(ms\)",
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    json_path = tmp_path_factory.mktemp("bench") / "figures.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--reps", "3",
                           "--json", str(json_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    return proc, json_path


def test_quick_run_exits_cleanly(quick_run):
    """The quick benchmark exits with status 0."""
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr


def test_quick_run_prints_every_section(quick_run):
    """Each section's heading and the verdict section are printed."""
    proc, _ = quick_run
    for heading in HEADINGS:
        assert heading in proc.stdout, heading


@pytest.mark.parametrize("label", ROWS)
def test_quick_run_reports_positive_figures(quick_run, label):
    """Every row has a positive figure for the small image, the large one, and their ratio."""
    proc, _ = quick_run
    match = re.search(r"^\s*" + label + r"\s+" + NUMBER + r"\s+" + NUMBER + r"\s+" + NUMBER + "x",
                      proc.stdout, re.MULTILINE)
    assert match, f"no row {label!r} in:\n{proc.stdout}"
    assert all(float(v.replace(",", "")) > 0 for v in match.groups())


def test_quick_run_prints_a_verdict_per_target(quick_run):
    """Five verdict lines, each met or NOT MET, and the same list in the JSON."""
    proc, json_path = quick_run
    verdict = proc.stdout.split("== Verdict ==", 1)[1]
    numbers = re.findall(r"^\s*(?:met|NOT MET)\s+([1-5])\. ", verdict, re.MULTILINE)
    assert numbers == ["1", "2", "3", "4", "5"]
    data = json.loads(json_path.read_text())
    assert [v["target"].split(".")[0] for v in data["verdicts"]] == numbers
    assert data["listed"]["small"] == data["listed"]["large"] == 10_000


@pytest.mark.parametrize("label", [r"history, all [0-9,]+ entries", r"history, first 200 entries",
                                   r"reference, first 200 entries"])
def test_quick_run_reports_the_history_rows(quick_run, label):
    """Section 4: seconds, versions opened and versions found, for the fast way and the
    reference over the same entries (the same answer: equal counts of versions found;
    the fast way opens fewer versions, a count, not a timing)."""
    proc, json_path = quick_run
    match = re.search(r"^\s*" + label + r"\s+" + NUMBER + r"\s+" + NUMBER + r"\s+" + NUMBER + "$",
                      proc.stdout, re.MULTILINE)
    assert match, f"no row {label!r} in:\n{proc.stdout}"
    seconds, opened, found = (float(v.replace(",", "")) for v in match.groups())
    assert seconds > 0 and opened >= 1 and found >= 2
    history = json.loads(json_path.read_text())["history"]
    assert history["fast_part"]["versions"] == history["reference_part"]["versions"]
    assert history["fast_part"]["opened"] < history["reference_part"]["opened"]
