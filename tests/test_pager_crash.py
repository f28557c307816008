"""Crash safety of the page store: power cuts simulated by tests/faults.CrashVfs.

Each trial runs a seeded random workload (single- and multi-page commits,
frees, rollbacks, metadata large enough to need multi-block records) on a
store with 64 KiB segments, so segment rollover and checkpoints happen every
few commits, and cuts the power at a random point: inside the Nth sync (the
writes were issued, then each is kept, dropped or garbled), at the Nth write
(it and everything after it is never issued), or between calls.

The oracle.  Let A be the last commit number that commit() returned.  After
the cut, opening the image must give:

- head == A + 1 when the cut came inside the fdatasync of commit A + 1 and
  every write of that commit reached the disk as issued (CrashReport.intact):
  an unacknowledged commit whose bytes are all there must survive;
- head == A or A + 1 when that sync kept only some of the writes.  The shim
  does not know which writes carry the commit (its pages and record) and which
  are incidental (a zero block), so A + 1 is allowed and then proven whole:
  every page must read as that commit wrote it, and check() must pass;
- head == A in every other case: the cut came at a write (it and all later
  writes never issued), inside segment creation, during recovery, or between
  calls;
- every page reads as the model says for the head, commits() ends with the
  head and its metadata, an older commit's view reads as it did, check() passes;
- a RecoveryWarning only when the cut left partial state (CrashReport.clean is
  false); a clean cut opens silently;
- the store then takes new commits that survive a clean close and reopen, with
  no warning, and keeps working across a second crash.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass

import pytest

from faults import CrashReport, CrashVfs, SimulatedCrash, abandon, fates
from pager import PageStore, RecoveryWarning

SEGMENT = 64 << 10          # 16 to 64 pages: rollover every few commits
META_MAX = 700              # over one 512-byte record block, so records span blocks
PAGE_POOL = 40              # small enough that commits overwrite each other's pages
SPARSE_PAGES = (5_000, 1 << 20, 3 << 30)   # deepen the radix page table
POOL = list(range(PAGE_POOL)) + list(SPARSE_PAGES)


class Model:
    """What every acknowledged commit holds, and the writes not yet committed."""

    def __init__(self, page_size: int, pool: list[int]) -> None:
        self.page_size = page_size
        self.pool = pool
        self.head = 0
        self.committed: dict[int, bytes] = {}
        self.pending: dict[int, bytes] = {}
        self.history: dict[int, tuple[dict[int, bytes], bytes]] = {0: ({}, b"")}

    def read(self, page_no: int) -> bytes:
        if page_no in self.pending:
            return self.pending[page_no]
        return self.committed.get(page_no, bytes(self.page_size))

    def staged(self) -> dict[int, bytes]:
        """The pages as the commit in progress would leave them."""
        return {**self.committed, **self.pending}

    def acknowledge(self, seq: int, pages: dict[int, bytes], meta: bytes) -> None:
        assert seq == self.head + 1, (seq, self.head)
        self.head, self.committed, self.pending = seq, pages, {}
        self.history[seq] = (pages, meta)


@dataclass
class Cut:
    """Where the power went out, and what the commit in flight would have made."""
    report: CrashReport
    in_commit: bool
    staged: dict[int, bytes] | None = None
    meta: bytes = b""


def stage_batch(store: PageStore, model: Model, rng: random.Random) -> None:
    """Write (sometimes free) a random batch of pages, checking reads as it goes."""
    ps = model.page_size
    big = rng.random() < 0.25
    count = rng.randint(2, 30 if ps == 1024 else 12) if big else rng.randint(1, 3)
    for page_no in rng.sample(model.pool, min(count, len(model.pool))):
        if rng.random() < 0.08:
            store.free(page_no)
            model.pending[page_no] = bytes(ps)
            continue
        if rng.random() < 0.3:
            offset, data = 0, rng.randbytes(ps)
        else:
            length = rng.randint(1, 200)
            offset, data = rng.randrange(ps - length + 1), rng.randbytes(length)
        store.write(page_no, data, offset)
        old = model.read(page_no)
        model.pending[page_no] = old[:offset] + data + old[offset + len(data):]
        if rng.random() < 0.2:
            assert store.read(page_no) == model.pending[page_no]


def run_workload(store: PageStore, model: Model, vfs: CrashVfs, rng: random.Random,
                 commits: int) -> Cut:
    """Commit random batches until the shim cuts the power; cut it at the end if
    it has not yet (a cut between calls)."""
    for _ in range(commits):
        stage_batch(store, model, rng)
        if rng.random() < 0.12:
            store.rollback()
            model.pending = {}
            page_no = rng.choice(model.pool)
            assert store.read(page_no) == model.read(page_no)
            continue
        meta = rng.randbytes(rng.choice((0, 8, rng.randint(1, META_MAX))))
        staged = model.staged()
        try:
            seq = store.commit(meta)
        except SimulatedCrash:
            return Cut(vfs.report, True, staged, meta)
        model.acknowledge(seq, staged, meta)
    return Cut(vfs.crash(rng), False)


def arm(rng: random.Random, commits: int) -> dict:
    """Where the shim should cut the power on its own, if at all."""
    mode = rng.choices(("sync", "write", "between"), weights=(6, 3, 1))[0]
    if mode == "sync":
        return {"crash_at_sync": rng.randint(1, commits)}      # about one sync a commit
    if mode == "write":
        return {"crash_at_write": rng.randint(1, 2 * commits)}  # pages, then the record
    return {}


def open_after(path, partial_state: bool, vfs=None) -> PageStore:
    """Reopen after a cut; a RecoveryWarning is allowed only if the cut left partial state."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecoveryWarning)
        store = PageStore.open(path, _vfs=vfs)
    recovery = [str(w.message) for w in caught if issubclass(w.category, RecoveryWarning)]
    assert partial_state or not recovery, f"a clean cut opened with {recovery}"
    assert len(store.recovery_notes) == len(recovery)
    return store


