"""The page store's public behaviour, one group per API call."""
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pager
from pager import CommitFailed, ImageLocked, PageStore, PagerError, ReadOnlyStore, StoreFailed

SMALL_SEGMENT = 64 << 10   # 64 KiB: forces segment rollover and checkpoints in small tests


@pytest.fixture
def image_path(tmp_path):
    return str(tmp_path / "t.image")


@pytest.fixture
def store(image_path):
    s = PageStore.create(image_path, page_size=1024, segment_size=SMALL_SEGMENT)
    yield s
    s.close()


def page_of(byte: int, size: int = 1024) -> bytes:
    return bytes([byte % 256]) * size


class TestExports:
    def test_public_names(self):
        """The package exports exactly its documented API."""
        assert set(pager.__all__) == {
            "CommitFailed", "CommitInfo", "CorruptImage", "ImageLocked", "PageStore", "PageView",
            "PagerError", "ReadOnlyStore", "RecoveryWarning", "StoreFailed", "WrittenPages"}
        for name in pager.__all__:
            assert getattr(pager, name) is not None

    def test_error_hierarchy(self):
        """Every pager error is a PagerError, so callers can catch them as one."""
        for cls in (pager.CorruptImage, ImageLocked, StoreFailed, CommitFailed, ReadOnlyStore):
            assert issubclass(cls, PagerError)


class TestCreate:
    def test_new_store_is_empty(self, store):
        """A new store is at commit 0 and every page reads as zeros."""
        assert store.head == 0
        assert store.read(0) == bytes(1024)
        assert store.read(123456) == bytes(1024)
        assert store.page_size == 1024

    def test_refuses_existing_path(self, store, image_path):
        """create() never overwrites an existing image."""
        with pytest.raises(FileExistsError):
            PageStore.create(image_path)

    @pytest.mark.parametrize("page_size", [0, 1000, 512, 1 << 17])
    def test_rejects_bad_page_size(self, tmp_path, page_size):
        """Page sizes must be powers of two from 1 KiB to 64 KiB."""
        with pytest.raises(ValueError, match="page size"):
            PageStore.create(str(tmp_path / "x.image"), page_size=page_size)
        assert not os.path.exists(tmp_path / "x.image")

    @pytest.mark.parametrize("page_size", [1024, 4096, 65536])
    def test_page_sizes_round_trip(self, tmp_path, page_size):
        """Every allowed page size stores and reads back pages."""
        path = str(tmp_path / "x.image")
        with PageStore.create(path, page_size=page_size, segment_size=64 * page_size) as s:
            s.write(5, b"abc", offset=page_size - 3)
            s.commit()
        with PageStore.open(path) as s:
            assert s.read(5)[-3:] == b"abc"
            assert s.page_size == page_size


class TestWriteReadCommit:
    def test_write_visible_before_commit(self, store):
        """A write is visible to the writer at once, before it commits."""
        store.write(7, b"hello", offset=10)
        assert store.read(7)[10:15] == b"hello"
        assert store.dirty_pages == 1

    def test_commit_numbers_increase(self, store):
        """Each commit returns the next number, and head follows it."""
        numbers = []
        for i in range(5):
            store.write(i, b"x")
            numbers.append(store.commit())
        assert numbers == [1, 2, 3, 4, 5]
        assert store.head == 5

    def test_commit_survives_reopen(self, store, image_path):
        """What was committed is there after reopening."""
        store.write(3, page_of(3))
        store.write(900, b"far", offset=5)
        store.commit(b"meta")
        store.close()
        with PageStore.open(image_path) as s:
            assert s.read(3) == page_of(3)
            assert s.read(900)[5:8] == b"far"
            assert s.head == 1

    def test_uncommitted_writes_are_lost_on_close(self, store, image_path):
        """close() drops writes that were never committed."""
        store.write(1, b"kept")
        store.commit()
        store.write(1, b"lost")
        store.close()
        with PageStore.open(image_path) as s:
            assert s.read(1)[:4] == b"kept"

    def test_write_outside_page_rejected(self, store):
        """write() refuses data that would spill past its page."""
        with pytest.raises(ValueError, match="do not fit"):
            store.write(0, b"x" * 10, offset=1020)
        with pytest.raises(ValueError, match="do not fit"):
            store.write(0, b"x", offset=-1)

    def test_page_number_out_of_range(self, store):
        """Negative and huge page numbers are a ValueError, not a crash."""
        for bad in (-1, 1 << 40, 1 << 70):
            with pytest.raises(ValueError):
                store.read(bad)
            with pytest.raises(ValueError):
                store.write(bad, b"x")

    def test_empty_commit_is_recorded(self, store):
        """A commit with no changes still makes a numbered commit with its metadata."""
        n = store.commit(b"label")
        assert store.commits()[-1].number == n
        assert store.commits()[-1].meta == b"label"

    def test_large_commit_spans_segment(self, store, image_path):
        """A commit larger than a segment gets a segment big enough for it."""
        for p in range(200):   # 200 KiB of pages > 64 KiB segment
            store.write(p, page_of(p))
        store.commit()
        store.close()
        with PageStore.open(image_path) as s:
            assert all(s.read(p) == page_of(p) for p in range(200))
            s.check()

    def test_metadata_limit(self, store):
        """Commit metadata is bounded."""
        with pytest.raises(ValueError, match="metadata"):
            store.commit(b"x" * ((1 << 20) + 1))


