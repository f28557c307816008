"""Smoke test of bench/bench_vacuum.py: the quick run completes and prints every table.

It checks that the benchmark runs, that vacuum copied and reclaimed something
and ZODB packed something, and that every row has positive figures; it never
checks a timing against the target (the machine is noisy, and the verdicts
are the benchmark's to print).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("ZODB")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_vacuum.py")
NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?|n/a)"

HEADINGS = ["== 1. Vacuum throughput", "== 2. Space (MiB)", "== Verdict =="]
ROWS = [(r"throughput \(MiB/s\)", 3), (r"ratio to disk sequential write", 3),
        (r"before", 2), (r"after", 2), (r"reclaimed", 2), (r"live data copied", 1)]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    json_path = tmp_path_factory.mktemp("bench") / "figures.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--json", str(json_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc, json_path


def test_quick_run_exits_cleanly(quick_run):
    """The quick benchmark exits with status 0 and prints every section."""
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr
    for heading in HEADINGS:
        assert heading in proc.stdout


@pytest.mark.parametrize("label, count", ROWS)
def test_rows_have_positive_figures(quick_run, label, count):
    """Each row has its figures, all positive numbers."""
    proc, _ = quick_run
    match = re.search(r"^\s*" + label + "".join(r"\s+" + NUMBER for _ in range(count)),
                      proc.stdout, re.MULTILINE)
    assert match, f"no row {label!r} in:\n{proc.stdout}"
    assert all(float(x.replace(",", "")) > 0 for x in match.groups())


def test_json_holds_the_verdict(quick_run):
    """--json writes the figures and one verdict on the throughput target."""
    _, json_path = quick_run
    res = json.loads(json_path.read_text())
    assert res["imago"][0]["copied"] > 0 and res["imago"][0]["reclaimed"] > 0
    assert len(res["verdicts"]) == 1 and "sequential write" in res["verdicts"][0]["target"]