def peek_head(path: str) -> int:
    """The head a reader finds (readers write nothing, so recovery is not disturbed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveryWarning)
        with PageStore.open(path, readonly=True) as reader:
            return reader.head


def settle(model: Model, cut: Cut, head: int) -> None:
    """Check the head the store opens at against the oracle, and move the model there."""
    in_sync = cut.in_commit and cut.report.where == "fdatasync"
    if in_sync and cut.report.intact:
        allowed = {model.head + 1}
    elif in_sync:
        allowed = {model.head, model.head + 1}
    else:
        allowed = {model.head}
    assert head in allowed, f"opened at {head}, not {sorted(allowed)}, after {cut.report}"
    model.pending = {}
    if head == model.head + 1:
        model.acknowledge(head, cut.staged, cut.meta)


def assert_store_matches(store: PageStore, model: Model, rng: random.Random) -> None:
    """The store is at the model's head and every page reads as the model says."""
    assert store.head == model.head
    for page_no in model.pool:
        assert store.read(page_no) == model.committed.get(page_no, bytes(model.page_size)), \
            f"page {page_no} at commit {model.head}"
    info = store.commits()[-1]
    assert (info.number, info.meta) == (model.head, model.history[model.head][1])
    older = rng.choice(sorted(model.history))
    pages, _ = model.history[older]
    with store.view(older) as view:
        for page_no in rng.sample(model.pool, 8):
            assert view.read(page_no) == pages.get(page_no, bytes(model.page_size)), \
                f"page {page_no} in a view of commit {older}"
    assert store.check()["head"] == model.head


def new_store(tmp_path, rng: random.Random) -> tuple[str, Model]:
    page_size = rng.choice((1024, 4096))
    path = str(tmp_path / "crash.image")
    PageStore.create(path, page_size=page_size, segment_size=SEGMENT).close()
    return path, Model(page_size, POOL)


def crash_once(path: str, model: Model, rng: random.Random) -> Cut:
    """Open through a CrashVfs, run a workload until the power cut, abandon the store."""
    commits = rng.randint(3, 30)
    vfs = CrashVfs(random.Random(rng.random()), **arm(rng, commits))
    store = PageStore.open(path, _vfs=vfs)
    try:
        return run_workload(store, model, vfs, rng, commits)
    finally:
        abandon(store)


