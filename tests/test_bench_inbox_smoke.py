"""Smoke test of bench/bench_inbox.py: a quick run with a small N completes and prints every row.

It checks that the benchmark runs, that every system ends up holding the same
inbox (the benchmark's own consistency check), and that every row has a
positive figure for imago and for each peer; it never checks a timing against
a target (the machine is noisy, and the verdicts are the benchmark's to print).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("lmdb")
pytest.importorskip("ZODB")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_inbox.py")
N = 600
NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?x?|n/a)"
SYSTEMS = ["imago", "SQLite", "LMDB", "ZODB BTree", "ZODB list"]

HEADINGS = [
    "== building:",
    "== Inbox workload, N = 600 mails",
    "== imago's advantage over each peer",
    "== Verdict ==",
]

# (row label, may a figure be "n/a"?): one figure per system in the first
# table, one per peer in the second.
ROWS = [
    (r"bulk append, per 500-mail commit \(/s\)", False),
    (r"bulk append, whole build \(/s\)", False),
    (r"durable single appends \(/s\)", False),
    (r"single append: bytes to write\(\)", True),
    (r"reopen at N = 600 \(ms\)", False),
    (r"random reads of inbox\[i\]\['subject'\] \(/s\)", False),
    (r"mark read, one durable commit \(ms\)", False),
    (r"mark read: bytes to write\(\)", True),
    (r"delete middle, one durable commit \(ms\)", False),
    (r"size on disk \(MiB\)", False),
]
FIRST_TABLE_ONLY = [
    (r"reopen at N/10 = 60 \(ms\)", False),
    (r"close \(ms\)", False),
    (r"open N / open N/10", False),
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    json_path = tmp_path_factory.mktemp("bench") / "figures.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--n", str(N),
                           "--json", str(json_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    return proc, json_path


def section(output: str, title: str) -> str:
    """The text of the section whose heading starts with title."""
    start = output.index(title)
    end = output.find("\n== ", start + 1)
    return output[start:] if end < 0 else output[start:end]


def figures(text: str, label: str, count: int) -> list[str]:
    pattern = r"^\s*" + label + "".join(r"\s+" + NUMBER for _ in range(count)) + r"\s*$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no row {label!r} with {count} figures in:\n{text}"
    return list(match.groups())


def check_positive(values: list[str], label: str, optional: bool) -> None:
    if optional and all(v == "n/a" for v in values):
        pytest.skip("no /proc/self/io here (not Linux)")
    for value in values:
        assert value != "n/a", (label, values)
        assert float(value.rstrip("x").replace(",", "")) > 0, (label, values)


def test_quick_run_exits_cleanly(quick_run):
    """The quick benchmark exits with status 0 (1 would mean the systems disagree)."""
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_quick_run_prints_every_section(quick_run):
    """Each heading is printed, and the systems agree with the model inbox."""
    proc, _ = quick_run
    for heading in HEADINGS:
        assert heading in proc.stdout, heading
    assert "consistency: every system holds the model's" in proc.stdout
    table = section(proc.stdout, "== Inbox workload")
    assert re.search(r"^\s*measure\s+" + r"\s+".join(SYSTEMS) + r"\s*$", table, re.MULTILINE)


@pytest.mark.parametrize("label,optional", ROWS + FIRST_TABLE_ONLY)
def test_quick_run_reports_every_system(quick_run, label, optional):
    """Every row of the results table has a positive figure for each of the five systems."""
    proc, _ = quick_run
    table = section(proc.stdout, "== Inbox workload")
    check_positive(figures(table, label, len(SYSTEMS)), label, optional)


@pytest.mark.parametrize("label,optional", ROWS)
def test_quick_run_reports_every_ratio(quick_run, label, optional):
    """Every row of the ratio table has imago's advantage over each of the four peers."""
    proc, _ = quick_run
    table = section(proc.stdout, "== imago's advantage")
    check_positive(figures(table, label, len(SYSTEMS) - 1), label, optional)


def test_quick_run_prints_a_verdict_per_target(quick_run):
    """A verdict line per target, each met or NOT MET, and the same list in the JSON."""
    proc, json_path = quick_run
    verdict = proc.stdout.split("== Verdict ==", 1)[1]
    numbers = re.findall(r"^\s*(?:met|NOT MET)\s+([1-6])\. ", verdict, re.MULTILINE)
    assert numbers == ["1", "2", "3", "4", "5", "6"]
    data = json.loads(json_path.read_text())
    assert [v["target"].split(".")[0] for v in data["verdicts"]] == numbers
    assert data["config"]["n"] == N
    assert data["problems"] == []