class TestRollback:
    def test_rollback_drops_writes(self, store):
        """rollback() returns every page to its last committed bytes."""
        store.write(2, b"one")
        store.commit()
        store.write(2, b"two")
        store.write(3, b"new")
        store.rollback()
        assert store.read(2)[:3] == b"one"
        assert store.read(3) == bytes(1024)
        assert store.dirty_pages == 0

    def test_commit_after_rollback(self, store, image_path):
        """A commit after a rollback holds only what was written after it."""
        store.write(2, b"discard")
        store.rollback()
        store.write(4, b"keep")
        n = store.commit()
        assert store.commits()[-1].pages == (4,)
        assert n == 1


class TestFree:
    def test_freed_page_reads_zero(self, store, image_path):
        """A freed page reads as zeros, before and after commit and reopen."""
        store.write(9, b"data")
        store.commit()
        store.free(9)
        assert store.read(9) == bytes(1024)
        store.commit()
        store.close()
        with PageStore.open(image_path) as s:
            assert s.read(9) == bytes(1024)
            assert s.check()["pages"] == 0

    def test_write_after_free(self, store):
        """Writing a freed page starts from zeros."""
        store.write(9, b"data")
        store.commit()
        store.free(9)
        store.write(9, b"x", offset=1)
        assert store.read(9)[:3] == b"\0x\0"


class TestAddresses:
    def test_bytes_cross_page_boundaries(self, store):
        """read_bytes/write_bytes span pages at logical addresses."""
        data = bytes(range(256)) * 10
        store.write_bytes(1000, data)
        assert store.read_bytes(1000, len(data)) == data
        store.commit()
        assert store.read_bytes(1000, len(data)) == data
        assert store.read(1)[:24] == data[24:48]

    def test_words_aligned_and_straddling(self, store):
        """64-bit words read and write little-endian, even across a page edge."""
        store.write_word(8, 0x1122334455667788)
        store.write_word(1020, (1 << 64) - 3)    # straddles pages 0 and 1
        assert store.read_word(8) == 0x1122334455667788
        assert store.read_word(1020) == (1 << 64) - 3
        assert store.read(0)[8:16] == (0x1122334455667788).to_bytes(8, "little")

    def test_word_value_range(self, store):
        """Words are unsigned 64-bit."""
        with pytest.raises(ValueError):
            store.write_word(0, -1)
        with pytest.raises(ValueError):
            store.write_word(0, 1 << 64)

    def test_address_range(self, store):
        """Addresses past the largest image are refused."""
        with pytest.raises(ValueError):
            store.read_bytes((1 << 50), 8)
        with pytest.raises(ValueError):
            store.read_word(-8)


class TestCommitsAndViews:
    def test_commits_lists_history(self, store):
        """commits() lists number, parent, time, meta and pages of every commit."""
        store.write(1, b"a")
        store.write(5, b"b")
        store.commit(b"first")
        store.write(1, b"c")
        store.commit(b"second")
        infos = store.commits()
        assert [c.number for c in infos] == [0, 1, 2]
        assert [c.parent for c in infos] == [None, 0, 1]
        assert infos[1].meta == b"first" and infos[1].pages == (1, 5)
        assert infos[2].pages == (1,)
        assert infos[1].time <= infos[2].time

    def test_view_reads_old_version(self, store):
        """A view shows a commit's pages, whatever came after."""
        for i in range(1, 40):
            store.write(i % 7, bytes([i]) * 4)
            store.commit()
        with store.view(10) as v:
            assert v.commit == 10
            # commit i wrote page i % 7; at commit 10, page 3 was last written by commit 10
            assert v.read(3)[:4] == bytes([10]) * 4
            assert v.read(2)[:4] == bytes([9]) * 4
        assert store.read(3)[:4] == bytes([38]) * 4

    def test_view_across_segments(self, store):
        """Views work for commits in older segments, with checkpoints between."""
        rng = random.Random(5)
        model = {}
        snapshots = {}
        for n in range(1, 300):
            p = rng.randrange(100)
            model[p] = bytes([n % 256]) * 16
            store.write(p, model[p])
            assert store.commit() == n
            if n % 50 == 0:
                snapshots[n] = dict(model)
        assert len(store.check()) and store.check()["segments"] > 2
        for n, snap in snapshots.items():
            with store.view(n) as v:
                for p in range(100):
                    assert v.read(p)[:16] == snap.get(p, bytes(16))

    def test_view_of_missing_commit(self, store):
        """Asking for a commit that does not exist is a KeyError."""
        with pytest.raises(KeyError):
            store.view(5)
        with pytest.raises(KeyError):
            store.view(-1)

    def test_view_outlives_store(self, store):
        """A view stays readable after its store is closed."""
        store.write(0, b"v")
        store.commit()
        view = store.view(1)
        store.close()
        assert view.read(0)[:1] == b"v"
        view.close()