def commit_more(store: PageStore, model: Model, rng: random.Random, commits: int) -> None:
    for _ in range(commits):
        stage_batch(store, model, rng)
        staged, meta = model.staged(), rng.randbytes(rng.randint(0, 40))
        model.acknowledge(store.commit(meta), staged, meta)


class TestOneCrash:
    @pytest.mark.parametrize("seed", range(200))
    def test_recovers_the_acknowledged_state(self, tmp_path, seed):
        """After a power cut anywhere, the store opens at the oracle's head, every page intact."""
        rng = random.Random(seed)
        path, model = new_store(tmp_path, rng)
        cut = crash_once(path, model, rng)
        settle(model, cut, peek_head(path))
        store = open_after(path, not cut.report.clean)
        try:
            assert_store_matches(store, model, rng)
            commit_more(store, model, rng, rng.randint(1, 3))
        finally:
            store.close()
        with PageStore.open(path) as store:       # warnings are errors here: none allowed
            assert_store_matches(store, model, rng)


class TestTwoCrashes:
    @pytest.mark.parametrize("seed", range(100))
    def test_keeps_working_across_a_second_crash(self, tmp_path, seed):
        """A store recovered through the shim takes commits and survives a second power cut."""
        rng = random.Random(1000 + seed)
        path, model = new_store(tmp_path, rng)
        first = crash_once(path, model, rng)
        settle(model, first, peek_head(path))
        commits = rng.randint(3, 30)
        vfs = CrashVfs(random.Random(rng.random()), **arm(rng, commits + 1))
        try:
            store = open_after(path, not first.report.clean, vfs)   # recovery may be cut short
        except SimulatedCrash:
            second, leftover = Cut(vfs.report, False), not first.report.clean
        else:
            leftover = False        # a completed recovery cleared what the first cut left
            try:
                assert_store_matches(store, model, rng)
                second = run_workload(store, model, vfs, rng, commits)
            finally:
                abandon(store)
        settle(model, second, peek_head(path))
        with open_after(path, leftover or not second.report.clean) as store:
            assert_store_matches(store, model, rng)
            commit_more(store, model, rng, 2)
        with PageStore.open(path) as store:
            assert_store_matches(store, model, rng)


