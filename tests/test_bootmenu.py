"""The boot menu (headless, through prompt_toolkit's pipe input) and the
known-good mark (a clean end, or a session that ran long enough)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

import image
import snapshots
from browser import cli
from browser.bootmenu import BootMenu, application, choose
from browser.repl import KnownGood
from snapshots import Snapshot

DOWN, UP, ENTER = "\x1b[B", "\x1b[A", "\r"


def listed(*statuses: str) -> list[Snapshot]:
    """Snapshots 1..n, oldest first, with those statuses."""
    return [Snapshot(i + 1, 1.7e9 + i, "boot", None, "main", status) for i, status in enumerate(statuses)]


def run_menu(snaps: list[Snapshot], keys: str, forms=lambda sid: [f"(form before {sid})"]):
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        return choose(snaps, forms, input=pipe, output=DummyOutput())


class TestMenu:
    """Enter boots the newest good snapshot; arrows pick another; q leaves."""

    def test_enter_boots_the_newest_good_one(self):
        """The cursor starts on the newest good snapshot, not on a newer crashed one."""
        assert run_menu(listed("good", "good", "crashed"), ENTER) == 2

    def test_arrows_pick_another(self):
        assert run_menu(listed("good", "good", "good"), DOWN + DOWN + ENTER) == 1
        assert run_menu(listed("good", "good", "good"), DOWN + UP + UP + ENTER) == 3
        assert run_menu(listed("good", "good"), DOWN * 9 + ENTER) == 1   # stops at the last row

    @pytest.mark.parametrize("key", ["q", "\x03"])
    def test_q_or_ctrl_c_leaves_without_choosing(self, key):
        assert run_menu(listed("good", "good"), key) is None

    def test_the_screen_shows_each_snapshot_and_the_forms_before_the_selected(self):
        """Rows carry id, kind, status, branch and labels; the details come from forms_before."""
        snaps = listed("good", "crashed")
        snaps[0].labels.append("before cleanup")
        asked: list[int] = []
        menu = BootMenu(snaps, lambda sid: asked.append(sid) or [f"(define x {sid})"])
        text = "".join(t for _, t in menu.listing())
        assert "crashed" in text and "before cleanup" in text and text.index("2") < text.index("1 ")
        assert "(define x 1)" in "".join(t for _, t in menu.details())
        menu.details()
        assert asked == [1]   # read once per snapshot
        menu.move(-5)
        menu.check()
        assert menu.selected.id == 2

    def test_no_snapshot_is_an_error(self):
        with pytest.raises(ValueError):
            BootMenu([], lambda sid: [])

    def test_the_application_draws_headless(self):
        """The whole Application runs on a pipe and a dummy output (the tmux run is in the report)."""
        menu = BootMenu(listed("good", "good"), lambda sid: [])
        with create_pipe_input() as pipe:
            pipe.send_text(ENTER)
            assert application(menu, input=pipe, output=DummyOutput()).run() == 2


class TestMenuFromBoot:
    """imago boot on a terminal asks the menu when there is more than one snapshot."""

    def test_leaving_the_menu_writes_nothing(self, tmp_path, monkeypatch, capsys):
        path = str(tmp_path / "m.image")
        with image.open(path) as img:
            img.root["x"] = 1
            head = img.head
        log = snapshots.SnapshotLog(path)
        log.take(head, "label", "one")
        log.take(head - 1, "label", "two")
        with open(log.path, "rb") as f:
            before = f.read()
        monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
        monkeypatch.setattr("browser.bootmenu.choose", lambda snaps, forms: None)
        assert cli.main(["boot", path]) == 0
        assert "nothing booted" in capsys.readouterr().out
        with open(log.path, "rb") as f:
            assert f.read() == before
        with image.open(path, readonly=True) as img:
            assert img.head == head

    def test_the_menu_gets_the_forms_before_each_snapshot(self, tmp_path):
        """_forms_before reads a view of that version's journal."""
        import vm
        path = str(tmp_path / "f.image")
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define a 1)")
            first = img.head
            interp.eval("(define b 2)")
            assert cli._forms_before(img, first) == ["(define a 1)"]
            assert cli._forms_before(img, img.head)[-1] == "(define b 2)"
            assert "cannot be read" in cli._forms_before(img, 99999)[0]

    def test_a_form_journaled_at_each_commit_point_shows_once_with_its_count(self, tmp_path):
        """A loop with (commit) points journals its form at each; the menu shows
        the run as one line with its count, and the forms before it still show."""
        import vm
        path = str(tmp_path / "r.image")
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define n 0)")
            interp.eval("(let loop ((i 0)) (when (< i 7) (set! n (+ n 1)) (commit) (loop (+ i 1))))")
            interp.eval("(define done #t)")
            forms = cli._forms_before(img, img.head)
        assert forms[0] == "(define n 0)" and forms[-1] == "(define done #t)"
        assert len(forms) == 3 and forms[1].startswith("(let loop") and forms[1].endswith("(x7)")

    def test_runs_are_collapsed_from_the_end(self):
        """The last count lines, each run of one form once."""
        assert cli._collapse_runs(["a", "b", "b", "c", "b"], 3) == ["b   (x2)", "c", "b"]
        assert cli._collapse_runs(["a", "a", "a"], 5) == ["a   (x3)"]
        assert cli._collapse_runs([], 5) == []


class TestKnownGood:
    """The boot is marked good once: at a clean end, or after running a while."""

    def test_the_timer_marks_once(self):
        marks: list[int] = []
        good = KnownGood(lambda: marks.append(1), 0.05)
        good.start()
        deadline = time.monotonic() + 10
        while not marks and time.monotonic() < deadline:
            time.sleep(0.01)
        good.finish()
        assert marks == [1] and good.state == "marked"

    def test_a_fatal_error_cancels(self):
        marks: list[int] = []
        good = KnownGood(lambda: marks.append(1), 0.05)
        good.start()
        good.cancel()
        time.sleep(0.2)
        good.finish()
        assert marks == [] and good.state == "cancelled"

    def test_a_failed_mark_is_raised_at_the_end(self):
        def fails() -> None:
            raise OSError(28, "No space left on device")
        good = KnownGood(fails, 60)
        good.start()
        with pytest.raises(OSError):
            good.finish()

    def test_a_session_that_ran_long_enough_is_good_though_killed(self, tmp_path):
        """--good-after: SIGKILL after the mark leaves the boot good; without it, crashed."""
        path = str(tmp_path / "g.image")
        statuses = []
        for minutes in ("0.005", "10"):   # 0.3 s, then the default's 10 minutes
            child = subprocess.Popen([sys.executable, "-m", "browser", "boot", path, "--good-after", minutes],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            child.stdin.write(b"(define x 1)\n(let loop () (loop))\n")
            child.stdin.close()
            time.sleep(3)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            out = subprocess.run([sys.executable, "-m", "browser", "snapshots", path, "--json"],
                                 capture_output=True, text=True, timeout=60).stdout
            boots = [s for s in json.loads(out) if s["kind"] == "boot"]
            statuses.append(boots[-1]["status"])
        assert statuses == ["good", "crashed"]

    def test_bad_good_after(self, tmp_path, capsys):
        assert cli.main(["boot", str(tmp_path / "b.image"), "--good-after", "-1"]) == 1
        assert "--good-after" in capsys.readouterr().err


def test_the_timer_thread_is_a_daemon():
    """A pending timer never keeps a finished process alive."""
    good = KnownGood(lambda: None, 3600)
    good.start()
    assert good._timer.daemon and isinstance(good._timer, threading.Timer)
    good.cancel()
