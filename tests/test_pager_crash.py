"""Crash safety of the page store: power cuts simulated by tests/faults.CrashVfs.

Each trial runs a seeded random workload (single- and multi-page commits,
frees, rollbacks, metadata large enough to need multi-block records) on a
store with 64 KiB segments, so segment rollover and checkpoints happen every
few commits, and cuts the power at a random point: inside the Nth sync (the
writes were issued, then each piece of each is kept, dropped or garbled: the
whole write, or slot by slot, or sector by sector), at the Nth write (it and
everything after it is never issued), or between calls.

A commit A + 1 is one write, ``[record][pages][nodes][zero slot]`` at the
log's end, then one fdatasync of the segment; then, for a checkpoint, commit()
rewrites the unsynced HINT file (_finish, _write_hint) and returns.  Before
that write, a rollover makes the next segment (zero-fill and header writes,
fsync, rename, fsync of the directory).

The oracle.  Let A be the last commit number that commit() returned.  After
the cut, opening the image must give:

- head == A + 1 when the cut came after the fdatasync of commit A + 1
  returned, though commit() never did (a cut at its HINT write): the commit is
  durable, and a stale or torn hint must not hide it;
- when the cut came inside the fdatasync of commit A + 1: head == A + 1 if
  every byte that the commit's checksums cover (its record's ``length``
  bytes, every page and node slot; not the record slot's padding, not the
  zero slot) reached the disk as issued, else head == A.  Nothing between: a
  commit whose bytes are all there must survive, though unacknowledged, and
  one whose bytes are not must not;
- head == A in every other case: the cut came at any other write (the commit
  write, a segment's zero-fill or header: never issued), inside segment
  creation, during recovery, or between calls;
- every page reads as the model says for the head, commits() ends with the
  head and its metadata, an older commit's view reads as it did, check() passes;
- a RecoveryWarning only when the cut left partial state in a segment file
  (CrashReport.clean is false), and always "dropped commit A + 1" when the
  record of commit A + 1 landed whole but some page or node did not;
- the store then takes new commits that survive a clean close and reopen, with
  no warning, and keeps working across a second crash.

TestCommitOutcome pins single outcomes of one cut commit (record, pages,
nodes, zero slot each kept, dropped or garbled); TestHint the unsynced HINT;
TestCreate a cut while creating an image.
"""
from __future__ import annotations

import os
import random
import re
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
ROLLOVER = range(100, 158)  # 58 pages and a record: more than the 58 slots left after commit 2


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
    durable: bool = False     # the commit's fdatasync had returned (commit() had not)
    staged: dict[int, bytes] | None = None
    meta: bytes = b""

    def allowed_heads(self, acknowledged: int) -> set[int]:
        """The heads the oracle (module docstring) allows after this cut."""
        if self.in_commit and self.durable:
            return {acknowledged + 1}
        commit = self.report.commit()
        if self.in_commit and commit is not None:
            assert commit.seq == acknowledged + 1, (commit.seq, acknowledged)
            return {acknowledged + 1} if commit.landed else {acknowledged}
        return {acknowledged}

    @property
    def must_warn(self) -> str | None:
        """The warning opening must give: a whole record with a torn page or node."""
        commit = self.report.commit()
        if commit is not None and commit.record_landed and not commit.landed:
            return f"dropped commit {commit.seq}\\b"
        return None


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
        staged, mark = model.staged(), vfs.segment_syncs
        try:
            seq = store.commit(meta)
        except SimulatedCrash:
            return Cut(vfs.report, True, vfs.segment_syncs > mark, staged, meta)
        model.acknowledge(seq, staged, meta)
    return Cut(vfs.crash(rng), False)


