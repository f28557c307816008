"""Smoke test of bench/bench_pager.py: the quick run completes and prints every table.

It checks that the benchmark runs and reports a positive figure for imago and
for each peer in every section; it never checks a timing against a target
(the machine is noisy, and the verdicts are the benchmark's to print).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("lmdb")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_pager.py")
NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?|n/a)"

HEADINGS = [
    "== 1. Durable one-page commits per second",
    "== 2. Bytes appended per one-page commit",
    "== 3. Random page reads per second from Python",
    "== 4. Open time",
    "== Verdict ==",
]

# (row label, how many figures to read, may a figure be "n/a"?)
ROWS = [
    (r"random page of 1,000 \(/s\)", 3, False),          # imago, SQLite, LMDB
    (r"same page every commit \(/s\)", 3, False),         # imago, SQLite, LMDB
    (r"appended bytes / commit \(store count\)", 1, False),   # imago
    (r"bytes to write\(\) / commit, bench 1", 3, True),        # imago, SQLite, LMDB
    (r"first pass, every page once \(/s\)", 2, False),    # imago, LMDB
    (r"warm, [0-9,]+ random reads \(/s\)", 2, False),     # imago, LMDB
    (r"open \+ close as the writer \(ms\)", 2, False),    # small store, large store
    (r"open \+ close read-only \(ms\)", 2, False),        # small store, large store
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    json_path = tmp_path_factory.mktemp("bench") / "figures.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--json", str(json_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc, json_path


def figures(output: str, label: str, count: int) -> list[str]:
    pattern = r"^\s*" + label + "".join(r"\s+" + NUMBER for _ in range(count))
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"no row {label!r} with {count} figures in:\n{output}"
    return list(match.groups())


def test_quick_run_exits_cleanly(quick_run):
    """The quick benchmark exits with status 0."""
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr


def test_quick_run_prints_every_section(quick_run):
    """Each benchmark's heading and the verdict section are printed."""
    proc, _ = quick_run
    for heading in HEADINGS:
        assert heading in proc.stdout, heading


@pytest.mark.parametrize("label,count,optional", ROWS)
def test_quick_run_reports_positive_figures(quick_run, label, count, optional):
    """Every figure for imago and for each peer parses as a positive number."""
    proc, _ = quick_run
    values = figures(proc.stdout, label, count)
    if optional and all(v == "n/a" for v in values):
        pytest.skip("no /proc/self/io here (not Linux)")
    for value in values:
        assert value != "n/a", (label, values)
        assert float(value.replace(",", "")) > 0, (label, values)


def test_quick_run_prints_a_verdict_per_target(quick_run):
    """A verdict line per target (2b: target 2 over the whole large store), each met or
    NOT MET, and the same list in the JSON."""
    proc, json_path = quick_run
    verdict = proc.stdout.split("== Verdict ==", 1)[1]
    numbers = re.findall(r"^\s*(?:met|NOT MET)\s+([1-4]b?)\. ", verdict, re.MULTILINE)
    assert numbers == ["1", "2", "2b", "3", "4"]
    data = json.loads(json_path.read_text())
    assert [v["target"].split(".")[0] for v in data["verdicts"]] == numbers
    assert data["commits"]["commits_per_s"]["imago_random"] > 0