class TestRewind:
    """rewind(n): the writer goes on from an older commit; the later ones stay as a branch."""

    def commit_pages(self, store, *values: bytes) -> list[int]:
        numbers = []
        for v in values:
            store.write(1, v)
            numbers.append(store.commit(v))
        return numbers

    def test_a_branch_from_an_older_commit(self, store, image_path):
        """After rewind the state is the old commit's; the next commit's parent is it, and
        views still reach the abandoned line; reopening lands on the branch."""
        c1, c2, c3 = self.commit_pages(store, b"one", b"two", b"three")
        store.rewind(c1)
        assert store.read(1)[:3] == b"one" and store.base == c1 and store.head == c3
        store.write(2, b"branch")
        c4 = store.commit(b"b")
        assert store.commits()[-1].parent == c1 and store.base == store.head == c4
        with store.view(c3) as old:
            assert old.read(1)[:5] == b"three" and old.read(2) == bytes(1024)
        store.check()
        store.close()
        with PageStore.open(image_path) as again:
            assert again.read(1)[:3] == b"one" and again.read(2)[:6] == b"branch"
            assert again.head == c4
            again.check()

    def test_a_rewind_without_a_commit_is_not_durable(self, store, image_path):
        """Reopening before the branch's first commit lands on the newest commit."""
        c1, c2 = self.commit_pages(store, b"one", b"two")
        store.write(3, b"uncommitted")
        store.rewind(c1)
        assert store.read(3) == bytes(1024)    # uncommitted changes are dropped
        store.close()
        with PageStore.open(image_path) as again:
            assert again.read(1)[:3] == b"two" and again.head == c2

    def test_branches_of_branches_and_many_commits(self, store, image_path):
        """Branching repeatedly, across checkpoint intervals, keeps every line viewable."""
        heads = self.commit_pages(store, *(bytes([i]) * 8 for i in range(1, 40)))
        for back in (5, 17, 30):
            store.rewind(heads[back])
            heads += self.commit_pages(store, *(bytes([100 + back]) * 8 for _ in range(3)))
        written = {c.number: c.meta for c in store.commits()}   # each commit's note is its value
        for n in (heads[5], heads[17], heads[38], heads[41], heads[-1]):
            with store.view(n) as v:
                assert v.read(1)[:8] == written[n]
        store.close()
        with PageStore.open(image_path) as again:
            again.check()
            assert again.read(1)[:8] == bytes([130]) * 8

    def test_a_commit_that_is_not_on_disk_is_refused(self, store):
        with pytest.raises(KeyError):
            store.rewind(store.head + 1)


class TestReaders:
    def test_reader_sees_committed_state(self, store, image_path):
        """A reader beside the writer sees the last commit, not uncommitted writes."""
        store.write(0, b"committed")
        store.commit()
        store.write(0, b"pending!!")
        with PageStore.open(image_path, readonly=True) as r:
            assert r.read(0)[:9] == b"committed"
            assert r.head == 1

    def test_refresh_moves_to_newest(self, store, image_path):
        """refresh() brings a reader to the writer's newest commit, across segments."""
        r = PageStore.open(image_path, readonly=True)
        for i in range(150):
            store.write(i % 13, bytes([i % 256]) * 8)
            store.commit()
        assert r.head == 0
        assert r.refresh() == 150
        assert r.read(149 % 13)[:8] == bytes([149]) * 8
        r.check()
        r.close()

    def test_reader_cannot_write(self, store, image_path):
        """A reader refuses write, free, commit and rollback."""
        with PageStore.open(image_path, readonly=True) as r:
            for call in (lambda: r.write(0, b"x"), lambda: r.commit(), r.rollback,
                         lambda: r.free(0)):
                with pytest.raises(ReadOnlyStore):
                    call()


class TestLocking:
    def test_second_writer_locked(self, store, image_path):
        """A second writer gets ImageLocked; after close, opening works."""
        with pytest.raises(ImageLocked, match="open for writing"):
            PageStore.open(image_path)
        store.close()
        PageStore.open(image_path).close()