def arm(rng: random.Random, commits: int) -> dict:
    """Where the shim should cut the power on its own, if at all."""
    mode = rng.choices(("sync", "write", "between"), weights=(6, 3, 1))[0]
    if mode == "sync":
        return {"crash_at_sync": rng.randint(1, commits)}      # about one sync a commit
    if mode == "write":
        return {"crash_at_write": rng.randint(1, commits * 3 // 2 + 1)}  # commits, hints, segments
    return {}


def open_after(path, cut: Cut | None, leftover: bool = False, vfs=None) -> PageStore:
    """Reopen after a cut; a RecoveryWarning is allowed only if the cut (or an
    earlier one, `leftover`) left partial state, and required where the oracle says."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecoveryWarning)
        store = PageStore.open(path, _vfs=vfs)
    recovery = [str(w.message) for w in caught if issubclass(w.category, RecoveryWarning)]
    partial = leftover or (cut is not None and not cut.report.clean)
    assert partial or not recovery, f"a clean cut opened with {recovery}"
    assert len(store.recovery_notes) == len(recovery)
    if cut is not None and cut.must_warn:
        assert any(re.search(cut.must_warn, r) for r in recovery), \
            f"expected {cut.must_warn!r} after {cut.report}, got {recovery}"
    return store


def peek_head(path: str) -> int:
    """The head a reader finds (readers write nothing, so recovery is not disturbed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveryWarning)
        with PageStore.open(path, readonly=True) as reader:
            return reader.head


def settle(model: Model, cut: Cut, head: int) -> None:
    """Check the head the store opens at against the oracle, and move the model there."""
    allowed = cut.allowed_heads(model.head)
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
        store = open_after(path, cut)
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
            store = open_after(path, first, vfs=vfs)   # recovery may be cut short
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
        with open_after(path, second, leftover) as store:
            assert_store_matches(store, model, rng)
            commit_more(store, model, rng, 2)
        with PageStore.open(path) as store:
            assert_store_matches(store, model, rng)


class TestCommitOutcome:
    """One commit of a few pages, cut inside its fdatasync with a chosen fate per part."""

    def cut_commit(self, tmp_path, force, pages=(1, 2, 3), meta=b"in flight", stale_at=None
                   ) -> tuple[str, Model, Cut]:
        """Two small commits, then commit 3 of `pages` cut inside its fdatasync, each
        part of its write (record, each page and node, zero slot) meeting the fate
        `force` gives it.  Enough pages make it roll over into segment 2 (a
        checkpoint, with page-table nodes).  stale_at: a slot of segment 1 left
        holding bytes of an older interrupted commit (one that is not next to the
        log's end, so opening does not clear it), so a commit ending before it
        must write its zero slot."""
        path = str(tmp_path / "one.image")
        PageStore.create(path, page_size=1024, segment_size=SEGMENT).close()
        model = Model(1024, POOL)
        with PageStore.open(path) as store:
            for page_no in (11, 12):    # small commits: commit 3 goes on in segment 1
                store.write(page_no, bytes([page_no]) * 1024)
                model.acknowledge(store.commit(), {**model.committed,
                                                   page_no: bytes([page_no]) * 1024}, b"")
        if stale_at is not None:
            with open(os.path.join(path, "seg-000001"), "r+b") as f:
                f.seek(stale_at * 1024)
                f.write(b"\xaa" * 1024)
        rollover = len(pages) >= len(ROLLOVER)
        # syncs before the commit's own: none, or the new segment's file and directory
        vfs = CrashVfs(random.Random(8), crash_at_sync=3 if rollover else 1, force=force)
        store = PageStore.open(path, _vfs=vfs)
        for page_no in pages:
            store.write(page_no, bytes([page_no % 251 + 1]) * 1024)
            model.pending[page_no] = bytes([page_no % 251 + 1]) * 1024
        staged = model.staged()
        with pytest.raises(SimulatedCrash):
            store.commit(meta)
        abandon(store)
        cut = Cut(vfs.report, True, False, staged, meta)
        commit = cut.report.commit()
        assert cut.report.where == "fdatasync" and commit is not None and commit.seq == 3
        assert commit.offset // 1024 == (1 if rollover else 6)
        assert os.path.basename(commit.file.path) == f"seg-00000{2 if rollover else 1}"
        settle(model, cut, peek_head(path))
        return path, model, cut

    def test_whole_unacknowledged_commit_survives(self, tmp_path):
        """A commit whose writes all landed is there after the cut, though never acknowledged."""
        path, model, cut = self.cut_commit(tmp_path, "keep")
        assert cut.report.intact and model.head == 3
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))
            assert [store.read(p)[0] for p in (1, 2, 3)] == [2, 3, 4]
            assert store.commits()[-1].meta == b"in flight"

    def test_whole_unacknowledged_checkpoint_survives(self, tmp_path):
        """A commit that started a segment survives whole, nodes and all, though unacknowledged."""
        path, model, cut = self.cut_commit(tmp_path, "keep", pages=ROLLOVER)
        kinds = [r.kind for r in cut.report.commit().layout.regions]
        assert model.head == 3 and "node" in kinds
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))
            commit_more(store, model, random.Random(1), 2)
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    def test_dropped_commit_vanishes_silently(self, tmp_path):
        """A commit none of whose writes landed leaves no trace and no warning."""
        path, model, _ = self.cut_commit(tmp_path, "drop")
        assert model.head == 2
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    def test_pages_without_record_vanish_silently(self, tmp_path):
        """Pages that landed without their record are ignored, with no warning."""
        path, model, _ = self.cut_commit(tmp_path, fates(record="drop"))
        assert model.head == 2
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    @pytest.mark.parametrize("page_fate", ["bytes", "torn", "sectors", "drop",
                                           ["keep", "drop", "keep"], ["keep", "keep", "bytes"]],
                             ids=["bytes", "torn", "sectors", "drop", "one-dropped",
                                  "last-garbled"])
    def test_record_without_its_pages_is_dropped_with_a_warning(self, tmp_path, page_fate):
        """A record whose pages did not all land whole is dropped, and opening says so."""
        path, model, cut = self.cut_commit(tmp_path, fates(pages=page_fate))
        assert cut.report.commit().record_landed and model.head == 2
        with pytest.warns(RecoveryWarning, match=f"dropped commit {model.head + 1}\\b"):
            store = PageStore.open(path)
        with store:
            assert_store_matches(store, model, random.Random(0))
            commit_more(store, model, random.Random(1), 1)
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    @pytest.mark.parametrize("node_fate", ["bytes", "drop", "torn"])
    def test_checkpoint_without_its_nodes_is_dropped_with_a_warning(self, tmp_path, node_fate):
        """A checkpoint whose page-table nodes did not land is dropped, and opening says so."""
        path, model, cut = self.cut_commit(tmp_path, fates(nodes=node_fate), pages=ROLLOVER)
        assert cut.report.commit().part_landed("page") and model.head == 2
        with pytest.warns(RecoveryWarning, match="dropped commit 3\\b.*page-table checkpoint"):
            store = PageStore.open(path)
        with store:
            assert_store_matches(store, model, random.Random(0))
            commit_more(store, model, random.Random(1), 2)
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    @pytest.mark.parametrize("record_fate", ["bytes", "torn", "sectors:01", "sectors:10"])
    def test_damaged_record_is_reported_and_saved(self, tmp_path, record_fate):
        """A two-slot record that landed damaged is not trusted; opening warns, saves and
        zeroes what the torn commit left, and the store goes on."""
        path, model, cut = self.cut_commit(tmp_path, fates(record=record_fate),
                                           meta=bytes(range(250)) * 6)
        commit = cut.report.commit()
        assert model.head == 2 and not commit.record_landed
        start, span = commit.offset, 5 * 1024          # the record's two slots, three pages
        assert commit.layout.regions[1].lo == 2 * 1024
        landed = commit.file.after[start - commit.file.lo:][:span] + bytes(1024)
        run = next(i for i in range(6) if landed[i * 1024:(i + 1) * 1024] == bytes(1024))
        header = commit.file.landed(start, start + 128)   # then it tells the commit's extent
        seg = os.path.join(path, "seg-000001")
        damaged = os.path.join(path, f"damaged-seg-000001-{start // 1024}.bin")
        with pytest.warns(RecoveryWarning, match="damaged or incomplete") as caught:
            store = PageStore.open(path)
        with store:
            assert len(caught) == 1 and len(store.recovery_notes) == 1
            with open(damaged, "rb") as f:             # the dirty slots, or the whole commit
                saved = f.read()
            cleared = len(saved) // 1024
            assert saved == landed[:cleared * 1024] and run <= cleared <= 5
            assert cleared == 5 or not header
            with open(seg, "rb") as f:
                assert f.read()[start:start + span] == \
                    bytes(cleared * 1024) + landed[cleared * 1024:span]
            assert_store_matches(store, model, random.Random(0))
            commit_more(store, model, random.Random(1), 1)
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    @pytest.mark.parametrize("zero_fate", ["drop", "bytes"])
    def test_whole_commit_survives_a_damaged_zero_slot(self, tmp_path, zero_fate):
        """A commit whose checksummed bytes landed survives whatever became of its zero
        slot (written because stale bytes sat there); bytes left there are reported once,
        then cleared."""
        # Commit 3 fills slots 6-9 (record and three pages); slot 10 holds stale bytes.
        path, model, cut = self.cut_commit(tmp_path, fates(zero=zero_fate), stale_at=10)
        assert cut.report.commit().layout.regions[-1].kind == "zero" and model.head == 3
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RecoveryWarning)
            store = PageStore.open(path)
        with store:
            # Dropped or garbled, the zero slot left non-zero bytes there: reported once.
            assert len(caught) == 1, [str(w.message) for w in caught]
            assert_store_matches(store, model, random.Random(0))
            commit_more(store, model, random.Random(1), 1)
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    def test_torn_record_raises_no_false_alarm_later(self, tmp_path):
        """A four-slot record torn in its second slot is reported once; later commits over
        the rest of it and its stale pages raise no false alarm."""
        path, model, cut = self.cut_commit(tmp_path, fates(record="prefix:1500"),
                                           meta=bytes(3000))
        assert model.head == 2 and cut.report.commit().layout.regions[1].lo == 4 * 1024
        with pytest.warns(RecoveryWarning, match="damaged or incomplete"):
            PageStore.open(path).close()
        for i in range(6):                       # commits of 2, 3 and 4 slots
            with PageStore.open(path) as store:  # warnings are errors: every open is clean
                assert_store_matches(store, model, random.Random(i))
                store.write(i, b"next")
                meta = bytes(1000 * (i % 3))
                model.acknowledge(store.commit(meta), {**model.committed,
                                                       i: b"next" + bytes(1020)}, meta)
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))

    @pytest.mark.parametrize("force,warns", [(fates(record="drop"), False),
                                             (fates(pages=["drop"] + ["keep"] * 29), True)],
                             ids=["record-dropped", "first-page-dropped"])
    def test_stale_pages_raise_no_false_alarm_later(self, tmp_path, force, warns):
        """Pages of a commit that did not survive, left beyond a zero slot that the
        clearing stops at, are never taken for damage later."""
        path, model, _ = self.cut_commit(tmp_path, force, pages=range(20, 50))
        assert model.head == 2
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RecoveryWarning)
            PageStore.open(path).close()
        assert len(caught) == warns
        for i in range(12):                      # records of 4 slots march over the stale pages
            with PageStore.open(path) as store:  # warnings are errors: every open is clean
                assert_store_matches(store, model, random.Random(i))
                store.write(i, b"next")
                meta = bytes(3000)
                model.acknowledge(store.commit(meta), {**model.committed,
                                                       i: b"next" + bytes(1020)}, meta)


