"""Snapshots so far: the snapshot log, boot snapshots and their status, labels,
booting an older snapshot (a branch), and the commands that show them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import image
import snapshots
import vm  # noqa: F401  (reads the image's Scheme values: '() is NIL)
from snapshots import Snapshot, SnapshotLog
from vm._types import NIL


def imago(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "browser", *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "s.image")


class TestLog:
    """The snapshot log beside the segments."""

    def test_entries_read_back_with_their_status(self, path):
        """take() and mark() are read back: a boot never marked good is crashed once no session runs."""
        image.open(path).close()
        log = SnapshotLog(path)
        log.take(1, "boot")
        log.mark(1, "good")
        log.take(2, "label", "before cleanup")
        log.take(3, "boot")
        listed = {s.id: s for s in log.snapshots()}
        assert (listed[1].status, listed[2].status, listed[3].status) == ("good", "good", "crashed")
        assert listed[2].labels == ["before cleanup"]
        assert log.snapshots(session_running=True)[-1].status == "unknown"
        assert log.newest_good().id == 2

    def test_a_torn_or_damaged_line_is_ignored(self, path):
        """A last line cut short, or a line whose checksum fails, is skipped; appends go on."""
        image.open(path).close()
        log = SnapshotLog(path)
        log.take(1, "label", "kept")
        with open(log.path, "ab") as f:
            f.write(b'0badc0de {"op":"snapshot","id":2')    # torn: no newline
        log.take(3, "label", "after")
        with open(log.path, "r+b") as f:                   # a flipped byte in the first line
            data = bytearray(f.read())
            data[12] ^= 1
            f.seek(0)
            f.write(data)
        assert [s.id for s in log.snapshots()] == [3]

    def test_a_checksummed_line_of_the_wrong_shape_is_skipped(self, path):
        """A line whose checksum holds but whose fields do not (another tool's) is skipped too."""
        from snapshots._log import _line
        image.open(path).close()
        log = SnapshotLog(path)
        with open(log.path, "ab") as f:
            f.write(_line({"op": "snapshot", "id": "seven"}))
            f.write(_line({"op": "branch", "name": 3, "tip": "x"}))
            f.write(_line({"op": "status", "id": 1}))
        log.take(2, "label", "fine")
        assert [s.id for s in log.snapshots()] == [2] and log.branch_entries() == []

    def test_branch_entries_read_back(self, path):
        image.open(path).close()
        log = SnapshotLog(path)
        log.record_branch("side", 1, 1)
        log.record_branch("side", 4, 1)
        assert [(e["name"], e["tip"]) for e in log.branch_entries()] == [("side", 1), ("side", 4)]

    def test_unknown_kinds_are_refused(self, path):
        image.open(path).close()
        with pytest.raises(ValueError):
            SnapshotLog(path).take(1, "weekly")

    def test_the_image_api(self, path):
        """img.snapshot(label) labels the current version; img.snapshots() lists; img.at(id) opens it."""
        img = image.open(path)
        img.root["x"] = 1
        snap = img.snapshot("one")
        img.root["x"] = 2
        assert [s.id for s in img.snapshots()] == [snap.id]
        old = img.at(snap.id)
        assert old.root["x"] == 1
        old.close()
        img.close()


class TestBoot:
    """imago boot leaves snapshots; an older one can be booted."""

    def test_every_boot_leaves_a_good_snapshot_when_it_ends_cleanly(self, path):
        """A clean session marks its boot good and snapshots its final version."""
        assert imago("boot", path, stdin="(define x 1)\n").returncode == 0
        listed = json.loads(imago("snapshots", path, "--json").stdout)
        assert all(set(s) == {"id", "time", "kind", "label", "status", "branch", "size"} for s in listed)
        assert {s["status"] for s in listed} == {"good"} and len(listed) == 2

    def test_a_killed_session_shows_as_crashed(self, path):
        """SIGKILL during a session: its boot snapshot is crashed, and --latest boots the last good one."""
        assert imago("boot", path, stdin="(define x 1)\n").returncode == 0
        child = subprocess.Popen([sys.executable, "-m", "browser", "boot", path], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        child.stdin.write(b"(set! x 2)\n(let loop () (loop))\n")
        child.stdin.close()   # the script runs: x is set (committed), then the loop spins
        time.sleep(3)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        statuses = [s["status"] for s in json.loads(imago("snapshots", path, "--json").stdout)]
        assert statuses[-1] == "crashed"
        result = imago("boot", path, "--latest", stdin="x\n")
        assert result.returncode == 0 and result.stdout.split()[-1] == "1"
        assert "newest known-good snapshot" in result.stderr

    def test_booting_an_older_snapshot_makes_a_branch(self, path):
        """Data destroyed after a labelled snapshot is back when that snapshot is booted; new
        work goes on from it, and the abandoned line stays readable."""
        assert imago("eval", path, "(define data (list 1 2 3))").returncode == 0
        label = imago("snapshot", path, "good data")
        snap_id = int(label.stdout.split()[1].rstrip(":"))
        assert imago("eval", path, "(set! data '())").returncode == 0
        with image.open(path) as img:
            abandoned = img.head
        result = imago("boot", path, "--snapshot", str(snap_id), stdin="(length data)\n(define more 4)\n")
        values = [line for line in result.stdout.splitlines() if not line.startswith(";;")]
        assert result.returncode == 0 and values == ["3"]
        assert f"kept as branch main~{abandoned}" in result.stdout
        assert imago("eval", path, "(list (length data) more)").stdout.strip() == "(3 4)"
        with image.open(path) as img:
            old = img.at(abandoned)
            assert old.root["data"] is NIL   # the destroyed version, on the abandoned line
            old.close()
            img.check()

    def test_a_snapshot_that_does_not_exist_is_an_error(self, path):
        assert imago("eval", path, "1").returncode == 0
        result = imago("boot", path, "--snapshot", "999", stdin="")
        assert result.returncode == 1 and "no snapshot 999" in result.stderr

    def test_size_comes_from_held_back_when_it_exists(self, path, monkeypatch, capsys):
        """snapshots.held_back(path) (the vacuum's report) fills size: the bytes only that snapshot keeps."""
        from browser.cli import main
        assert imago("eval", path, "(define x 1)").returncode == 0
        sid = snapshots.SnapshotLog(path).take(1, "label", "l").id
        assert main(["snapshots", path, "--json"]) == 0
        size = json.loads(capsys.readouterr().out)[0]["size"]
        assert isinstance(size, int) and size >= 0
        monkeypatch.setattr(snapshots, "held_back", lambda p: {sid: 4096}, raising=False)
        assert main(["snapshots", path, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["size"] == 4096

    def test_snapshots_of_a_missing_image(self, tmp_path):
        result = imago("snapshots", str(tmp_path / "none.image"))
        assert result.returncode == 1 and "no image" in result.stderr


def _fold_without_summary(log: SnapshotLog, session_running: bool = False) -> list:
    """The listing folded from every line, the summary ignored (invariant 4's reference)."""
    from snapshots._log import _Table
    table = _Table()
    for entry in log.entries():
        table.apply(entry)
    table.check()
    return table.snapshots(session_running)


def _random_log(log: SnapshotLog, seed: int, count: int) -> None:
    """A seeded mix of boots, labels, autos, statuses and branch entries."""
    import random
    rng = random.Random(seed)
    for _ in range(count):
        sid = rng.randrange(1, 60)
        choice = rng.random()
        if choice < 0.5:
            kind = rng.choice(["boot", "label", "auto"])
            log.take(sid, kind, f"l{sid}" if kind == "label" or rng.random() < 0.1 else None,
                     rng.choice(["main", "side"]))
        elif choice < 0.9:
            log.mark(sid, rng.choice(["good", "unknown", "crashed"]))
        else:
            log.record_branch(rng.choice(["a", "b"]), sid, None)


AWKWARD_LABELS = ["new\nline", 'quo"te\'s', "tab\there", "back\\slash", "ünïcødé ☃ 𝄞", "\r\x00\x1f", "", " "]


class TestSummary:
    """SNAPSHOTS.summary: a verified hint that makes a listing cheap, never a change in what it lists."""

    def test_listing_with_the_summary_equals_folding_every_line(self, path):
        """Across seeded logs, with a tail after the summary, the listing is the whole fold."""
        from snapshots._log import SUMMARY_NAME
        image.open(path).close()
        for seed in range(5):
            log = SnapshotLog(path)
            _random_log(log, seed, 120)
            assert log.snapshots() == _fold_without_summary(log)           # writes the summary
            assert os.path.exists(os.path.join(path, SUMMARY_NAME))
            _random_log(log, seed + 100, 30)                                # a tail after it
            for running in (False, True):
                assert log.snapshots(running) == _fold_without_summary(log, running)
            assert log.branch_entries() == [e for e in log.entries() if e["op"] == "branch"]
            log.table().check()
            os.remove(log.path)

    def test_a_stale_or_damaged_summary_is_ignored_and_rewritten(self, path):
        """A summary of another log, a flipped byte in the summary or in the log's prefix,
        or a torn summary: the listing is the whole fold, and a good summary comes back."""
        image.open(path).close()
        log = SnapshotLog(path)
        _random_log(log, 7, 80)
        expected = log.snapshots()
        good = _read(log.summary_path)
        for damaged in (good[:len(good) // 2], good[:-3] + bytes([good[-3] ^ 1]) + good[-2:],
                        good.replace(b" 1 ", b" 9 ", 1), b"", b"garbage\n\x00\x01"):
            with open(log.summary_path, "wb") as f:
                f.write(damaged)
            assert log.snapshots() == expected
            assert _read(log.summary_path) == good
        with open(log.path, "r+b") as f:     # a flipped byte inside the summarised prefix
            data = bytearray(f.read())
            data[12] ^= 1
            f.seek(0)
            f.write(data)
        assert log.snapshots() == _fold_without_summary(log)
        os.remove(log.path)                  # a new log, shorter than the summary's prefix
        log.take(3, "label", "fresh")
        assert [s.labels for s in log.snapshots()] == [["fresh"]]

    def test_torn_and_damaged_lines_after_the_summary(self, path):
        """A torn last line and a line with a bad checksum in the tail are skipped; appends go on."""
        image.open(path).close()
        log = SnapshotLog(path)
        log.take(1, "label", "kept")
        log.snapshots()                      # summary of line 1
        with open(log.path, "ab") as f:
            f.write(b'0badc0de {"op":"snapshot","id":2,"time":1,"kind":"auto","label":null}\n')
            f.write(b'0badc0de {"op":"snapshot","id":4')    # torn
        log.take(3, "boot")
        assert [(s.id, s.status) for s in log.snapshots()] == [(1, "good"), (3, "crashed")]

    def test_awkward_labels_round_trip_through_log_and_summary(self, path):
        """Labels with newlines, quotes, tabs, backslashes, control and non-ASCII characters."""
        image.open(path).close()
        log = SnapshotLog(path)
        for i, label in enumerate(AWKWARD_LABELS):
            log.take(i + 1, "label", label)
        first = log.snapshots()              # whole fold, then the summary
        again = SnapshotLog(path).snapshots()
        assert [s.label for s in first] == [s.label for s in again] == AWKWARD_LABELS
        assert [s.labels for s in again] == [[x] if x else [] for x in AWKWARD_LABELS]

    def test_a_long_tail_refreshes_the_summary(self, path):
        """After TAIL_REFRESH_LINES appended lines, a listing summarises the whole log again."""
        from snapshots._log import TAIL_REFRESH_LINES
        image.open(path).close()
        log = SnapshotLog(path)
        log.take(1, "boot")
        log.snapshots()
        covered = lambda: int(_read(log.summary_path).split()[3])   # magic, version, marshal, LENGTH
        assert covered() == os.path.getsize(log.path)
        lines = b"".join(_line_of(sid) for sid in range(2, TAIL_REFRESH_LINES + 2))
        with open(log.path, "ab") as f:
            f.write(lines)
        assert len(log.snapshots()) == TAIL_REFRESH_LINES + 1
        assert covered() == os.path.getsize(log.path)

    def test_an_unwritable_summary_only_costs_time(self, path):
        """When the summary cannot be written (here its name is a directory), listings stay exact."""
        image.open(path).close()
        log = SnapshotLog(path)
        os.mkdir(log.summary_path)
        _random_log(log, 3, 40)
        assert log.snapshots() == _fold_without_summary(log)
        assert not [n for n in os.listdir(path) if n.endswith(".tmp")]

    def test_listed_snapshots_are_independent_rows(self, path):
        """Each listing makes its own labels lists: changing one changes no later listing."""
        image.open(path).close()
        log = SnapshotLog(path)
        log.take(1, "label", "a")
        log.snapshots()
        log.snapshots()[0].labels.append("mine")
        assert log.snapshots()[0].labels == ["a"]
        assert Snapshot(2, 0.0, "boot", None, "main").labels is not Snapshot(3, 0.0, "boot", None, "main").labels


def _read(file_path: str) -> bytes:
    with open(file_path, "rb") as f:
        return f.read()


def _line_of(sid: int) -> bytes:
    from snapshots._log import _line
    return _line({"op": "snapshot", "id": sid, "time": 1.0, "kind": "auto", "label": None, "branch": "main"})