class TestCommitOutcome:
    """One commit of a few pages, cut inside its fdatasync with a chosen fate per write."""

    def cut_commit(self, tmp_path, force, pages=(1, 2, 3), meta=b"in flight"
                   ) -> tuple[str, Model, Cut]:
        """Two small commits, then one of `pages` cut inside its fdatasync, each of
        its held writes meeting the fate `force` gives it."""
        path = str(tmp_path / "one.image")
        PageStore.create(path, page_size=1024, segment_size=SEGMENT).close()
        model = Model(1024, POOL)
        with PageStore.open(path) as store:
            for page_no in (11, 12):    # small commits: the next one stays in segment 1
                store.write(page_no, bytes([page_no]) * 1024)
                model.acknowledge(store.commit(), {**model.committed,
                                                   page_no: bytes([page_no]) * 1024}, b"")
        vfs = CrashVfs(random.Random(8), crash_at_sync=1, force=force)
        store = PageStore.open(path, _vfs=vfs)
        for page_no in pages:
            store.write(page_no, bytes([page_no]) * 1024)
            model.pending[page_no] = bytes([page_no]) * 1024
        staged = model.staged()
        with pytest.raises(SimulatedCrash):
            store.commit(meta)
        abandon(store)
        cut = Cut(vfs.report, True, staged, meta)
        settle(model, cut, peek_head(path))
        return path, model, cut

    def test_whole_unacknowledged_commit_survives(self, tmp_path):
        """A commit whose writes all landed is there after the cut, though never acknowledged."""
        path, model, cut = self.cut_commit(tmp_path, "keep")
        assert cut.report.intact and model.head == 3
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))
            assert [store.read(p)[0] for p in (1, 2, 3)] == [1, 2, 3]
            assert store.commits()[-1].meta == b"in flight"

    def test_dropped_commit_vanishes_silently(self, tmp_path):
        """A commit none of whose writes landed leaves no trace and no warning."""
        path, model, cut = self.cut_commit(tmp_path, "drop")
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    def test_pages_without_record_vanish_silently(self, tmp_path):
        """Pages that landed without their record are ignored, with no warning."""
        path, model, cut = self.cut_commit(tmp_path, fates(record="drop"))
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    @pytest.mark.parametrize("page_fate", ["bytes", "torn", "sectors", "drop"])
    def test_record_without_its_pages_is_dropped_with_a_warning(self, tmp_path, page_fate):
        """A record whose pages did not land whole is dropped, and opening says so."""
        path, model, cut = self.cut_commit(tmp_path, fates(pages=page_fate))
        assert not cut.report.intact
        with pytest.warns(RecoveryWarning, match=f"dropped commit {model.head + 1}\\b"):
            store = PageStore.open(path)
        with store:
            assert_store_matches(store, model, random.Random(0))
            commit_more(store, model, random.Random(1), 1)
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    @pytest.mark.parametrize("record_fate", ["bytes", "torn", "sectors"])
    def test_damaged_record_is_reported(self, tmp_path, record_fate):
        """A record that landed damaged is not trusted; opening warns, then the store goes on."""
        path, model, cut = self.cut_commit(tmp_path, fates(record=record_fate))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RecoveryWarning)
            store = PageStore.open(path)
        with store:
            assert_store_matches(store, model, random.Random(0))
            assert len(caught) <= 1 and len(store.recovery_notes) == len(caught)
            commit_more(store, model, random.Random(1), 1)
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    def test_torn_record_blocks_raise_no_false_alarm_later(self, tmp_path):
        """A two-block record torn before its header block causes no false alarm later."""
        path, model, cut = self.cut_commit(tmp_path, fates(record="prefix:300"), meta=bytes(700))
        assert model.head == 2
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))
            store.write(5, b"after")             # a one-block record, ending where the torn one did
            model.acknowledge(store.commit(), {**model.committed,
                                               5: b"after" + bytes(1024 - 5)}, b"")
        with PageStore.open(path) as store:      # warnings are errors: this must open silently
            assert_store_matches(store, model, random.Random(0))

    def test_stale_pages_raise_no_false_alarm_later(self, tmp_path):
        """Pages of a commit whose record never landed are never taken for damage later."""
        path, model, cut = self.cut_commit(tmp_path, fates(record="drop"), pages=range(20, 50))
        assert model.head == 2
        for i in range(12):                      # records of 7 blocks reach the stale pages
            with PageStore.open(path) as store:  # warnings are errors: every open is clean
                assert_store_matches(store, model, random.Random(i))
                store.write(i, b"next")
                meta = bytes(3000)
                model.acknowledge(store.commit(meta), {**model.committed,
                                                       i: b"next" + bytes(1020)}, meta)


class TestCreate:
    @pytest.mark.parametrize("point", [("crash_at_sync", n) for n in range(1, 6)]
                             + [("crash_at_write", n) for n in range(1, 5)])
    @pytest.mark.parametrize("seed", range(4))
    def test_create_is_all_or_nothing(self, tmp_path, point, seed):
        """A power cut while creating leaves no image, or a whole empty one."""
        path = str(tmp_path / "new.image")
        vfs = CrashVfs(random.Random(seed), **{point[0]: point[1]})
        try:
            PageStore.create(path, page_size=1024, segment_size=SEGMENT, _vfs=vfs).close()
        except SimulatedCrash:
            pass
        else:
            vfs.crash(random.Random(seed))
        try:
            store = PageStore.open(path)
        except FileNotFoundError:
            return
        with store:
            assert store.head == 0 and store.read(0) == bytes(1024)
            assert store.check()["commits"] == 1
            store.write(0, b"x")
            assert store.commit() == 1
