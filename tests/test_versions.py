"""Versions: branches, history, diff, the changes journal, replay, the Scheme
forms (snapshots) (snapshot!) (at) (history), and the recovery story end to end."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import image
import snapshots
import vm
from browser.cli import main
from snapshots import SnapshotLog, _versions
from snapshots._branches import check as check_branches
from snapshots._versions import check_history


def imago(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "browser", *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def values(result: subprocess.CompletedProcess) -> list[str]:
    """What a command printed, without its ;; notes."""
    return [line for line in result.stdout.splitlines() if not line.startswith(";;")]


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "v.image")


@pytest.fixture
def session(path):
    """An image with an interpreter; yields (img, interp)."""
    img = image.open(path)
    yield img, vm.Interpreter(img)
    img.close()


class TestBranches:
    """Named lines: create, list, switch; names and tips validated."""

    def test_create_and_switch_keep_each_line(self, session):
        """A branch starts at the current version; switching moves the writer and back."""
        img, interp = session
        interp.eval("(define x 1)")
        made = snapshots.create_branch(img, "feature")
        interp.eval("(set! x 2)")
        snapshots.switch(img, "feature")
        interp = vm.Interpreter(img)
        assert interp.eval("x") == 1 and snapshots.current_branch(img) == "feature"
        interp.eval("(define y 3)")
        snapshots.switch(img, "main")
        interp = vm.Interpreter(img)
        assert interp.eval("x") == 2 and "y" not in img.root
        listed = {b.name: b for b in snapshots.branches(img)}
        assert listed["main"].current and listed["feature"].from_commit == made.tip
        assert check_branches(img) == 2

    def test_the_branch_survives_reopening(self, path, session):
        """The current branch is in the heap: it is what the image says after a reopen."""
        img, interp = session
        snapshots.create_branch(img, "b2")
        snapshots.switch(img, "b2")
        img.close()
        with image.open(path, readonly=True) as again:
            assert snapshots.current_branch(again) == "b2"

    @pytest.mark.parametrize("name", ["", "bad name", "-x", "a~1", "x" * 65, "é"])
    def test_bad_names_are_refused(self, session, name):
        img, _ = session
        with pytest.raises(ValueError, match="not a branch name"):
            snapshots.create_branch(img, name)

    def test_duplicate_unknown_and_missing_versions_are_refused(self, session):
        """A name taken, a branch that does not exist, a tip that is no version: one clear error each."""
        img, _ = session
        snapshots.create_branch(img, "one")
        with pytest.raises(ValueError, match="already exists"):
            snapshots.create_branch(img, "one")
        with pytest.raises(ValueError, match="already exists"):
            snapshots.create_branch(img, "main")
        with pytest.raises(ValueError, match="no branch 'nope'"):
            snapshots.switch(img, "nope")
        with pytest.raises(ValueError, match="no version 999"):
            snapshots.create_branch(img, "two", 999)
        with pytest.raises(ValueError, match="no version 0"):   # commit 0 holds no object memory
            snapshots.create_branch(img, "three", 0)
        with pytest.raises(ValueError, match="already on"):
            snapshots.switch(img, "main")

    def test_a_crash_between_the_log_entry_and_the_commit_leaves_the_old_branch(self, path, session):
        """Invariant 4: the tip entry of the current branch, written before a switch that never
        committed, is ignored; the writer is on its old branch at its old tip."""
        img, interp = session
        interp.eval("(define x 1)")
        snapshots.create_branch(img, "side")
        tip = img.head
        SnapshotLog(path).record_branch("main", tip, None)   # the switch's first step, then a crash
        img.close()
        with image.open(path) as again:
            listed = snapshots.branches(again)
            assert (listed[0].name, listed[0].tip) == ("main", tip)
            check_branches(again)

    def test_cli_branch_and_switch(self, path):
        """imago branch lists and makes branches; imago switch moves; errors are one line."""
        assert imago("eval", path, "(define x 1)").returncode == 0
        assert imago("branch", path, "exp").returncode == 0
        assert imago("eval", path, "(set! x 2)").returncode == 0
        assert imago("switch", path, "exp").returncode == 0
        assert values(imago("eval", path, "x")) == ["1"]
        listing = imago("branch", path).stdout
        assert "* exp" in listing and "  main" in listing
        bad = imago("switch", path, "ghost")
        assert bad.returncode == 1 and "no branch 'ghost'" in bad.stderr and "Traceback" not in bad.stderr
        assert imago("branch", path, "x y").returncode == 1
        assert imago("branch", path, "z", "--from", "12345").returncode == 1

    def test_snapshots_carry_the_branch(self, path, session):
        img, _ = session
        snapshots.create_branch(img, "lab")
        snapshots.switch(img, "lab")
        assert img.snapshot("on lab").branch == "lab"


class TestJournal:
    """imago changes and snapshots.changes."""

    def test_changes_lists_each_changing_form(self, path, session):
        img, interp = session
        interp.eval("(define a 1) (+ a 1) (set! a 5)")
        first = img.head
        interp.eval("(define b 2)")
        listed = snapshots.changes(img)
        assert [c.form for c in listed] == ["(define a 1)", "(set! a 5)", "(define b 2)"]
        assert [c.n for c in listed] == [1, 2, 3]
        assert [c.form for c in snapshots.changes(img, since=first)] == ["(define b 2)"]

    def test_cli_json_has_exactly_the_field_names(self, path):
        assert imago("eval", path, "(define a 1) (define b 2)").returncode == 0
        listed = json.loads(imago("changes", path, "--json").stdout)
        assert [set(c) for c in listed] == [{"n", "commit", "time", "form"}] * 2
        assert listed[1]["form"] == "(define b 2)"
        since = imago("changes", path, "--since", str(listed[0]["commit"]), "--json")
        assert [c["n"] for c in json.loads(since.stdout)] == [2]

    def test_unknown_versions_and_branches(self, path):
        assert imago("eval", path, "(define a 1)").returncode == 0
        for args in (("--since", "999"), ("--from", "nope")):
            bad = imago("changes", path, *args)
            assert bad.returncode == 1 and bad.stderr.startswith("imago: error:")


class TestDiffAndHistory:
    """Globals compared by content across versions."""

    def test_diff_sees_added_removed_and_mutated_in_place(self, path, session):
        """A vector-set! and a hash-table-set! change content, not identity: still 'changed'."""
        img, interp = session
        interp.eval("(define v (vector 1 2)) (define h (make-hash-table)) (define gone 1) (define same 1)")
        before = img.head
        interp.eval('(vector-set! v 0 9) (hash-table-set! h "k" 1) (define new 1)')
        img.root.pop("gone")
        d = snapshots.diff(img, before, img.head)
        assert (d.added, d.removed, d.changed) == (["new"], ["gone"], ["h", "v"])
        assert snapshots.diff(img, img.head, img.head) == snapshots.Diff([], [], [])

    def test_fingerprints_are_bounded_and_content_based(self, session):
        """Equal content, equal digest; a change past the budget is not seen, the length always is."""
        img, _ = session
        img.root["a"] = list(range(100))
        img.root["b"] = list(range(100))
        assert snapshots.fingerprint(img.root["a"]) == snapshots.fingerprint(img.root["b"])
        img.root["b"][99] = -1
        assert snapshots.fingerprint(img.root["a"]) != snapshots.fingerprint(img.root["b"])
        assert snapshots.fingerprint(img.root["a"], 10) == snapshots.fingerprint(img.root["b"], 10)
        img.root["b"].append(1)
        assert snapshots.fingerprint(img.root["a"], 10) != snapshots.fingerprint(img.root["b"], 10)
        cyclic = {"self": None}
        img.root["c"] = cyclic
        img.root["c"]["self"] = img.root["c"]
        assert len(snapshots.fingerprint(img.root["c"])) == 16

    def test_history_names_the_forms(self, session):
        img, interp = session
        interp.eval("(define inbox (vector)) (define other 1) (set! inbox (vector 1))")
        interp.eval("(vector-set! inbox 0 2) (set! other 2)")
        img.root.pop("inbox")   # the Python API: no form
        found = snapshots.history(img, "inbox")
        assert [v.how for v in found] == ["defined", "changed", "changed", "removed"]
        assert found[1].forms == ("(set! inbox (vector 1))",)
        assert found[2].forms == ("(vector-set! inbox 0 2)",) and found[3].forms == ()

    def test_cli_diff_and_history(self, path):
        assert imago("eval", path, "(define x 1)").returncode == 0
        first = json.loads(imago("changes", path, "--json").stdout)[0]["commit"]
        assert imago("eval", path, "(set! x 2) (define y 1)").returncode == 0
        head = json.loads(imago("changes", path, "--json").stdout)[-1]["commit"]
        assert imago("diff", path, str(first), str(head)).stdout.split("\n")[:2] == ["+ y", "~ x"]
        lines = imago("history", path, "x").stdout.splitlines()
        assert "defined" in lines[0] and "(set! x 2)" in lines[1]
        bad = imago("diff", path, "1", "4242")
        assert bad.returncode == 1 and "no version 4242" in bad.stderr


class TestSchemeForms:
    """(snapshots) (snapshot! label) (at version expr) (history 'name)."""

    def test_snapshots_and_at(self, session):
        """(at id expr) sees that version's globals; the live image keeps its own."""
        img, interp = session
        interp.eval("(define-record-type point (mk x y) point? (x px) (y py))")
        interp.eval('(define data (list 1 "s" (vector 2) (mk 3 4)))')
        sid = interp.eval('(snapshot! "kept")')
        interp.eval("(set! data #f)")
        assert interp.eval("(cdr (assq 'label (car (reverse (snapshots)))))") == "kept"
        assert interp.eval(f"(at {sid} (length data))") == 4
        assert interp.eval(f"(let ((p (list-ref (at {sid} data) 3))) (and (point? p) (px p)))") == 3
        assert interp.eval("data") is False
        assert interp.eval("(point? (mk 1 2))") is True   # the live record type is unharmed

    @pytest.mark.parametrize("form, message", [
        ("(at {sid} (define z 1))", "read-only: cannot define z"),
        ("(at {sid} (set! data 1))", "read-only: cannot set! data"),
        ("(at {sid} (vector-set! v 0 1))", "read-only"),
        ("(at {sid} f)", "cannot leave its view"),
        ("(at 424242 1)", "no version 424242"),
        ("(at 0 1)", "no version 0"),
        ('(at "x" 1)', "expected a version"),
        ("(snapshot! 7)", "expected a label"),
        ("(history 7)", "expected a global's name"),
    ])
    def test_errors_are_clear(self, session, form, message):
        img, interp = session
        interp.eval("(define data 1) (define v (vector 0)) (define (f) 1)")
        sid = interp.eval('(snapshot! "s")')
        with pytest.raises(vm.SchemeFailure, match=message):
            interp.eval(form.format(sid=sid))
        assert interp.eval("data") == 1

    def test_history_from_scheme(self, session):
        _, interp = session
        interp.eval("(define n 1) (set! n 2)")
        forms = interp.eval("(map (lambda (v) (cdr (assq 'how v))) (history 'n))")
        assert vm._types.to_list(forms) == ["defined", "changed"]


class TestReplay:
    """imago replay: entries after a version, from the line that has them."""

    def test_bad_input(self, path):
        """Malformed --skip, unknown entries, unknown versions, no line with entries: one line each."""
        assert imago("eval", path, "(define a 1)").returncode == 0
        since = json.loads(imago("changes", path, "--json").stdout)[0]["commit"]
        for args, text in ((("--skip", "x"), "not an entry number"), (("--skip", "5-2"), "N <= M"),
                           ((), "no other branch has journal entries")):
            bad = imago("replay", path, "--since", str(since), *args)
            assert bad.returncode in (1, 2) and text in bad.stderr and "Traceback" not in bad.stderr
        assert "no version 777" in imago("replay", path, "--since", "777").stderr

    def test_replay_stops_at_the_first_error(self, path):
        """A form that fails stops the replay; the forms before it stay committed."""
        assert imago("boot", path, stdin="(define a 1)\n").returncode == 0
        good = snapshots.SnapshotLog(path).newest_good().id
        assert imago("boot", path, stdin="(define b 2)\n(define c (+ b 1))\n(define d 4)\n").returncode == 0
        assert imago("boot", path, "--snapshot", str(good)).returncode == 0
        result = imago("replay", path, "--since", str(good), "--skip", "2")   # b is skipped: c fails
        assert result.returncode == 1 and "replay stopped at entry 3" in result.stderr
        assert values(imago("eval", path, "a")) == ["1"]
        assert imago("eval", path, "d").returncode == 1   # after the failing form: not replayed


def test_the_recovery_story(path):
    """Define data, destroy it, quit; boot the snapshot before; replay skipping the damage."""
    setup = "(define inbox (vector \"mail 1\" \"mail 2\"))\n(define notes (list 1 2 3))\n(define count 7)\n"
    assert imago("boot", path, stdin=setup).returncode == 0
    before = snapshots.SnapshotLog(path).newest_good().id
    damage = "(begin (set! inbox #f) (set! notes #f) (set! count #f))\n(define later \"made after the damage\")\n"
    assert imago("boot", path, stdin=damage).returncode == 0
    assert values(imago("eval", path, "(list inbox notes count)")) == ["(#f #f #f)"]
    booted = imago("boot", path, "--snapshot", str(before), stdin="")
    assert booted.returncode == 0 and "kept as branch main~" in booted.stdout
    entries = json.loads(imago("changes", path, "--since", str(before), "--json").stdout)
    assert entries == []   # the current line has none: they are on the line left behind
    branch = booted.stdout.split("kept as branch ")[1].split()[0]
    lost = json.loads(imago("changes", path, "--since", str(before), "--from", branch, "--json").stdout)
    destroyer = next(c["n"] for c in lost if "(set! inbox #f)" in c["form"])
    replayed = imago("replay", path, "--since", str(before), "--skip", str(destroyer))
    assert replayed.returncode == 0, replayed.stderr
    assert f"skipped {destroyer}" in replayed.stdout
    final = imago("eval", path, "(list inbox notes count later)")
    assert values(final) == ['(#("mail 1" "mail 2") (1 2 3) 7 "made after the damage")']
    with image.open(path) as img:
        img.check()
        check_branches(img)


def test_cli_main_registers_the_version_commands(capsys):
    """build_parser loads browser._cmd_versions (and skips the optional modules that are missing)."""
    assert main(["branch", "/nonexistent/x.image"]) == 1
    assert "no image" in capsys.readouterr().err


class TestHistoryFast:
    """history skips the versions in which no commit changed a watched byte, and answers
    exactly what the reference (a view of every sampled version) answers."""

    NAMES = ("a", "b", "v", "h", "lst", "long-global-name")

    def _random_form(self, rng, defined: set) -> str:
        """One form defining, mutating or sharing globals (all kinds the brief names)."""
        name = rng.choice(self.NAMES)
        kind = rng.randrange(9)
        if kind == 0 or name not in defined:
            value = rng.choice(["1", "2", "(vector 1 2 3)", "(list 1 2)", '"text"',
                                "(make-hash-table)", "'sym", "#\\x"])
            defined.add(name)
            return f"(define {name} {value})"
        if kind == 1:
            return f"(set! {name} {rng.choice(['1', '2', '(vector 1 2 3)'])})"
        if kind == 2 and len(defined) > 1:   # a value shared with another global
            other = rng.choice(sorted(defined - {name}))
            return f"(set! {name} {other})"
        if kind == 3:   # in-place mutation of a stored vector, when it is one
            return f"(if (vector? {name}) (vector-set! {name} 0 {rng.randrange(3)}))"
        if kind == 4:   # of a stored table
            return f'(if (hash-table? {name}) (hash-table-set! {name} "k{rng.randrange(3)}" {rng.randrange(3)}))'
        if kind == 5:   # of a stored list
            return f"(if (pair? {name}) (set-car! {name} {rng.randrange(3)}))"
        if kind == 6:   # a redefinition to an equal value
            return f"(define {name} {name})"
        if kind == 7:
            return f"(define unrelated{rng.randrange(4)} {rng.randrange(100)})"
        return f"(set! {name} {name})"

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_matches_the_reference_on_random_forms(self, session, seed):
        """Random defines, set!s, shared values, in-place mutations and deletions: same answer."""
        import random
        img, interp = session
        rng = random.Random(seed)
        defined: set = set()
        for step in range(45):
            interp.eval(self._random_form(rng, defined))
            if step % 15 == 14 and defined:   # the Python API: a deletion, no journal entry
                gone = rng.choice(sorted(defined))
                img.root.pop(gone, None)
                defined.discard(gone)
                interp = vm.Interpreter(img)
        for name in self.NAMES + ("never-defined",):
            found = check_history(img, name)
            if name in defined:
                assert found and found[-1].how != "removed"

    @pytest.mark.parametrize("seed", [4, 5])
    def test_matches_the_reference_with_an_indexed_root_table(self, session, seed):
        """Forty other globals first, so that the root table's store has an index and
        probes run through filled slots; then random forms: the same answer."""
        import random
        img, interp = session
        rng = random.Random(seed)
        interp.eval(" ".join(f"(define other{i} {i})" for i in range(40)))
        defined: set = set()
        for _ in range(40):
            form = self._random_form(rng, defined)
            if rng.randrange(4) == 0:
                form += f" (set! other{rng.randrange(40)} {rng.randrange(9)})"
            interp.eval(form)
        for name in self.NAMES + ("never-defined", "other7"):
            check_history(img, name)

    def _scan_line(self, img, name: str, since: int):
        """The scan over the line from commit since to the head, each sample read."""
        written = img.store.written_pages()
        line = [c for c in written.commits() if c.number >= since]
        scan = _versions._WatchScan(img, name, line, written)
        seen = [scan.fingerprint_at(c.number) for c in line]
        expected = [_versions._fingerprint_at(img, c.number, name) for c in line]
        assert seen == expected
        return scan, line, expected

    def test_the_scan_opens_only_versions_whose_watched_bytes_changed(self, session):
        """Commits that changed no watched byte are not opened; a mutation, growth into
        new pages and a replacement are each seen (one version opened for each)."""
        img, _ = session
        img.root["target"] = list(range(50))
        img.root["padding"] = bytes(3 * img.store.page_size)
        img.root["other"] = list(range(50))
        quiet = img.head
        for i in range(20):
            img.root["other"][i] = -i
        img.root["target"][3] = -3                             # changed in place
        img.root["target"].extend(range(2000))                 # grows into new pages
        img.root["target"] = [1, 2]                            # replaced
        scan, _, expected = self._scan_line(img, "target", quiet)
        assert len(set(expected)) == 4
        assert scan.opened == 4   # the first, then the three changes

    def test_a_commit_writing_a_watched_page_but_not_its_bytes_is_skipped(self, session):
        """Word level: two vectors on one page; commits mutating the other one write the
        target's page and are skipped; the commit changing the target is opened."""
        img, _ = session
        img.root["target"] = [0, 1, 2]
        img.root["other"] = [0, 1, 2]
        page_size = img.store.page_size
        assert img.root["target"]._addr // page_size == img.root["other"]._addr // page_size
        quiet = img.head
        for i in range(10):
            img.root["other"][0] = i + 10
        img.root["target"][0] = 99
        scan, line, expected = self._scan_line(img, "target", quiet)
        target_page = img.root["target"]._addr // page_size
        assert all(target_page in c.pages for c in line[1:])   # each wrote the target's page
        assert scan.opened == 2 and len(set(expected)) == 2
        assert expected[-1] != expected[-2]

    def test_the_watch_holds_the_lookup_and_the_value(self, session):
        """watch_of(): the root table's header, the value's every object byte, as read
        in that version; an absent name watches every key of the table."""
        img, _ = session
        img.root["big"] = [bytes(100) for _ in range(200)]
        with img.at(img.head) as view:
            watch = _versions.watch_of(view, "big")
            watch.check()
            root = int.from_bytes(_versions._root_word(view.store.meta), "little")
            page_size = view.store.page_size
            for page_no in watch.pages:
                assert watch.same(page_no, view.store.read(page_no))
            absent = _versions.watch_of(view, "absent")
            absent.check()
        assert root // page_size in watch.pages and root // page_size in absent.pages
        assert sum(hi - lo for runs in watch.spans.values() for lo, hi in runs) >= 200 * 100
        first = min(watch.pages)
        changed = bytearray(bytes(page_size))
        assert not watch.same(first, bytes(changed))

    def test_page_spans_merge_and_cut_at_page_boundaries(self):
        """Overlapping and touching ranges merge; a range over a boundary is cut in two."""
        spans = _versions._page_spans([(10, 6), (16, 4), (12, 2), (4090, 12), (8200, 8)], 4096)
        assert spans == {0: [(10, 20), (4090, 4096)], 1: [(0, 6)], 2: [(8, 16)]}

    def test_history_across_a_collection_matches_the_reference(self, path):
        """A global dropped by the Python API (no journal entry: no sample there), the
        collector freeing its pages, then a new global of that name: the same answer as
        the reference."""
        import gc
        with image.open(path) as img:
            img.root["big"] = list(range(30000))
            vm.Interpreter(img).eval("(define small 1) (set! small 2)")
            del img.root["big"]
            gc.collect()   # the interpreter and its handles are gone: big is garbage
            assert img.gc()["pages"] > 0
            vm.Interpreter(img).eval("(define big (make-vector 10 3)) (set! small 3) "
                                     "(vector-set! big 1 4)")
            written = img.store.written_pages()
            assert any(written.freed(c.number) for c in written.commits())
            assert [v.how for v in check_history(img, "big")] == ["defined", "changed", "changed"]
            assert [v.how for v in check_history(img, "small")] == ["defined", "changed", "changed"]

    def test_history_after_a_vacuum_matches_the_reference(self, path):
        """A vacuum that copies pages writes records listing copies, not what a commit
        wrote (the written pages refuse them): the scan opens the version after them,
        and answers what the reference does."""
        from pager import PageStore
        PageStore.create(path, segment_size=16 * 4096).close()   # a few commits a segment
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define x (vector 0 0)) (define y 0)")
            for i in range(30):
                interp.eval(f"(vector-set! x 0 {i})" if i % 5 == 0 else f"(set! y {i})")
            keep = [c.number for c in img.store.commits()][-3:] + [20]
        with PageStore.open(path) as store:
            assert store.vacuum(keep).groups == 1
        with image.open(path) as img:
            vm.Interpreter(img).eval("(vector-set! x 0 99) (set! y 100)")
            written = img.store.written_pages()
            assert any(c.number not in written for c in written.commits())
            assert [v.how for v in check_history(img, "x")] == ["defined", "changed"]
            assert len(check_history(img, "y")) == 5

    def test_views_opened_with_shared_scans_read_the_same_pages(self, session):
        """store.view(n, scans) over ascending commits: the same pages as a view of its own."""
        img, interp = session
        for i in range(12):
            interp.eval(f"(define g{i} (vector {i}))")
        store, scans = img.store, {}
        for c in store.commits()[-12:]:
            with store.view(c.number) as alone, store.view(c.number, scans) as shared:
                assert [alone.read(p) for p in c.pages] == [shared.read(p) for p in c.pages]
        assert scans

    def test_history_of_a_rewound_line_matches_the_reference(self, session):
        """A branch: the line's commits are followed by parents, not by number."""
        img, interp = session
        interp.eval("(define x (vector 1)) (vector-set! x 0 2)")
        base = img.head
        interp.eval("(vector-set! x 0 3) (define y 1)")
        snapshots.create_branch(img, "old", base)
        snapshots.switch(img, "old")
        interp = vm.Interpreter(img)
        interp.eval("(vector-set! x 0 4)")
        assert [v.how for v in check_history(img, "x")] == ["defined", "changed", "changed"]


