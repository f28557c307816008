"""Vacuum (pager/_vacuum.py): reclaiming segments while every retained version
stays openable, stand-ins across repeated vacuums and reopening, what open
readers and views hold, held-back bytes, bad calls, and a SIGKILL loop.

The workload is a pure function of a seeded RNG: version v writes pages_of(v)
with content(v, p), and its commit's metadata is b"v=<v>", so the expected
state of any retained commit is known without being told."""
from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from pager import PageStore, PagerError
from pager import _vacuum
from pager._vfs import Vfs

PAGE = 1024
SEGMENT = 128 * PAGE     # 128 slots: a segment every few dozen commits
NPAGES = 48


def pages_of(v: int) -> list[int]:
    """The pages version v writes (seeded by v: the parent recomputes it)."""
    rng = random.Random(v * 7919)
    return sorted(rng.sample(range(NPAGES), rng.randint(1, 5)))


def content(v: int, page_no: int) -> bytes:
    return struct.pack("<QQ", v, page_no) * (PAGE // 16)


def expected(v: int, page_no: int) -> bytes:
    """Page page_no as of version v."""
    for m in range(v, 0, -1):
        if page_no in pages_of(m):
            return content(m, page_no)
    return bytes(PAGE)


def commit_version(store: PageStore, v: int) -> int:
    for p in pages_of(v):
        store.write(p, content(v, p))
    return store.commit(b"v=%d" % v)


def assert_version(view, v: int) -> None:
    """view holds version v exactly."""
    meta = view.meta if hasattr(view, "meta") else view.head_meta
    assert meta == b"v=%d" % v, (meta, v)
    for p in range(NPAGES):
        assert view.read(p) == expected(v, p), (v, p)


def assert_reopens(path: str, head_version: int, keep, made: dict) -> None:
    """Reopened, the image checks, its head holds head_version, and every kept
    commit's view holds the version made at it."""
    with PageStore.open(path) as again:
        again.check()
        assert_version(again, head_version)
        for c in keep:
            with again.view(c) as view:
                assert_version(view, made[c])


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "v.image")


def history(path: str, versions: int) -> tuple[PageStore, dict[int, int]]:
    """A store with versions 1..versions committed; {commit: version}."""
    store = PageStore.create(path, page_size=PAGE, segment_size=SEGMENT)
    return store, {commit_version(store, v): v for v in range(1, versions + 1)}


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
               if n.startswith("seg-"))


class TestReclaim:
    """Vacuum removes segments that only unretained versions reach."""

    def test_retained_versions_keep_their_content(self, path):
        """After a vacuum every kept commit and the head open with their content; check() passes."""
        store, made = history(path, 400)
        keep = [c for c, v in made.items() if v % 50 == 0]
        before = disk_bytes(path)
        report = store.vacuum(keep)
        assert report.removed and report.reclaimed_bytes > 0
        assert disk_bytes(path) < before
        store.check()
        for c in keep:
            with store.view(c) as view:
                assert_version(view, made[c])
        for p in range(NPAGES):
            assert store.read(p) == expected(400, p)
        store.close()

    def test_unretained_versions_say_they_were_vacuumed(self, path):
        """A version no one kept, whose segment is gone, is a clear KeyError."""
        store, made = history(path, 300)
        store.vacuum([])
        oldest = min(made)
        with pytest.raises(KeyError, match="vacuumed|not on disk"):
            store.view(oldest)
        store.close()

    def test_dry_run_changes_nothing(self, path):
        """--dry-run reports victims and bytes but writes and deletes nothing."""
        store, made = history(path, 300)
        head, segments = store.head, sorted(os.listdir(path))
        report = store.vacuum([], dry_run=True)
        assert report.dry_run and report.removed and report.reclaimed_bytes > 0
        assert store.head == head and sorted(os.listdir(path)) == segments
        store.close()

    def test_commits_go_on_after_a_vacuum(self, path):
        """The writer commits after a vacuum; reopening finds everything."""
        store, made = history(path, 300)
        keep = [c for c, v in made.items() if v % 40 == 0]
        store.vacuum(keep)
        made.update({commit_version(store, v): v for v in range(301, 360)})
        store.close()
        assert_reopens(path, 359, keep, made)