class TestHint:
    """The unsynced HINT file, rewritten after each checkpoint commit's sync."""

    BIG = range(200, 262)       # too many pages for a 64-slot segment: each starts its own

    def setup_image(self, tmp_path) -> tuple[str, Model]:
        path = str(tmp_path / "hint.image")
        PageStore.create(path, page_size=1024, segment_size=SEGMENT).close()
        return path, Model(1024, POOL)

    def stage(self, store: PageStore, model: Model, pages, fill: int) -> dict[int, bytes]:
        for page_no in pages:
            store.write(page_no, bytes([fill]) * 1024)
            model.pending[page_no] = bytes([fill]) * 1024
        return model.staged()

    def test_cut_at_the_hint_write_keeps_the_synced_commit(self, tmp_path):
        """A cut at the hint write after a checkpoint's sync opens at that checkpoint, silently."""
        path, model = self.setup_image(tmp_path)
        vfs = CrashVfs(random.Random(5), crash_at_write=4)   # zero-fill, header, commit, hint
        store = PageStore.open(path, _vfs=vfs)
        staged, mark = self.stage(store, model, self.BIG, 7), vfs.segment_syncs
        with pytest.raises(SimulatedCrash):
            store.commit(b"checkpoint")
        abandon(store)
        cut = Cut(vfs.report, True, vfs.segment_syncs > mark, staged, b"checkpoint")
        assert (cut.report.where, cut.report.file, cut.durable) == ("write", "HINT", True)
        settle(model, cut, peek_head(path))
        assert model.head == 1
        with open_after(path, cut) as store:
            assert_store_matches(store, model, random.Random(0))
            assert store._image.read_hint() is None     # the hint was never written

    @pytest.mark.parametrize("hint_fate", ["keep", "drop", "bytes", "torn", "prefix:20"])
    def test_lost_or_torn_hint_hides_no_commit(self, tmp_path, hint_fate):
        """Whatever became of unsynced hint writes, opening finds the newest whole commit."""
        path, model = self.setup_image(tmp_path)
        with PageStore.open(path) as store:              # a durable hint naming segment 2
            staged = self.stage(store, model, self.BIG, 1)
            model.acknowledge(store.commit(), staged, b"")
        vfs = CrashVfs(random.Random(6), force=fates(other=hint_fate))
        store = PageStore.open(path, _vfs=vfs)
        for fill in (2, 3, 4):                           # segments 3, 4 and 5 (no room in 4)
            staged = self.stage(store, model, self.BIG if fill < 4 else (1, 2), fill)
            model.acknowledge(store.commit(), staged, b"")
        newest = store._ckpt.segno
        staged = self.stage(store, model, (3,), 5)       # in flight: lands whole
        vfs.crash_at_sync = vfs.syncs + 1
        with pytest.raises(SimulatedCrash):
            store.commit(b"last")
        abandon(store)
        cut = Cut(vfs.report, True, False, staged, b"last")
        assert newest == 5 and [k for k, _ in cut.report.pieces].count("other") == 3
        settle(model, cut, peek_head(path))
        assert model.head == 5
        with open_after(path, cut) as store:
            assert_store_matches(store, model, random.Random(0))
            hint = store._image.read_hint()
            named = {"keep": {newest}, "drop": {2}}.get(hint_fate, {None, 2, 3, 4, newest})
            assert (hint and hint[0]) in named, hint
            commit_more(store, model, random.Random(1), 1)
        with PageStore.open(path) as store:
            assert_store_matches(store, model, random.Random(0))


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