class TestClose:
    def test_closed_store_refuses(self, store):
        """Every call on a closed store raises PagerError; close is idempotent."""
        store.close()
        store.close()
        with pytest.raises(PagerError, match="closed"):
            store.read(0)
        with pytest.raises(PagerError, match="closed"):
            store.commit()


class TestCheck:
    def test_check_counts(self, store):
        """check() verifies and counts every live page."""
        for p in range(30):
            store.write(p, page_of(p))
        store.commit()
        result = store.check()
        assert result["pages"] == 30
        assert result["head"] == 1
        assert result["commits"] == 2

    def test_checkpoints_bound_replay(self, image_path):
        """Many random commits force checkpoints; reopen and check() agree with the model."""
        rng = random.Random(11)
        model = {}
        with PageStore.create(image_path, page_size=1024, segment_size=1 << 20) as s:
            for _ in range(1500):
                p = rng.randrange(20000)
                model[p] = rng.randbytes(8)
                s.write(p, model[p])
                s.commit()
            s.check()
        with PageStore.open(image_path) as s:
            result = s.check()
            assert result["pages"] == len(model)
            assert result["nodes"] > 0
            for p, data in model.items():
                assert s.read(p)[:8] == data

    @staticmethod
    def _pages_replayed(s: PageStore) -> int:
        """Pages the records after the state's checkpoint wrote: what open replays."""
        from pager._segments import _Tail
        records, _ = s._image.scan(_Tail(s._ckpt.segno, s._ckpt.slot, -1, 0, 0), upto=s.head)
        return sum(r.npages for r in records[1:])

    def test_checkpoints_bound_replayed_pages(self, image_path):
        """Bulk commits of thousands of pages: open replays at most CHECKPOINT_PAGES pages."""
        bound = pager._store.CHECKPOINT_PAGES
        batch = bound * 3 // 4   # two such commits pass the bound, one does not
        with PageStore.create(image_path, page_size=1024, segment_size=64 << 20) as s:
            for n in range(5):   # checkpoints at 2 and 4; 5 is replayed
                for p in range(n * batch, (n + 1) * batch):
                    s.write(p, page_of(p))
                s.commit()
                assert self._pages_replayed(s) <= bound
                s.check()
        with PageStore.open(image_path) as s:
            assert 0 < self._pages_replayed(s) <= bound
            s.check()
            assert s.read(5 * batch - 1) == page_of(5 * batch - 1)

    def test_an_image_past_the_bound_checkpoints_next(self, image_path, monkeypatch):
        """An image written with no page bound (or a larger one) opens, checks, and its
        next commit is a checkpoint."""
        with monkeypatch.context() as m:
            m.setattr(pager._store, "CHECKPOINT_PAGES", 1 << 40)
            with PageStore.create(image_path, page_size=1024, segment_size=64 << 20) as s:
                for n in range(4):
                    for p in range(n * 3000, (n + 1) * 3000):
                        s.write(p, page_of(p))
                    s.commit()
                assert self._pages_replayed(s) == 12000
        with PageStore.open(image_path) as s:
            s.check()
            s.write(0, page_of(7))
            s.commit()
            assert self._pages_replayed(s) == 0 and s._ckpt.seq == s.head
            s.check()


# ---------------------------------------------------------------------------
# model test: random operation sequences behave like a dict of pages

OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 300), st.integers(0, 1020), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("free"), st.integers(0, 300)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("rollback")),
    st.tuples(st.just("reopen")),
), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_model(tmp_path_factory, ops):
    """Writes, frees, commits, rollbacks and reopens match a dict-of-bytearrays model."""
    path = str(tmp_path_factory.mktemp("m") / "m.image")
    store = PageStore.create(path, page_size=1024, segment_size=16 << 10)
    committed: dict[int, bytes] = {}
    pending: dict[int, bytearray | None] = {}

    def current(p):
        if p in pending:
            return bytes(pending[p]) if pending[p] is not None else bytes(1024)
        return committed.get(p, bytes(1024))

    try:
        for op in ops:
            if op[0] == "write":
                _, p, off, data = op
                data = data[:1024 - off]
                buf = bytearray(current(p))
                buf[off:off + len(data)] = data
                pending[p] = buf
                store.write(p, data, off)
            elif op[0] == "free":
                pending[op[1]] = None
                store.free(op[1])
            elif op[0] == "commit":
                store.commit()
                for p, buf in pending.items():
                    if buf is None:
                        committed.pop(p, None)
                    else:
                        committed[p] = bytes(buf)
                pending.clear()
            elif op[0] == "rollback":
                store.rollback()
                pending.clear()
            else:
                store.close()
                pending.clear()
                store = PageStore.open(path)
            for p in set(committed) | set(pending):
                assert store.read(p) == current(p)
        store.check()
    finally:
        store.close()
