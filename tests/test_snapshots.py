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
from snapshots import SnapshotLog
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
        assert "newest known-good snapshot" in result.stdout

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
        assert result.returncode == 0 and result.stdout.split()[0] == "3"
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

    def test_snapshots_of_a_missing_image(self, tmp_path):
        result = imago("snapshots", str(tmp_path / "none.image"))
        assert result.returncode == 1 and "no image" in result.stderr