class TestWrittenPages:
    """PageStore.written_pages(): each page as the commit that wrote it wrote it."""

    def test_a_page_as_written_is_the_page_of_that_version(self, session):
        """For each commit, each page it wrote reads as in a view of that commit."""
        img, interp = session
        interp.eval("(define v (make-vector 600 0))")
        for i in range(5):
            interp.eval(f"(vector-set! v {i * 100} {i})")
        written = img.store.written_pages()
        assert [c.number for c in written.commits()] == [c.number for c in img.store.commits()]
        for c in written.commits()[-6:]:
            with img.store.view(c.number) as view:
                for page_no in c.pages:
                    assert written.page(c.number, page_no) == view.read(page_no)

    def test_unwritten_pages_and_unknown_commits_are_refused(self, session):
        """KeyError for a page the commit did not write and for a commit not on disk."""
        img, interp = session
        interp.eval("(define x 1)")
        written = img.store.written_pages()
        head = img.head
        unwritten = max(written.pages(head)) + 1000
        with pytest.raises(KeyError, match="did not write"):
            written.page(head, unwritten)
        with pytest.raises(KeyError, match="not on disk"):
            written.page(head + 100, 0)
        assert head in written and head + 100 not in written

    def test_a_damaged_slot_is_a_clear_error(self, path, session):
        """A page slot garbled on disk fails its page sum: CorruptImage, not other bytes."""
        import os

        from pager import CorruptImage
        img, interp = session
        interp.eval("(define x (vector 1 2 3))")
        damaged, page_size = img.head, img.store.page_size
        interp.eval("(define y 2)")   # recovery checks the newest commit's pages: not this one's
        written = img.store.written_pages()
        rec = written._record(damaged)
        page_no = written.pages(damaged)[0]   # the commit's first data slot
        img.close()
        offset = rec.first_slot * page_size + 100
        with open(os.path.join(path, f"seg-{rec.segno:06d}"), "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
        with image.open(path, readonly=True) as reopened, pytest.raises(CorruptImage):
            reopened.store.written_pages().page(damaged, page_no)


def test_history_of_an_imported_image(tmp_path):
    """What history shows for an imported image: the import's head (the line's origin)
    stands for every form made before the export; its one Version is "defined" (the
    global's value at the export), listing those pre-export forms that name the global
    (all of them if none does); the forms made after the import follow, one version each.
    The intermediate pre-export changes are not on disk: they do not appear."""
    from snapshots._bundle import export, import_bundle
    source, copy = str(tmp_path / "s.image"), str(tmp_path / "c.image")
    with image.open(source) as img:
        vm.Interpreter(img).eval("(define x 1) (define y 0) (set! x 2) (set! y 5)")
    export(source, None, str(tmp_path / "b.imago"))
    import_bundle(str(tmp_path / "b.imago"), copy)
    with image.open(copy) as img:
        origin = img.head
        vm.Interpreter(img).eval("(set! x 3)")
        found = check_history(img, "x")
        assert [(v.commit, v.how) for v in found] == [(origin, "defined"), (img.head, "changed")]
        assert found[0].forms == ("(define x 1)", "(set! x 2)")
        assert found[1].forms == ("(set! x 3)",)
        assert [(v.commit, v.forms) for v in check_history(img, "y")] == \
            [(origin, ("(define y 0)", "(set! y 5)"))]