class TestRepeated:
    """Stand-ins of stand-ins: vacuum after vacuum, across reopening."""

    def test_three_rounds_with_a_shrinking_keep_set(self, path):
        """Each round keeps a subset of the last; every kept version survives every round."""
        store, made = history(path, 250)
        keep = [c for c, v in made.items() if v % 10 == 0]
        rng = random.Random(5)
        for round_no in range(3):
            store.vacuum(keep)
            made.update({commit_version(store, v): v
                         for v in range(251 + 60 * round_no, 311 + 60 * round_no)})
            store.close()
            store = PageStore.open(path)
            store.check()
            keep = sorted(rng.sample(keep, len(keep) * 2 // 3)) + [store.head]
            for c in keep:
                with store.view(c) as view:
                    assert_version(view, made[c])
        store.close()

    def test_a_retained_commit_can_be_rewound_to(self, path):
        """rewind() to a kept commit whose segment was vacuumed gives its state."""
        store, made = history(path, 300)
        target = next(c for c, v in made.items() if v == 20)
        store.vacuum([target])
        assert 1 not in store._image.sizes
        store.rewind(target)
        assert_version(store, 20)
        store.write(0, b"x" * PAGE)
        store.commit(b"after")
        store.check()
        store.close()


class TestReaders:
    """Open readers and views are retained without being named."""

    def test_an_open_view_is_kept(self, path):
        """A view open in the vacuuming process keeps its version and reads on."""
        store, made = history(path, 300)
        old = next(c for c, v in made.items() if v == 7)
        view = store.view(old)
        store.vacuum([])
        assert_version(view, 7)
        view.close()
        with store.view(old) as again:   # its stand-in
            assert_version(again, 7)
        store.close()

    def test_a_reader_pins_its_head(self, path):
        """A read-only store's registration keeps the commit it sees after the writer moves on."""
        store, made = history(path, 100)
        reader = PageStore.open(path, readonly=True)
        seen = reader.head
        made.update({commit_version(store, v): v for v in range(101, 300)})
        assert seen in _vacuum.live_pins(path)
        store.vacuum([])
        with store.view(seen) as view:
            assert_version(view, 100)
        assert_version(reader, 100)
        reader.refresh()
        assert_version(reader, 299)
        reader.close()
        assert _vacuum.live_pins(path) == set()
        store.close()

    def test_a_dead_readers_registration_is_dropped(self, path):
        """A registration whose flock is free belongs to a dead reader and is removed."""
        store, _ = history(path, 10)
        folder = os.path.join(path, _vacuum.READERS_DIR)
        os.makedirs(folder, exist_ok=True)
        stale = os.path.join(folder, "999999-dead")
        with open(stale, "wb") as f:
            f.write(_vacuum._pin_text([3]))
        assert _vacuum.live_pins(path) == set()
        assert not os.path.exists(stale)
        store.close()

    def test_a_reader_in_another_process_keeps_its_version(self, path):
        """A reader process that opened before the vacuum still reads its version after it."""
        store, made = history(path, 100)
        code = textwrap.dedent(f"""
            import sys, struct
            from pager import PageStore
            r = PageStore.open({path!r}, readonly=True)
            print(r.head, flush=True)
            sys.stdin.readline()
            data = b"".join(r.read(p) for p in range({NPAGES}))
            r.close()
            print(data.hex(), flush=True)
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
        seen = int(proc.stdout.readline())
        made.update({commit_version(store, v): v for v in range(101, 300)})
        report = store.vacuum([])
        assert seen in report.retained
        out, _ = proc.communicate("go\n", timeout=30)
        assert bytes.fromhex(out.strip()) == b"".join(expected(100, p) for p in range(NPAGES))
        with store.view(seen) as view:
            assert_version(view, 100)
        store.close()


class TestHeldBack:
    """held_back: the bytes only one version reaches."""

    def test_unique_pages_are_counted(self, path):
        """A version whose pages were all overwritten later holds back exactly those pages."""
        store = PageStore.create(path, page_size=PAGE, segment_size=SEGMENT)
        for p in range(4):
            store.write(p, b"a" * PAGE)
        first = store.commit()
        for p in range(4):
            store.write(p, b"b" * PAGE)
        store.commit()
        held = store.held_back([first])
        assert held[first] >= 4 * PAGE
        store.close()


class TestRefusals:
    """Vacuum refuses states it cannot clean."""

    def test_uncommitted_changes(self, path):
        """Dirty pages: a clear error, nothing removed."""
        store, _ = history(path, 50)
        store.write(0, b"x" * PAGE)
        with pytest.raises(PagerError, match="commit or roll back"):
            store.vacuum([])
        store.close()

    def test_a_reader_cannot_vacuum(self, path):
        """A read-only store refuses."""
        store, _ = history(path, 5)
        store.close()
        with PageStore.open(path, readonly=True) as reader:
            with pytest.raises(PagerError, match="read-only"):
                reader.vacuum([])


class TestFormat:
    """Stand-in records read back; old records read as before."""

    def test_group_records(self, path):
        """A group is Nh0, side stand-ins, Nh (check_group), each naming what it stands for."""
        store, made = history(path, 300)
        keep = [c for c, v in made.items() if v % 30 == 0]
        tail = store._tail.seq
        store.vacuum(keep)
        records = [r for r in store._all_records() if r.seq > tail]
        assert records and all(r.stands_for is not None for r in records)
        assert any(r.is_side for r in records)
        store.close()

    def test_plain_records_stand_for_nothing(self, path):
        """A record written by a commit has no stands_for and no side flag."""
        store, _ = history(path, 3)
        rec = store._image.record_at(store._ckpt.segno, store._ckpt.slot)
        assert rec.stands_for is None and not rec.is_side
        store.close()


# -- a vacuum killed with SIGKILL -------------------------------------------------------

CHILD = """
import random, struct, sys
sys.path.insert(0, {tests!r})
from test_vacuum import commit_version
from pager import PageStore
store = PageStore.open(sys.argv[1])
v = int(sys.argv[2])
rng = random.Random(int(sys.argv[3]))
every, most, max_live = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
kept = {{}}
while True:
    for _ in range(rng.randint(5, 40)):
        v += 1
        c = commit_version(store, v)
        print("C", c, v, flush=True)
        if v % every == 0:
            kept[c] = v
    keep = sorted(rng.sample(sorted(kept), min(len(kept), most)))
    kept = {{c: kept[c] for c in keep}}
    print("K", " ".join(map(str, keep)), flush=True)
    report = store.vacuum(keep, max_live=max_live)
    print("D", store.head, len(report.removed), len(report.refused), flush=True)
"""

# (keep every Nth version, at most M of them, max_live): a few retained versions, and
# many (groups near one segment, victims kept because theirs would pass it)
KILL_WORKLOADS = {"few-retained": (7, 12, _vacuum.MAX_LIVE), "many-retained": (3, 90, 0.9)}


def _run_and_kill(path: str, v: int, seed: int, delay: float,
                  workload: tuple[int, int, float]) -> list[list[str]]:
    code = CHILD.format(tests=os.path.dirname(__file__))
    proc = subprocess.Popen([sys.executable, "-c", code, path, str(v), str(seed),
                             *map(str, workload)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[list[str]] = []

    def drain():
        for line in proc.stdout:
            if line.endswith("\n"):
                lines.append(line.split())
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join(timeout=30)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert "Traceback" not in err, err
    return lines


@pytest.mark.parametrize("workload", sorted(KILL_WORKLOADS))
def test_sigkill_loop_keeps_every_retained_version(tmp_path, workload):
    """SIGKILL at random moments of commit+vacuum rounds: the image opens, passes check(),
    and every version retained by the last vacuum begun (and every commit since) opens intact;
    with few retained versions and with many."""
    path = str(tmp_path / "k.image")
    store = PageStore.create(path, page_size=PAGE, segment_size=SEGMENT)
    store.close()
    rng = random.Random(2024)
    versions: dict[int, int] = {}    # commit -> version, as acknowledged
    must: set[int] = set()
    v = 0
    removed = refused = 0   # over the vacuums that finished
    rounds = int(os.environ.get("IMAGO_VACUUM_KILLS", "12"))
    for round_no in range(rounds):
        lines = _run_and_kill(path, v, rng.randrange(1 << 30), rng.uniform(0.4, 2.5),
                              KILL_WORKLOADS[workload])
        for tag, *rest in lines:
            if tag == "C":
                c, ver = int(rest[0]), int(rest[1])
                versions[c] = ver
                v = max(v, ver)
                must.add(c)
            elif tag == "K":
                must = {int(c) for c in rest}
            elif tag == "D":
                removed, refused = removed + int(rest[1]), refused + int(rest[2])
        with PageStore.open(path) as store:
            store.check()
            for c in sorted(must):
                with store.view(c) as view:
                    assert_version(view, versions[c])
            newest = max(versions) if versions else None
            if newest is not None:
                head_v = int(store.head_meta.split(b"=")[1]) if store.head_meta else 0
                assert head_v >= versions[newest]
                v = max(v, head_v)
            if store.head_meta:
                must.add(store.head)
                versions[store.head] = int(store.head_meta.split(b"=")[1])
    assert removed > 0, "some vacuum should have finished and removed segments"
    if workload == "many-retained":
        assert refused > 0, "some victim should have been kept for its group's size"


# -- the command and the snapshot layer ----------------------------------------------------

def _command(*argv: str):
    """Run `imago vacuum ...` through register() as cli.py will; (status, output)."""
    import argparse
    import io

    from browser._cmd_vacuum import register
    parser = argparse.ArgumentParser(prog="imago")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["vacuum", *argv])
    out = io.StringIO()
    return args.run(args, out), out.getvalue()


def _object_image(path: str, transactions: int):
    """An image with object memory on small segments; a label at transaction 40."""
    import image
    import snapshots
    PageStore.create(path, page_size=PAGE, segment_size=64 * PAGE).close()
    img = image.open(path)
    label = None
    for i in range(transactions):
        with img.transaction(f"t{i}"):
            img.root["x"] = i
            img.root[f"y{i % 20}"] = "v" * 400
        if i == 40:
            label = snapshots.log_of(img).take(img.head, "label", "forty").id
    img.close()
    return label


class TestCommand:
    """imago vacuum IMAGE [--keep POLICY] [--dry-run], and the snapshot layer under it."""

    def test_vacuum_keeps_labelled_snapshots(self, path):
        """The command reclaims segments, prints the report, and the label still opens."""
        import image
        label = _object_image(path, 200)
        status, out = _command(path)
        assert status == 0 and "removed" in out and "held back" in out and "forty" in out
        with image.open(path) as img:
            img.check()
            assert img.root["x"] == 199
            with img.at(label) as old:
                assert old.root["x"] == 40

    def test_dry_run_reports_without_change(self, path):
        """--dry-run says what it would remove and leaves the files alone."""
        _object_image(path, 120)
        segments = sorted(n for n in os.listdir(path) if n.startswith("seg-"))
        head = PageStore.open(path, readonly=True).head
        status, out = _command(path, "--dry-run", "--keep", "boots=1")
        assert status == 0 and "would remove" in out
        assert sorted(n for n in os.listdir(path) if n.startswith("seg-")) == segments
        with PageStore.open(path, readonly=True) as store:
            assert store.head == head

    def test_bad_policy_is_one_line(self, path):
        """An unknown policy item is a ValueError of one line (cli.main prints it)."""
        _object_image(path, 5)
        with pytest.raises(ValueError, match="hourly") as info:
            _command(path, "--keep", "hourly=2")
        assert "\n" not in str(info.value)

    def test_an_image_open_for_writing_is_refused(self, path):
        """The writer's LOCK held elsewhere: ImageLocked (a PagerError, one line)."""
        from pager import ImageLocked
        _object_image(path, 5)
        with PageStore.open(path):
            with pytest.raises(ImageLocked):
                _command(path)

    def test_missing_image(self, tmp_path):
        """No such image: FileNotFoundError naming it."""
        with pytest.raises(FileNotFoundError, match="no image"):
            _command(str(tmp_path / "none.image"))

    def test_held_back_by_snapshot(self, path):
        """snapshots held_back(path): every listed snapshot still on disk, bytes >= 0."""
        from snapshots._vacuum import held_back
        label = _object_image(path, 100)
        held = held_back(path)
        assert label in held and all(n >= 0 for n in held.values())


# -- a power cut at every sync of a vacuum (tests/faults.py) --------------------------------

@pytest.mark.parametrize("every, max_live", [(25, _vacuum.MAX_LIVE), (8, 0.9)],
                         ids=["few-retained", "many-retained"])
def test_power_cut_at_every_sync_of_a_vacuum(tmp_path, every, max_live):
    """A power cut inside each sync of a vacuum (writes held since the last sync
    kept, dropped or garbled at random, seeded): the image opens, passes check(),
    and every retained version and the head keep their content.  Also with many
    retained versions, where some victims are kept (their groups would pass one
    segment) and others are cleaned between them."""
    import shutil
    import warnings

    from faults import CrashVfs, SimulatedCrash, abandon
    from pager import RecoveryWarning
    origin = str(tmp_path / "origin.image")
    store, made = history(origin, 300)
    keep = [c for c, v in made.items() if v % every == 0]
    head_v = made[store.head]
    store.close()
    probe = str(tmp_path / "probe.image")
    shutil.copytree(origin, probe)
    counter = CrashVfs(random.Random(0))
    with PageStore.open(probe, _vfs=counter) as s:
        probed = s.vacuum(keep, max_live=max_live)
    assert probed.removed and (probed.refused or max_live == _vacuum.MAX_LIVE)
    total = counter.syncs
    assert total >= 3
    for k in range(1, total + 1):
        path = str(tmp_path / f"cut{k}.image")
        shutil.copytree(origin, path)
        vfs = CrashVfs(random.Random(k), crash_at_sync=k)
        s = PageStore.open(path, _vfs=vfs)
        with pytest.raises(SimulatedCrash):
            s.vacuum(keep, max_live=max_live)
        abandon(s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecoveryWarning)
            again = PageStore.open(path)
        with again:
            again.check()
            assert_version(again, head_v)
            for c in keep:
                with again.view(c) as view:
                    assert_version(view, made[c])
            again.vacuum(keep, max_live=max_live)   # and a vacuum after the cut completes
            again.check()
            for c in keep:
                with again.view(c) as view:
                    assert_version(view, made[c])
        shutil.rmtree(path)


# -- a group that starts a new segment (make_segment_from) ----------------------------------

def _new_segment_history(path: str):
    """A history whose vacuum writes its groups into new segments; (store, made, keep)."""
    store, made = history(path, 300)
    return store, made, [c for c, v in made.items() if v % 25 == 0]


class TestNewSegment:
    """A group too large for the active segment is the body of a new segment, written once."""

    def test_the_group_opens_the_new_segment(self, path):
        """The new segment holds the group from slot 1 (Nh0 first), no temporary file is
        left, and every kept version reads back after reopening."""
        store, made, keep = _new_segment_history(path)
        before, old_head = set(store._image.numbers()), store.head
        store.vacuum(keep)
        made_segments = sorted(set(store._image.numbers()) - before)
        assert made_segments, "the vacuum should have started a segment"
        first = store._image.record_at(made_segments[0], 1)
        assert first is not None and first.stands_for >= old_head and not first.is_side
        assert first.npages > 0
        assert not [n for n in os.listdir(path) if n.endswith(".tmp")]
        store.close()
        with PageStore.open(path) as again:
            again.check()
            for c in keep:
                with again.view(c) as view:
                    assert_version(view, made[c])

    def test_the_tail_past_the_group_reads_as_zeros_and_takes_commits(self, path):
        """The new segment's slots past the group read as zeros (not written zeros:
        reserved, so that the file holds its blocks), and the commits that follow
        land there and survive reopening."""
        store, made, keep = _new_segment_history(path)
        before = set(store._image.numbers())
        store.vacuum(keep)
        segno = max(set(store._image.numbers()) - before)
        end = store._tail.slot
        seg = store._image.segment(segno)
        assert end < store._image.nslots(segno) - 1, "the group should leave a tail"
        assert not any(seg[end * PAGE:])
        st = os.stat(store._image.seg_path(segno))
        assert st.st_blocks * 512 >= st.st_size, "the tail's blocks are reserved, not a hole"
        made[commit_version(store, 301)] = 301
        assert store._tail.segno == segno and store._tail.slot > end   # into the hole
        made.update({commit_version(store, v): v for v in range(302, 321)})
        store.close()
        assert_reopens(path, 320, keep, made)

    def test_a_crash_at_each_write_of_the_new_segment(self, tmp_path):
        """A power cut at each write of the segment being made, fresh or in a reused
        victim's file (the write never issued, held ones kept, dropped or garbled): the
        segment is absent or whole, the image opens, and every kept version and the head
        keep their content."""
        import shutil
        import warnings

        from faults import CrashVfs, SimulatedCrash, abandon
        from pager import RecoveryWarning

        class Recording(CrashVfs):
            def pwrite(self, fd, data, offset):
                self.paths.append(self._path(fd))
                super().pwrite(fd, data, offset)

            def rename(self, src, dst):
                self.paths.append(f"rename {os.path.basename(src)}")
                super().rename(src, dst)

        origin = str(tmp_path / "origin.image")
        store, made, keep = _new_segment_history(origin)
        head_v = made[store.head]
        store.close()
        probe_path = str(tmp_path / "probe.image")
        shutil.copytree(origin, probe_path)
        probe = Recording(random.Random(0))
        probe.paths = []
        with PageStore.open(probe_path, _vfs=probe) as s:
            s.vacuum(keep)
        assert f"rename {_vacuum.SPARE_NAME}" in probe.paths, "a later group reuses a victim"
        probe.paths = [p for p in probe.paths if not p.startswith("rename ")]
        making = [i + 1 for i, p in enumerate(probe.paths) if p.endswith(".tmp")]
        assert len(making) >= 3
        for k in making[:: max(1, len(making) // 24)] + [making[-1] + 1]:
            cut = str(tmp_path / f"w{k}.image")
            shutil.copytree(origin, cut)
            s = PageStore.open(cut, _vfs=CrashVfs(random.Random(k), crash_at_write=k))
            with pytest.raises(SimulatedCrash):
                s.vacuum(keep)
            abandon(s)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RecoveryWarning)
                again = PageStore.open(cut)   # every seg-* file there is whole
            with again:
                again.check()
                assert_version(again, head_v)
                for c in keep:
                    with again.view(c) as view:
                        assert_version(view, made[c])
            shutil.rmtree(cut)

    def test_body_pieces_must_tile_the_body(self, tmp_path):
        """make_segment_from refuses pieces that leave a gap or overlap, and leaves no file."""
        from pager._segments import make_segment_from
        from pager._vfs import Vfs
        folder = str(tmp_path)
        page = bytes(PAGE)
        for pieces in ([(PAGE, page), (3 * PAGE, page)],            # a gap at slot 2
                       [(PAGE, page + page), (2 * PAGE, page)]):     # slot 2 twice
            with pytest.raises(ValueError, match="unwritten|overlap|end at"):
                make_segment_from(Vfs(), folder, 7, SEGMENT, PAGE, b"i" * 16, 1, pieces,
                                  4 * PAGE)
            assert os.listdir(folder) == []

    def test_streamed_pieces_make_the_same_segment(self, tmp_path):
        """A body given in pieces, out of order, makes the bytes a one-piece body makes."""
        from pager._segments import make_segment, make_segment_from
        from pager._vfs import Vfs
        rng = random.Random(3)
        body = rng.randbytes(5 * PAGE)
        one, many = tmp_path / "one", tmp_path / "many"
        one.mkdir()
        many.mkdir()
        make_segment(Vfs(), str(one), 1, SEGMENT, PAGE, b"i" * 16, 1, body)
        pieces = [(PAGE + i * PAGE, body[i * PAGE:(i + 1) * PAGE]) for i in (4, 0, 2, 1, 3)]
        make_segment_from(Vfs(), str(many), 1, SEGMENT, PAGE, b"i" * 16, 1, pieces, 6 * PAGE)
        a, b = (one / "seg-000001").read_bytes(), (many / "seg-000001").read_bytes()
        assert len(a) == len(b) == SEGMENT
        assert a[PAGE:] == b[PAGE:] and a[PAGE:6 * PAGE] == body


class TestStandinIndex:
    """The stand-in index is read from record headers, decoding only stand-ins."""

    def test_header_hop_matches_a_full_scan(self, path):
        """Over rounds of vacuums, in one process (sealed segments' stand-ins kept)
        and across reopening, the hopped index equals a full decode."""
        store, made = history(path, 300)
        keep = [c for c, v in made.items() if v % 30 == 0]
        for round_no in range(3):
            store.vacuum(keep)
            _vacuum.check_standin_index(store)
            assert _vacuum.standin_index(store)
            made.update({commit_version(store, v): v
                         for v in range(301 + 100 * round_no, 401 + 100 * round_no)})
            store.vacuum(keep + [max(made)])   # the same store: its sealed segments cached
            _vacuum.check_standin_index(store)
            for c in keep:
                with store.view(c) as view:
                    assert_version(view, made[c])
            store.close()
            store = PageStore.open(path)
            _vacuum.check_standin_index(store)
            keep = keep[::2] + [max(made)]
        store.close()

    def test_a_damaged_standin_ends_its_segments_index(self, path):
        """A stand-in whose bytes fail their checksum is not indexed, nor anything after it
        in that segment's log (as a full scan stops there)."""
        store, made = history(path, 300)
        store.vacuum([c for c, v in made.items() if v % 30 == 0])
        index = _vacuum.standin_index(store)
        side = max((r for r in index.values() if r.is_side), key=lambda r: r.seq)
        segno, slot = side.segno, side.slot
        store.close()
        seg_file = os.path.join(path, f"seg-{segno:06d}")
        with open(seg_file, "r+b") as f:
            f.seek(slot * PAGE + 200)       # inside the record, past its header
            byte = f.read(1)
            f.seek(slot * PAGE + 200)
            f.write(bytes([byte[0] ^ 0xFF]))
        image_store = PageStore.open(path, readonly=True)
        try:
            image = image_store._image
            records = list(_vacuum._standin_records(image, segno))
            assert all(r.slot < slot for r in records)
        finally:
            image_store.close()


class TestRelease:
    """The blocks of deleted segments are freed by closing a held descriptor in a thread."""

    def test_release_leaks_no_descriptor_and_removes_the_files(self, path):
        """After wait_released, the victims' files are gone and no descriptor stays open."""
        store, made = history(path, 300)
        keep = [c for c, v in made.items() if v % 50 == 0]
        fds_before = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
        report = store.vacuum(keep)
        assert report.removed
        assert _vacuum.wait_released(store) >= 0
        names = set(os.listdir(path))
        assert not {f"seg-{v:06d}" for v in report.removed} & names
        if fds_before is not None:
            assert set(os.listdir("/proc/self/fd")) <= fds_before | {str(store._seg_fd)}
        store.close()

    def test_a_second_vacuum_waits_for_the_first_release(self, path):
        """A pass begins by waiting for the last pass's freeing: none is pending after it."""
        store, made = history(path, 300)
        keep = [c for c, v in made.items() if v % 50 == 0]
        store.vacuum(keep)
        made.update({commit_version(store, v): v for v in range(301, 500)})
        store.vacuum([c for c, v in made.items() if v % 50 == 0])
        release = _vacuum._Release.of(store)
        assert all(not t.is_alive() for t, _ in release.threads[:-1])
        _vacuum.wait_released(store)
        assert release.threads == [] and release.fds == []
        store.check()
        store.close()


class TestGroupLimit:
    """A batch whose group, stand-ins included, would pass one segment is cleaned in parts."""

    def test_an_oversized_batch_is_split(self, path, monkeypatch):
        """With the limit made smaller than two victims' group, a batch is split into
        groups of one victim each; every kept version keeps its content."""
        store, made = history(path, 400)
        keep = [c for c, v in made.items() if v % 20 == 0]
        splits = []
        real = _vacuum._clean

        def counting_clean(store_, units, batch, report, scratch, extra):
            splits.append(list(batch))
            return real(store_, units, batch, report, scratch, extra)

        monkeypatch.setattr(_vacuum, "_clean", counting_clean)
        monkeypatch.setattr(_vacuum, "group_limit", lambda s: 100)
        report = store.vacuum(keep, max_live=0.9)
        assert len(report.removed) >= 2
        assert any(len(b) > 1 for b in splits), "a batch of several victims was tried"
        assert report.groups >= len(report.removed)
        store.check()
        for c in keep:
            with store.view(c) as view:
                assert_version(view, made[c])
        store.close()

    def test_a_group_of_several_victims_stays_within_one_segment(self, path, monkeypatch):
        """Sixteen retained versions (each writes stand-in nodes): no group writes more
        than a segment less its header and zero slot, some clean several victims; every
        kept version reads back."""
        store, made = history(path, 400)
        keep = [c for c, v in made.items() if v % 25 == 0]
        groups = []
        real = _vacuum._write_group

        def measuring(store_, head, needing, batch, report, scratch, extra):
            before = report.written_bytes
            real(store_, head, needing, batch, report, scratch, extra)
            groups.append((len(batch), report.written_bytes - before))

        monkeypatch.setattr(_vacuum, "_write_group", measuring)
        report = store.vacuum(keep, max_live=0.9)
        assert report.groups == len(groups) > 0
        assert any(n > 1 for n, _ in groups), "some group should clean several victims"
        assert all(written <= SEGMENT - 2 * PAGE for n, written in groups), groups
        store.check()
        for c in keep[::10]:
            with store.view(c) as view:
                assert_version(view, made[c])
        store.close()


# -- at most one segment of extra disk (invariant V4) ---------------------------------------

class SegmentBytes(Vfs):
    """The real file system, measuring after every write, rename and unlink the
    bytes of the image's segment files (temporary ones included) beyond what
    the directory held at the first measure: the peak of it, in bytes."""

    def __init__(self, folder: str) -> None:
        self.folder, self.start, self.peak = folder, None, 0

    def measure(self) -> None:
        total = sum(os.stat(os.path.join(self.folder, n)).st_size
                    for n in os.listdir(self.folder)
                    if n.startswith("seg-") or n == _vacuum.SPARE_NAME)
        if self.start is None:
            self.start = total
        self.peak = max(self.peak, total - self.start)

    def pwrite(self, fd, data, offset):
        super().pwrite(fd, data, offset)
        self.measure()

    def rename(self, src, dst):
        super().rename(src, dst)
        self.measure()

    def unlink(self, path):
        super().unlink(path)
        self.measure()


def _measured_vacuum(path: str, keep, **options):
    """Reopen path through SegmentBytes and vacuum: (store, report, measured peak)."""
    vfs = SegmentBytes(path)
    vfs.measure()
    store = PageStore.open(path, _vfs=vfs)
    report = store.vacuum(keep, **options)
    return store, report, vfs.peak


class TestExtraDisk:
    """A vacuum never holds more than one segment of disk beyond the image it began with."""

    @pytest.mark.parametrize("every", [3, 10, 25])
    def test_peak_extra_disk_over_many_retained_versions(self, path, every):
        """400 versions, every 3rd/10th/25th retained, nearly every segment a victim: the
        segment bytes on disk, measured at every write, never pass the image's by more than
        one segment; the pass's own account agrees; every kept version reads back."""
        store, made = history(path, 400)
        store.close()
        keep = [c for c, v in made.items() if v % every == 0]
        store, report, peak = _measured_vacuum(path, keep, max_live=0.9)
        try:
            assert peak <= SEGMENT, (peak // PAGE, "slots")
            assert peak <= report.peak_extra_bytes <= report.extra_limit_bytes == SEGMENT
            assert report.removed or report.refused
            store.check()
            for c in keep:
                with store.view(c) as view:
                    assert_version(view, made[c])
        finally:
            store.close()

    def test_a_victim_whose_group_passes_a_segment_is_kept_and_reported(self, path):
        """133 retained versions: a victim's stand-ins alone pass a segment, so it is kept,
        reported with the slots its group needs, and named in a one-line note."""
        store, made = history(path, 400)
        keep = [c for c, v in made.items() if v % 3 == 0]
        segments = set(store._image.numbers())
        report = store.vacuum(keep, max_live=0.9)
        assert report.refused and not report.removed
        assert set(store._image.numbers()) == segments   # nothing made, nothing deleted
        assert all(slots > _vacuum.group_limit(store) for slots in report.refused.values())
        note = report.refusal_note()
        assert "\n" not in note and "retain fewer versions" in note
        assert str(min(report.refused)) in note and f"{len(keep) + 1} retained" in note
        store.check()
        for c in keep[::7]:
            with store.view(c) as view:
                assert_version(view, made[c])
        store.close()

    def test_victims_a_reader_keeps_count_against_the_limit(self, path, monkeypatch):
        """Victims that cannot be deleted (a reader pinned them meanwhile) keep their disk:
        the pass starts no second segment on their account, and stays within one."""
        store, made = history(path, 400)
        store.close()
        keep = [c for c, v in made.items() if v % 25 == 0]
        monkeypatch.setattr(_vacuum, "_pinned_since", lambda store_, units, victim: True)
        store, report, peak = _measured_vacuum(path, keep, max_live=0.9)
        try:
            assert not report.removed and report.busy and report.refused
            assert peak <= SEGMENT and report.peak_extra_bytes <= SEGMENT
            store.check()
            for c in keep:
                with store.view(c) as view:
                    assert_version(view, made[c])
        finally:
            store.close()

    def test_blocks_still_being_freed_count_until_freed(self, path, monkeypatch):
        """Before a group starts a segment, the blocks of the pass's deleted segments that
        the release thread has not freed yet count as held: made, less freed, stays within
        one segment (the pass waits for the thread when it must)."""
        store, made = history(path, 400)
        keep = [c for c, v in made.items() if v % 25 == 0]
        held = []
        real = _vacuum._ExtraDisk.claim
        monkeypatch.setattr(_vacuum, "_keeps_spare", lambda store_: False)   # every group claims

        def claim(extra, store_, size):
            real(extra, store_, size)
            held.append(extra.extra + _vacuum._Release.of(store_).pending())

        monkeypatch.setattr(_vacuum._ExtraDisk, "claim", claim)
        report = store.vacuum(keep, max_live=0.9)
        assert len(held) >= 2 and len(report.removed) > len(held)
        assert all(n <= SEGMENT for n in held), held
        store.close()


class TestSpare:
    """A deleted segment is kept as the spare and becomes the next group's new segment."""

    def test_the_spare_becomes_the_next_new_segment(self, path):
        """After a vacuum one victim's file is the spare (counted in bytes_after, not
        reclaimed); the next vacuum's new segment is that same file, its tail past the
        group reads as zeros, commits land there, and everything reopens."""
        store, made = history(path, 300)
        keep = [c for c, v in made.items() if v % 50 == 0]
        first = store.vacuum(keep)
        spare = os.path.join(path, _vacuum.SPARE_NAME)
        assert os.path.exists(spare) and first.spare_bytes == SEGMENT
        assert first.bytes_after == disk_bytes(path) + SEGMENT
        inode = os.stat(spare).st_ino
        made.update({commit_version(store, v): v for v in range(301, 600)})
        keep = [c for c, v in made.items() if v % 50 == 0]
        before = set(store._image.numbers())
        store.vacuum(keep)
        new = sorted(set(store._image.numbers()) - before)
        assert inode in {os.stat(store._image.seg_path(n)).st_ino for n in new}
        segno, end = store._tail.segno, store._tail.slot
        assert not any(store._image.segment(segno)[end * PAGE:])
        made.update({commit_version(store, v): v for v in range(600, 620)})
        store.close()
        assert_reopens(path, 619, keep, made)

    def test_a_spare_another_process_maps_is_not_overwritten(self, path):
        """A process that mapped the spare's file (a reader that mapped the victim) keeps
        reading its old bytes: the spare is deleted, not reused."""
        store, made = history(path, 300)
        store.vacuum([c for c, v in made.items() if v % 50 == 0])
        spare = os.path.join(path, _vacuum.SPARE_NAME)
        inode = os.stat(spare).st_ino
        code = textwrap.dedent(f"""
            import hashlib, mmap, os, sys
            fd = os.open({spare!r}, os.O_RDONLY)
            m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            os.close(fd)
            print(hashlib.sha256(m).hexdigest(), flush=True)
            sys.stdin.readline()
            print(hashlib.sha256(m).hexdigest(), flush=True)
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            seen = proc.stdout.readline().strip()
            made.update({commit_version(store, v): v for v in range(301, 600)})
            keep = [c for c, v in made.items() if v % 50 == 0]
            before = set(store._image.numbers())
            report = store.vacuum(keep)
            assert report.removed
            new = set(store._image.numbers()) - before
            assert inode not in {os.stat(store._image.seg_path(n)).st_ino for n in new}
            out, _ = proc.communicate("go\n", timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert out.strip() == seen
        store.check()
        for c in keep:
            with store.view(c) as view:
                assert_version(view, made[c])
        store.close()
