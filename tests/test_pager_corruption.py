"""Damaged, truncated, missing and foreign bytes on disk, one group per kind of damage.

Every case must end in a clear error (CorruptImage, or FileNotFoundError for a
path that does not exist) whose message names the file, segment, page or commit
concerned, or, where opening can fall back to an older commit without losing an
acknowledged one, in a RecoveryWarning.  Never any other exception, never a
crash, and never wrong bytes returned as if they were good.

The layout these tests aim at (pager/_format.py): a segment is a row of
page-sized slots, slot 0 its header; from slot 1 commits follow one another,
each [record: record_slots][data pages: npages][page-table nodes: nnodes], so
a record starts at the previous record's slot_end, and the slot after the
log's end is zero.  The unsynced HINT file names the newest checkpoint record.
"""
from __future__ import annotations

import collections
import contextlib
import glob
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings

import pytest

import pager._store
from pager import CorruptImage, PageStore, RecoveryWarning
from pager import _format as fmt

PAGE = 1024                # fanout 32: a few hundred pages already need a two-level table
SEGMENT = 64 << 10         # 64 slots: several segments, so checkpoints write nodes to disk
TINY_SEGMENT = 16 << 10    # the smallest segment allowed (16 pages)
FANOUT = PAGE // 32        # page-table entries per node (32 bytes each, native/core.c)
FANOUT_BITS = FANOUT.bit_length() - 1
# Byte offsets into a record that a test damages: a header field (seq), the
# body (the first page pair, or the metadata of a commit without pages), and
# the record's own checksum (the last 8 bytes of its length).
RECORD_PARTS = {"header": lambda rec: 20, "body": lambda rec: fmt.HEADER_BYTES + 3,
                "checksum": lambda rec: rec.length - 5}


# -- a model of what each commit wrote -------------------------------------------


def content(commit: int, page_no: int) -> bytes:
    """The bytes commit `commit` writes to page `page_no`: unique per (commit, page)."""
    return struct.pack("<QQ", commit, page_no) * (PAGE // 16)


class History:
    """Which pages each commit wrote, so the expected bytes of any page at any commit are known."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, ...]] = [()]   # commit 0 writes nothing

    def commit(self, store: PageStore, pages, meta: bytes = b"") -> int:
        n = len(self.writes)
        for p in pages:
            store.write(p, content(n, p))
        assert store.commit(meta) == n
        self.writes.append(tuple(pages))
        return n

    def pages(self) -> list[int]:
        return sorted({p for w in self.writes for p in w})

    def copy(self) -> History:
        twin = History()
        twin.writes = list(self.writes)
        return twin

    def writer_of(self, commit: int, page_no: int) -> int:
        """The commit whose bytes page_no holds at `commit` (0: never written)."""
        for m in range(commit, 0, -1):
            if page_no in self.writes[m]:
                return m
        return 0

    def expected(self, commit: int, page_no: int) -> bytes:
        m = self.writer_of(commit, page_no)
        return content(m, page_no) if m else bytes(PAGE)

    def assert_state(self, store, commit: int) -> None:
        for p in self.pages():
            assert store.read(p) == self.expected(commit, p), f"page {p} at commit {commit}"


# -- reading and damaging the files of an image ------------------------------------


def segment_names(path: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.startswith("seg-") and len(n) == 10)


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def salt_of(path: str) -> int:
    raw = read_file(os.path.join(path, segment_names(path)[0]))
    return fmt.decode_segment_header(raw[:fmt.HEADER_BYTES]).salt


def records(path: str) -> list[fmt.Record]:
    """Every commit record of an undamaged image, in log order: each segment's
    log read forward from slot 1, each record starting where the last ended."""
    out = []
    for name in segment_names(path):
        raw = memoryview(read_file(os.path.join(path, name)))
        header = fmt.decode_segment_header(bytes(raw[:fmt.HEADER_BYTES]))
        slot = 1
        while (rec := fmt.decode_record(raw, header.segno, slot, header.salt, PAGE)) is not None:
            out.append(rec)
            slot = rec.slot_end
    return out


def seg_file(path: str, segno: int) -> str:
    return os.path.join(path, fmt.segment_name(segno))


def flip(path: str, offset: int, mask: int = 0x40) -> None:
    """XOR one byte of a file with mask."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([old ^ mask]))


def slot_offset(slot: int) -> int:
    return slot * PAGE


def damage_record(path: str, rec: fmt.Record, part: str) -> None:
    """Flip one byte of a record, in the part named (a key of RECORD_PARTS)."""
    flip(seg_file(path, rec.segno), slot_offset(rec.slot) + RECORD_PARTS[part](rec))


def dirty_slots(path: str, segno: int, start: int) -> list[int]:
    """The slots from `start` on in a segment that hold anything but zeros."""
    raw = read_file(seg_file(path, segno))
    return [s for s in range(start, len(raw) // PAGE) if any(raw[s * PAGE:(s + 1) * PAGE])]


def saved_damage(path: str) -> dict[tuple[str, int], bytes]:
    """The damaged-<segment>-<slot>.bin files of an image, by (segment name, first slot)."""
    out = {}
    for name in os.listdir(path):
        m = re.fullmatch(r"damaged-(seg-\d{6})-(\d+)\.bin", name)
        if m:
            out[m[1], int(m[2])] = read_file(os.path.join(path, name))
        else:
            assert not name.startswith("damaged"), name
    return out


def node_path(path: str, rec: fmt.Record, page_no: int) -> list[tuple[int, int, int]]:
    """(level, segno, slot) of each page-table node from rec's root down to page_no's leaf."""
    out = []
    loc = rec.root_loc
    for level in range(rec.depth - 1, -1, -1):
        segno, slot = loc >> 32, loc & 0xFFFFFFFF
        out.append((level, segno, slot))
        with open(seg_file(path, segno), "rb") as f:
            f.seek(slot_offset(slot) + 32 * ((page_no >> (FANOUT_BITS * level)) % FANOUT))
            loc = struct.unpack("<Q", f.read(8))[0]
        assert loc, f"page {page_no} is not mapped"
    return out


def open_quietly(path: str, **kw) -> PageStore:
    """Open, failing the test if opening warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return PageStore.open(path, **kw)


def names_commit(message: str, commit: int) -> bool:
    """Does an error message name this commit (and not merely one whose number starts so)?"""
    return re.search(rf"\bcommit {commit}\b", message) is not None


def build(path: str, batches, segment_size: int = SEGMENT) -> History:
    """Create an image whose commits 1, 2, ... write the given batches of pages."""
    hist = History()
    with PageStore.create(path, page_size=PAGE, segment_size=segment_size) as store:
        for pages in batches:
            hist.commit(store, pages, meta=b"c%d" % len(hist.writes))
    return hist


def small_batches(n: int, seed: int, npages: int = 24) -> list[list[int]]:
    """n seeded commits of one to four pages each among npages pages."""
    rng = random.Random(seed)
    return [rng.sample(range(npages), rng.randint(1, 4)) for _ in range(n)]


@contextlib.contextmanager
def checkpoint_every(n: int):
    """Let the writers made inside write a checkpoint every n records instead of
    every CHECKPOINT_RECORDS (1,024), so that a small image holds several
    checkpoints per segment, as a 64 MiB segment of one-page commits does."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pager._store, "CHECKPOINT_RECORDS", n)
        yield


@pytest.fixture
def image(tmp_path) -> str:
    return str(tmp_path / "t.image")


# -- the newest commit record ------------------------------------------------------


def damage_newest_record(path: str, part: str) -> fmt.Record:
    rec = records(path)[-1]
    damage_record(path, rec, part)
    return rec


class TestNewestRecordDamaged:
    @pytest.mark.parametrize("part", sorted(RECORD_PARTS))
    @pytest.mark.parametrize("readonly", [False, True])
    def test_opens_at_previous_commit(self, image, part, readonly):
        """A flipped byte in the newest record drops that commit, with a warning and a note."""
        hist = build(image, small_batches(20, seed=1) + [[0, 1, 2, 3]])
        rec = damage_newest_record(image, part)
        assert rec.seq == 21 and rec.slot > 1
        with pytest.warns(RecoveryWarning) as caught:
            store = PageStore.open(image, readonly=readonly)
        with store:
            messages = [str(w.message) for w in caught]
            assert len(messages) == 1
            assert "damaged" in messages[0] and image in messages[0]
            assert f"{fmt.segment_name(rec.segno)} slot {rec.slot}" in messages[0]
            assert names_commit(messages[0], 20)
            assert store.recovery_notes == messages
            assert store.head == 20
            hist.assert_state(store, 20)
            assert store.check()["head"] == 20

    @pytest.mark.parametrize("part", sorted(RECORD_PARTS))
    def test_writer_saves_damaged_bytes(self, image, part):
        """The writer saves the damaged commit to damaged-<seg>-<slot>.bin and zeroes it."""
        hist = build(image, small_batches(12, seed=2))
        rec = damage_newest_record(image, part)
        name = fmt.segment_name(rec.segno)
        damaged = read_file(seg_file(image, rec.segno))[slot_offset(rec.slot):
                                                        slot_offset(rec.slot_end)]
        with pytest.warns(RecoveryWarning):
            PageStore.open(image).close()
        assert saved_damage(image) == {(name, rec.slot): damaged}
        assert dirty_slots(image, rec.segno, rec.slot) == []
        with open_quietly(image) as store:
            assert store.head == rec.seq - 1
            hist.writes.pop()
            hist.commit(store, [5, 6])
            assert store.check()["head"] == rec.seq
        with open_quietly(image, readonly=True) as store:
            hist.assert_state(store, rec.seq)

    def test_torn_record_with_a_hole(self, image):
        """A torn three-slot record with a hole in its middle is saved and cleared whole."""
        # The record's last slot and the commit's pages lie beyond the hole.  They
        # may be an acknowledged commit that lost a block; unless saved and
        # zeroed, later commits write over them (into non-zeros, invariant 1).
        hist = build(image, small_batches(5, seed=12))
        with PageStore.open(image) as store:
            hist.commit(store, [7, 8], meta=bytes(range(256)) * 9)   # a 2.3 KiB label
        torn = records(image)[-1]
        assert (torn.seq, torn.segno, torn.record_slots, torn.npages) == (6, 1, 3, 2)
        with open(seg_file(image, 1), "r+b") as f:
            f.seek(slot_offset(torn.slot + 1))
            f.write(bytes(PAGE))
        before = read_file(seg_file(image, 1))
        beyond = dirty_slots(image, 1, torn.slot)
        assert beyond == [torn.slot, *range(torn.slot + 2, torn.slot_end)]
        with pytest.warns(RecoveryWarning):
            PageStore.open(image).close()
        saved = saved_damage(image)
        for slot in beyond:
            assert any(start <= slot and
                       data[slot_offset(slot - start):slot_offset(slot - start + 1)] ==
                       before[slot_offset(slot):slot_offset(slot + 1)]
                       for (_, start), data in saved.items()), f"slot {slot} was not saved"
        assert dirty_slots(image, 1, torn.slot) == [], "the torn commit was not cleared whole"
        hist.writes.pop()
        for _ in range(2):
            with open_quietly(image) as store:
                hist.commit(store, [1])
        with open_quietly(image, readonly=True) as store:
            hist.assert_state(store, 7)

    def test_newest_record_opens_a_segment(self, image):
        """A damaged checkpoint that opens the newest segment falls back to the previous segment."""
        hist = build_second_segment(image, seed=10, nrecords=1)
        rec = records(image)[-1]
        assert rec.segno == 2 and rec.slot == 1 and rec.is_checkpoint
        damage_record(image, rec, "header")
        with pytest.warns(RecoveryWarning) as caught:
            store = PageStore.open(image)
        with store:
            msg = str(caught[0].message)
            assert "seg-000002 slot 1" in msg and "damaged" in msg
            assert store.head == rec.seq - 1
            hist.assert_state(store, rec.seq - 1)
            store.check()
            hist.writes.pop()
            hist.commit(store, [7])
        assert saved_damage(image).keys() == {("seg-000002", 1)}
        with open_quietly(image) as store:
            assert store.head == rec.seq
            hist.assert_state(store, rec.seq)
            assert store.check()["segments"] == 2
        assert "commit -1" not in msg, msg      # name a commit that exists

    def test_reader_leaves_image_untouched(self, image):
        """A read-only open reports the damage but writes nothing, so the next reports it too."""
        build(image, small_batches(8, seed=3))
        damage_newest_record(image, "header")
        before = {n: read_file(os.path.join(image, n)) for n in segment_names(image)}
        for _ in range(2):
            with pytest.warns(RecoveryWarning):
                PageStore.open(image, readonly=True).close()
        assert {n: read_file(os.path.join(image, n)) for n in segment_names(image)} == before
        assert not [n for n in os.listdir(image) if n.startswith("damaged-")]

    @pytest.mark.parametrize("fill", [b"\x5a", b"IMAGOREC"])
    def test_bytes_past_the_end(self, image, fill):
        """Bytes in the slot past the log's end (which commits zero) warn, then are cleared."""
        hist = build(image, small_batches(6, seed=13))
        last = records(image)[-1]
        assert last.slot_end < SEGMENT // PAGE
        with open(seg_file(image, last.segno), "r+b") as f:
            f.seek(slot_offset(last.slot_end))
            f.write(fill * 8)
        with pytest.warns(RecoveryWarning) as caught:
            store = PageStore.open(image)
        with store:
            assert f"slot {last.slot_end}" in str(caught[0].message)
            assert names_commit(str(caught[0].message), last.seq)
            assert store.head == last.seq
            hist.assert_state(store, last.seq)
        assert saved_damage(image).keys() == {(fmt.segment_name(last.segno), last.slot_end)}
        with open_quietly(image) as store:
            assert store.check()["head"] == last.seq


# -- an older commit record ----------------------------------------------------------


def build_second_segment(path: str, seed: int, nrecords: int = 6) -> History:
    """An image whose newest segment (not the first) holds at least nrecords records."""
    rng = random.Random(seed)
    hist = History()
    with PageStore.create(path, page_size=PAGE, segment_size=SEGMENT) as store:
        while len(segment_names(path)) < 2:
            hist.commit(store, rng.sample(range(40), rng.randint(1, 4)))
        for _ in range(nrecords - 1):
            hist.commit(store, [rng.randrange(40)])
    assert len([r for r in records(path) if r.segno == 2]) >= nrecords
    return hist


class TestOlderRecordDamaged:
    @pytest.mark.parametrize("part", sorted(RECORD_PARTS))
    @pytest.mark.parametrize("which", ["middle", "segment-first"])
    @pytest.mark.parametrize("readonly", [False, True])
    def test_refuses_to_drop_acknowledged_commits(self, image, part, which, readonly):
        """Damage to a record with valid newer records after it in its segment is CorruptImage."""
        build_second_segment(image, seed=4)
        recs = records(image)
        in_seg = [r for r in recs if r.segno == 2]
        victim = in_seg[len(in_seg) // 2] if which == "middle" else in_seg[0]
        damage_record(image, victim, part)
        before = read_file(seg_file(image, 2))
        with pytest.raises(CorruptImage) as err:
            PageStore.open(image, readonly=readonly)
        msg = str(err.value)
        assert image in msg and f"seg-000002 slot {victim.slot}" in msg and "damaged" in msg
        assert f"commit {victim.seq + 1} lies beyond" in msg
        assert read_file(seg_file(image, 2)) == before
        assert "commit -1" not in msg, msg      # name a commit that exists

    def test_damaged_first_record_of_segment_one(self, image):
        """Damage to commit 0 with newer commits after it raises CorruptImage."""
        build(image, small_batches(5, seed=9))
        first = records(image)[0]
        assert (first.seq, first.segno, first.slot) == (0, 1, 1)
        damage_record(image, first, "body")
        with pytest.raises(CorruptImage, match="seg-000001 slot 1") as err:
            PageStore.open(image)
        assert "commit 1 lies beyond" in str(err.value)

    def test_damage_in_an_older_segment_fails_check(self, image):
        """A damaged record in a sealed segment leaves the head readable, but check() reports it."""
        hist = build(image, small_batches(40, seed=5), segment_size=TINY_SEGMENT)
        recs = records(image)
        assert recs[-1].segno >= 3
        victim = next(r for r in recs if r.segno == 2 and not r.is_checkpoint)
        damage_record(image, victim, "header")
        with open_quietly(image) as store:
            assert store.head == recs[-1].seq
            hist.assert_state(store, store.head)
            with pytest.raises(CorruptImage, match=rf"commit {victim.seq - 1}\b"):
                store.check()


# -- data pages ------------------------------------------------------------------------


def page_slot(store: PageStore, page_no: int) -> tuple[int, int, int]:
    """(segno, slot, commit) where the page table of an open store maps a page."""
    loc, _, commit = store._tree.entry(page_no)
    return loc >> 32, loc & 0xFFFFFFFF, commit


class TestDataPageDamaged:
    def test_older_commit_page(self, image):
        """A damaged page of an older commit fails to read, naming page and commit; others read."""
        batches = small_batches(15, seed=6)
        batches[4] = [100, 101, 102]          # commit 5: pages nobody writes again
        hist = build(image, batches)
        rec = next(r for r in records(image) if r.seq == 5)
        assert rec.page_numbers() == (100, 101, 102)
        with open_quietly(image, readonly=True) as store:    # the table agrees with the record
            assert page_slot(store, 101) == (rec.segno, rec.first_slot + 1, 5)
        flip(seg_file(image, rec.segno), slot_offset(rec.first_slot + 1) + 77)   # page 101
        with open_quietly(image) as store:
            assert store.head == 15
            with pytest.raises(CorruptImage) as err:
                store.read(101)
            msg = str(err.value)
            assert "page 101" in msg and "commit 5" in msg and fmt.segment_name(rec.segno) in msg
            with pytest.raises(CorruptImage, match="page 101"):
                store.read_bytes(101 * PAGE + 500, 8)
            for p in hist.pages():
                if p != 101:
                    assert store.read(p) == hist.expected(15, p)
            with store.view(5) as view, pytest.raises(CorruptImage, match="page 101"):
                view.read(101)
            with pytest.raises(CorruptImage, match="commit 5"):
                store.check()

    def test_superseded_page_fails_check(self, image):
        """A damaged page that no current page maps to is still found by check()."""
        batches = small_batches(10, seed=7)
        batches[2] = [200]
        batches[7] = [200]
        hist = build(image, batches)
        rec = next(r for r in records(image) if r.seq == 3)
        flip(seg_file(image, rec.segno), slot_offset(rec.first_slot) + 5)
        with open_quietly(image) as store:
            hist.assert_state(store, 10)
            with pytest.raises(CorruptImage, match="commit 3"):
                store.check()
            with store.view(3) as view, pytest.raises(CorruptImage, match="page 200"):
                view.read(200)

    @pytest.mark.parametrize("index", [0, 2])
    def test_newest_commit_page(self, image, index):
        """A damaged page of the newest commit is a torn commit: the image opens at the previous."""
        hist = build(image, small_batches(10, seed=8) + [[1, 2, 3]])
        rec = records(image)[-1]
        flip(seg_file(image, rec.segno), slot_offset(rec.first_slot + index) + 9)
        with pytest.warns(RecoveryWarning) as caught:
            store = PageStore.open(image)
        with store:
            msg = str(caught[0].message)
            assert "commit 11" in msg and f"page {index + 1}" in msg and image in msg
            assert store.recovery_notes == [msg]
            assert store.head == 10
            hist.assert_state(store, 10)
            store.check()
            hist.writes.pop()
            hist.commit(store, [1, 2, 3, 4])
        assert saved_damage(image).keys() == {(fmt.segment_name(rec.segno), rec.slot)}
        with open_quietly(image) as store:
            assert store.head == 11
            hist.assert_state(store, 11)
            store.check()

    @pytest.mark.parametrize("hint", ["kept", "removed"])
    def test_newest_commit_is_a_mid_segment_checkpoint(self, image, hint):
        """A damaged page of a newest, mid-segment checkpoint drops that commit alone."""
        # Built with the real CHECKPOINT_RECORDS: the newest commit is the 1,025th
        # record after segment 2's first checkpoint, so a checkpoint the HINT names.
        hist = History()
        with PageStore.create(image, page_size=PAGE, segment_size=2 << 20) as store:
            hist.commit(store, range(1500, 3400))          # 1,900 of segment 1's 2,047 slots
            while len(segment_names(image)) < 2:
                hist.commit(store, [])                     # a record and nothing else
            first = store.head                             # segment 2's first checkpoint
            while store.head < first + pager._store.CHECKPOINT_RECORDS:
                hist.commit(store, [])
            hist.commit(store, [9])
        newest = records(image)[-1]
        assert newest.seq == first + 1025 and newest.is_checkpoint and newest.segno == 2
        assert newest.slot > 1 and newest.npages == 1
        assert fmt.decode_hint(read_file(os.path.join(image, "HINT")), salt_of(image))[:2] == \
            (2, newest.slot)
        if hint == "removed":
            os.unlink(os.path.join(image, "HINT"))
        flip(seg_file(image, 2), slot_offset(newest.first_slot) + 9)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                store = PageStore.open(image)
            except CorruptImage as exc:
                pytest.fail(f"opening refused although commits 0..{newest.seq - 1} are whole: "
                            f"{exc}")
        with store:
            notes = [str(w.message) for w in caught]
            assert store.head == newest.seq - 1, f"opened at {store.head}: {notes}"
            assert len(notes) == 1 and f"dropped commit {newest.seq}" in notes[0]
            hist.assert_state(store, newest.seq - 1)
            with store.view(first + 3) as view:
                assert view.read(1500) == hist.expected(first + 3, 1500)
            store.check()
        assert dirty_slots(image, 2, 1) == list(range(1, newest.slot)), \
            "the writer zeroed acknowledged commits"

    @pytest.mark.parametrize("where", ["pages of both", "page and the record body after it"])
    def test_damage_spanning_the_two_newest_commits(self, image, where):
        """Damage over the two newest commits never drops the older, acknowledged one."""
        # Commit 11 was written only after commit 10's sync returned, so commit 10
        # was acknowledged: opening may drop commit 11, but must then refuse
        # (CorruptImage) or open at commit 10 with its damaged page unreadable.
        # The damage: a bad block on each commit's pages, or one bad block over
        # commit 10's last page and the body of commit 11's record, whose header
        # (which chains to commit 10) survives.
        hist = build(image, small_batches(9, seed=11) + [[30, 31], [32, 33]])
        older, newest = records(image)[-2:]
        assert (older.seq, newest.seq) == (10, 11) and older.slot_end == newest.slot
        with open(seg_file(image, newest.segno), "r+b") as f:
            if where == "pages of both":               # pages 31 and 32
                for slot in (older.first_slot + 1, newest.first_slot):
                    f.seek(slot_offset(slot) + PAGE // 4)
                    f.write(b"\xff" * (PAGE // 2))
            else:                                      # page 31 and commit 11's body
                f.seek(slot_offset(older.first_slot + 1) + PAGE // 2)
                f.write(b"\xff" * (PAGE // 2))
                f.seek(slot_offset(newest.slot) + 200)
                f.write(b"\xff" * 64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                store = PageStore.open(image)
            except CorruptImage as exc:
                assert "commit 10" in str(exc) and image in str(exc)
                return
        with store:
            notes = [str(w.message) for w in caught]
            assert store.head == 10, f"acknowledged commit 10 was dropped: {notes}"
            with pytest.raises(CorruptImage, match="page 31"):
                store.read(31)
            assert store.read(30) == hist.expected(10, 30)


    def test_bad_block_over_the_next_header_is_loud(self, image):
        """A bad block over a commit's last page and the next record's header cannot be told
        from a power cut, so the commit may be dropped, but loudly and with its bytes saved."""
        build(image, small_batches(9, seed=11) + [[30, 31], [32, 33]])
        older, newest = records(image)[-2:]
        with open(seg_file(image, newest.segno), "r+b") as f:
            f.seek(slot_offset(newest.slot) - PAGE // 2)
            f.write(b"\xff" * PAGE)
            f.seek(slot_offset(older.slot))
            older_bytes = f.read((older.slot_end - older.slot) * PAGE)
        with pytest.warns(RecoveryWarning, match=r"commit 10\b"):
            store = PageStore.open(image)
        with store:
            assert store.head == 9
        saved = glob.glob(os.path.join(image, f"damaged-seg-{older.segno:06d}-{older.slot}.bin"))
        assert len(saved) == 1
        with open(saved[0], "rb") as f:
            assert f.read(len(older_bytes)) == older_bytes


# -- page-table nodes ------------------------------------------------------------------


def build_with_nodes(path: str) -> tuple[History, fmt.Record]:
    """An image whose page table has on-disk nodes, and its newest checkpoint record.

    Pages 0..319 are written early, in commits of 16, filling several segments;
    the commits after the newest checkpoint write only pages 288..319, so the
    nodes over pages 0..287 are read from disk only when those pages are read."""
    batches = [list(range(i, i + 16)) for i in range(0, 320, 16)]
    batches += [[300 + i % 16] for i in range(3)]
    hist = build(path, batches)
    recs = records(path)
    ckpt = [r for r in recs if r.is_checkpoint][-1]
    assert ckpt.depth == 2 and ckpt.nnodes >= 1
    after = [r for r in recs if r.seq > ckpt.seq]
    assert after and all(p >= 288 for r in after for p in r.page_numbers())
    return hist, ckpt


class TestPageTableNodeDamaged:
    def test_reading_under_a_damaged_leaf(self, image):
        """Reading under a damaged node raises CorruptImage naming the node; other pages read."""
        hist, ckpt = build_with_nodes(image)
        (_, root_seg, root_slot), (level, segno, slot) = node_path(image, ckpt, 5)
        assert level == 0 and (segno, slot) != (root_seg, root_slot)
        flip(seg_file(image, segno), slot_offset(slot) + 40)
        where = f"{fmt.segment_name(segno)} slot {slot}"
        with open_quietly(image) as store:
            for p in (0, 5, 31):
                with pytest.raises(CorruptImage) as err:
                    store.read(p)
                assert "page-table node" in str(err.value) and where in str(err.value)
            for p in range(32, 320, 7):
                assert store.read(p) == hist.expected(store.head, p)
            with pytest.raises(CorruptImage):
                store.check()
        with open_quietly(image, readonly=True) as store, pytest.raises(CorruptImage, match=where):
            store.read_word(3 * PAGE)

    def test_damaged_root_under_later_commits(self, image):
        """A damaged root that later commits must update makes opening fail, naming the node."""
        _, ckpt = build_with_nodes(image)
        level, segno, slot = node_path(image, ckpt, 0)[0]
        assert level == 1
        assert ckpt.first_slot + ckpt.npages <= slot < ckpt.slot_end   # the checkpoint's own
        flip(seg_file(image, segno), slot_offset(slot) + 3)
        with pytest.raises(CorruptImage) as err:
            PageStore.open(image)
        assert f"{fmt.segment_name(segno)} slot {slot}" in str(err.value)

    def test_every_node_damage_is_reported(self, image, tmp_path):
        """A flipped byte in any checkpoint node is reported, naming the node or its checkpoint."""
        hist, _ = build_with_nodes(image)
        nodes = [(r, r.first_slot + r.npages + i) for r in records(image) for i in range(r.nnodes)]
        assert len(nodes) >= 10
        for rec, slot in nodes:
            work = str(tmp_path / f"n{rec.segno}-{slot}.image")
            shutil.copytree(image, work)
            flip(seg_file(work, rec.segno), slot_offset(slot) + 64)
            reports = damage_reports(work, hist)
            names = (f"{fmt.segment_name(rec.segno)} slot {slot}",
                     f"checkpoint of commit {rec.seq}")
            assert any(n in r for r in reports for n in names), (rec.seq, slot, reports)
            shutil.rmtree(work)


def damage_reports(path: str, hist: History) -> list[str]:
    """Open, read every page and check(): every CorruptImage and RecoveryWarning message.

    A read that succeeds must return the bytes expected at the head opened."""
    reports = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            store = PageStore.open(path)
        except CorruptImage as exc:
            return [str(exc)]
    assert all(w.category is RecoveryWarning for w in caught), [str(w.message) for w in caught]
    reports += [str(w.message) for w in caught]
    with store:
        for p in hist.pages():
            try:
                data = store.read(p)
            except CorruptImage as exc:
                reports.append(str(exc))
            else:
                assert data == hist.expected(store.head, p), f"page {p} read wrong bytes"
        try:
            store.check()
        except CorruptImage as exc:
            reports.append(str(exc))
    return reports


# -- segment files ---------------------------------------------------------------------


class TestSegmentFiles:
    @pytest.fixture
    def multi(self, image) -> str:
        """An image of several segments, each holding live pages."""
        build(image, [[i, i + 1] for i in range(0, 60, 2)], segment_size=TINY_SEGMENT)
        assert len(segment_names(image)) >= 4
        return image

    @pytest.mark.parametrize("which", [0, 1, -1])
    @pytest.mark.parametrize("keep", [100, TINY_SEGMENT // 2, TINY_SEGMENT - 1])
    def test_truncated(self, multi, which, keep):
        """A segment cut short raises CorruptImage naming it and saying it is truncated."""
        name = segment_names(multi)[which]
        os.truncate(os.path.join(multi, name), keep)
        for readonly in (False, True):
            with pytest.raises(CorruptImage) as err:
                PageStore.open(multi, readonly=readonly)
            assert name in str(err.value) and "truncated" in str(err.value)
            assert multi in str(err.value)

    def test_missing_middle_segment(self, multi):
        """A missing segment that holds live pages raises CorruptImage naming it."""
        name = segment_names(multi)[1]
        os.unlink(os.path.join(multi, name))
        with pytest.raises(CorruptImage) as err:
            PageStore.open(multi)
        assert name in str(err.value) and "missing" in str(err.value) and multi in str(err.value)

    @pytest.mark.parametrize("which", [0, -1])
    def test_garbage_appended(self, multi, which):
        """Bytes appended past a segment's end raise CorruptImage naming the segment."""
        name = segment_names(multi)[which]
        with open(os.path.join(multi, name), "ab") as f:
            f.write(b"\x7fgarbage" * 100)
        with pytest.raises(CorruptImage) as err:
            PageStore.open(multi, readonly=True)
        assert name in str(err.value) and "garbage" in str(err.value)

    @pytest.mark.parametrize("offset", [0, 7, 8, 12, 16, 24, 32, 47, 48, 56, 64, 119, 120, 127])
    @pytest.mark.parametrize("which", [0, 1, -1])
    def test_flipped_header_byte(self, multi, offset, which):
        """A flipped byte in a segment header raises CorruptImage naming the segment."""
        name = segment_names(multi)[which]
        flip(os.path.join(multi, name), offset, mask=0x01)
        with pytest.raises(CorruptImage) as err:
            PageStore.open(multi)
        assert name in str(err.value) and multi in str(err.value)

    @pytest.mark.parametrize("page_size, seg_size", [
        (3000, TINY_SEGMENT), (512, TINY_SEGMENT), (1 << 17, 1 << 17),
        (PAGE, 1000), (PAGE, 512), (PAGE, 2 * PAGE + 1)])
    def test_valid_checksum_impossible_geometry(self, tmp_path, page_size, seg_size):
        """A well-formed header naming an impossible page or segment size raises CorruptImage."""
        path = str(tmp_path / "odd.image")
        build(path, [[1]], segment_size=TINY_SEGMENT)
        name = os.path.join(path, "seg-000001")
        raw = bytearray(read_file(name))
        h = fmt.decode_segment_header(bytes(raw[:fmt.HEADER_BYTES]))
        raw[:fmt.HEADER_BYTES] = fmt.encode_segment_header(page_size, seg_size, 1, h.image_id,
                                                           h.salt, h.created_ns)
        with open(name, "wb") as f:
            f.write(raw[:seg_size] if seg_size < len(raw) else raw + bytes(seg_size - len(raw)))
        for readonly in (True, False):
            with pytest.raises(CorruptImage) as err:
                PageStore.open(path, readonly=readonly)
            assert "seg-000001" in str(err.value) and path in str(err.value)

    def test_bytes_after_the_header_are_ignored(self, multi):
        """Slot 0 past the 128-byte header is unused: damage there changes nothing."""
        flip(os.path.join(multi, segment_names(multi)[-1]), 600)
        with open_quietly(multi) as store:
            store.check()

    @pytest.mark.parametrize("readonly", [False, True])
    def test_empty_directory(self, tmp_path, readonly):
        """An empty directory is not an image: CorruptImage naming the path."""
        path = str(tmp_path / "empty.image")
        os.mkdir(path)
        with pytest.raises(CorruptImage, match="no segment files") as err:
            PageStore.open(path, readonly=readonly)
        assert path in str(err.value)

    @pytest.mark.parametrize("readonly", [False, True])
    def test_regular_file(self, tmp_path, readonly):
        """A regular file is not an image: CorruptImage naming the path."""
        path = str(tmp_path / "file.image")
        with open(path, "wb") as f:
            f.write(b"IMAGOSEG" + bytes(4000))
        with pytest.raises(CorruptImage, match="directory") as err:
            PageStore.open(path, readonly=readonly)
        assert path in str(err.value)

    @pytest.mark.parametrize("readonly", [False, True])
    def test_directory_of_unrelated_files(self, tmp_path, readonly):
        """A directory of other files, some named almost like segments: CorruptImage naming it."""
        path = str(tmp_path / "other")
        os.mkdir(path)
        for name in ("README", "seg-1", "seg-00000x", "seg-0000001"):
            with open(os.path.join(path, name), "w") as f:
                f.write("not a segment\n")
        with pytest.raises(CorruptImage) as err:
            PageStore.open(path, readonly=readonly)
        assert path in str(err.value)

    def test_non_segment_named_like_one(self, tmp_path):
        """A file named seg-000001 that is not a segment raises CorruptImage naming it."""
        path = str(tmp_path / "fake.image")
        os.mkdir(path)
        with open(os.path.join(path, "seg-000001"), "wb") as f:
            f.write(b"hello" * 1000)
        with pytest.raises(CorruptImage, match="seg-000001") as err:
            PageStore.open(path, readonly=True)
        assert path in str(err.value)

    @pytest.mark.parametrize("readonly", [False, True])
    def test_nonexistent_path(self, tmp_path, readonly):
        """A path that does not exist raises FileNotFoundError naming it, and creates nothing."""
        path = str(tmp_path / "nowhere.image")
        with pytest.raises(FileNotFoundError) as err:
            PageStore.open(path, readonly=readonly)
        assert path in str(err.value)
        assert not os.path.lexists(path)


class TestNativeAttach:
    """Opening attaches segments in C (core.c ic_store_attach) unless a Vfs
    shim is in place; anything C refuses goes through the Python path, which
    names what is wrong.  So C must refuse every damage that path refuses."""

    @pytest.fixture
    def multi(self, image) -> str:
        build(image, [[i, i + 1] for i in range(0, 40, 2)], segment_size=TINY_SEGMENT)
        return image

    def _native_attach(self, path: str, segno: int):
        from pager._native import NativeStore
        h = fmt.decode_segment_header(read_file(os.path.join(path, "seg-000001"))[:128])
        native = NativeStore(h.page_size, h.salt, h.image_id)
        dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return native.attach(dirfd, segno), native.segment(segno)
        finally:
            os.close(dirfd)
            native.close()

    def test_native_and_python_attach_agree(self, multi):
        """Both paths map the same segments at the same sizes."""
        from pager._segments import Image, segment_numbers
        from pager._vfs import Vfs

        class Shim(Vfs):
            pass
        numbers = segment_numbers(multi)
        assert Image(multi, Vfs(), numbers).sizes == Image(multi, Shim(), numbers).sizes
        assert all(self._native_attach(multi, n)[0] == TINY_SEGMENT for n in numbers)

    @pytest.mark.parametrize("damage", [
        "truncated", "garbage appended", "renamed", "missing", "other salt",
        *(f"flip {offset}" for offset in (0, 8, 12, 16, 24, 32, 48, 56, 120))])
    def test_native_attach_refuses(self, multi, tmp_path, damage):
        """Each damage is refused by C and leaves nothing mapped."""
        seg2 = os.path.join(multi, "seg-000002")
        if damage == "truncated":
            os.truncate(seg2, TINY_SEGMENT - PAGE)
        elif damage == "garbage appended":
            with open(seg2, "ab") as f:
                f.write(bytes(PAGE))
        elif damage == "renamed":
            shutil.copy(os.path.join(multi, "seg-000003"), seg2)
        elif damage == "missing":
            os.unlink(seg2)
        elif damage == "other salt":
            raw = bytearray(read_file(seg2))
            h = fmt.decode_segment_header(bytes(raw[:fmt.HEADER_BYTES]))
            raw[:fmt.HEADER_BYTES] = fmt.encode_segment_header(
                h.page_size, h.seg_size, h.segno, h.image_id, h.salt ^ 1, h.created_ns)
            with open(seg2, "wb") as f:
                f.write(raw)
        else:
            flip(seg2, int(damage.split()[1]), mask=0x01)
        assert self._native_attach(multi, 2) == (None, None)


class TestForeignSegment:
    @pytest.fixture
    def pair(self, tmp_path) -> tuple[str, str]:
        """Two images of the same geometry and several segments each."""
        paths = str(tmp_path / "a.image"), str(tmp_path / "b.image")
        for i, path in enumerate(paths):
            build(path, [[j, j + 1] for j in range(0, 40 + 20 * i, 2)], segment_size=TINY_SEGMENT)
        assert len(segment_names(paths[1])) > len(segment_names(paths[0])) >= 3
        return paths

    @pytest.mark.parametrize("which", [0, 1])
    def test_replacing_a_sealed_segment(self, pair, which):
        """Another image's segment in place of a sealed one raises CorruptImage naming it."""
        a, b = pair
        name = segment_names(a)[which]
        shutil.copy(os.path.join(b, name), os.path.join(a, name))
        with pytest.raises(CorruptImage) as err:
            PageStore.open(a)
        assert name in str(err.value) and "another image" in str(err.value)

    def test_appended_as_the_newest_segment(self, pair):
        """Another image's segment copied in as the next segment raises CorruptImage naming it."""
        a, b = pair
        name = fmt.segment_name(len(segment_names(a)) + 1)
        shutil.copy(os.path.join(b, name), os.path.join(a, name))
        for readonly in (False, True):
            with pytest.raises(CorruptImage) as err:
                PageStore.open(a, readonly=readonly)
            assert name in str(err.value), str(err.value)

    def test_under_another_number(self, pair):
        """A segment copied in under another segment's number raises CorruptImage naming it."""
        a, b = pair
        name = fmt.segment_name(len(segment_names(a)) + 1)
        shutil.copy(os.path.join(b, "seg-000001"), os.path.join(a, name))
        with pytest.raises(CorruptImage) as err:
            PageStore.open(a)
        assert name in str(err.value) and "renamed" in str(err.value)


# -- the HINT file and the checkpoint chain ------------------------------------------


class Chain:
    """An image whose checkpoints chain back across segments and within them."""

    def __init__(self, path: str, hist: History) -> None:
        self.path, self.hist = path, hist
        self.recs = records(path)
        self.salt = salt_of(path)
        self.ckpts = [r for r in self.recs if r.is_checkpoint]
        self.newest_segno = self.recs[-1].segno

    def in_segment(self, segno: int, checkpoint: bool) -> list[fmt.Record]:
        return [r for r in self.recs if r.segno == segno and r.is_checkpoint == checkpoint]

    def copy(self, dest: str) -> str:
        shutil.copytree(self.path, dest)
        return dest


@pytest.fixture(scope="module")
def pristine_chain(tmp_path_factory) -> Chain:
    """Several 64-slot segments, each holding several checkpoints (one every five
    records), the newest with records after its newest checkpoint.  Built once;
    tests damage copies."""
    path = str(tmp_path_factory.mktemp("chain") / "chain.image")
    rng = random.Random(31)
    hist = History()
    with checkpoint_every(5), PageStore.create(path, page_size=PAGE,
                                               segment_size=SEGMENT) as store:
        chain = None
        while (chain is None or chain.newest_segno < 4 or chain.recs[-1].is_checkpoint
               or len(chain.in_segment(chain.newest_segno, checkpoint=True)) < 2):
            hist.commit(store, rng.sample(range(40), rng.randint(1, 4)))
            chain = Chain(path, hist)
    assert [r.seq for r in chain.recs] == list(range(len(hist.writes)))
    newest = chain.in_segment(chain.newest_segno, checkpoint=True)
    assert len(newest) >= 2 and not chain.recs[-1].is_checkpoint
    assert all(len(chain.in_segment(s, checkpoint=True)) >= 2 for s in (1, 2, 3))
    assert any(r.nnodes for r in chain.ckpts if r.slot > 1)
    return chain


@pytest.fixture
def chain(pristine_chain, tmp_path) -> Chain:
    """A copy of the pristine chain image, and of its history, for one test to change."""
    return Chain(pristine_chain.copy(str(tmp_path / "c.image")), pristine_chain.hist.copy())


def opened_state(store: PageStore) -> tuple:
    """What an open found: head, log end, the checkpoint it replays from, records since."""
    ckpt = store._ckpt
    return store.head, store._tail, (ckpt.segno, ckpt.slot), store._records_since_ckpt


def _write_hint(path: str, data: bytes) -> None:
    with open(os.path.join(path, "HINT"), "wb") as f:
        f.write(data)


def _hint_for(c: Chain, rec: fmt.Record, **change) -> bytes:
    fields = {"salt": c.salt, "segno": rec.segno, "slot": rec.slot, "seq": rec.seq,
              "record_sum": rec.sum}
    return fmt.encode_hint(**(fields | change))


def _replace_hint_with_directory(c: Chain) -> None:
    os.unlink(os.path.join(c.path, "HINT"))
    os.mkdir(os.path.join(c.path, "HINT"))


def _flip_hint(c: Chain, offset: int) -> None:
    flip(os.path.join(c.path, "HINT"), offset)


# Each makes the HINT of a Chain's copy missing, damaged or stale.
BAD_HINTS = {
    "missing": lambda c: os.unlink(os.path.join(c.path, "HINT")),
    "empty": lambda c: _write_hint(c.path, b""),
    "garbage": lambda c: _write_hint(c.path, random.Random(5).randbytes(40)),
    "truncated": lambda c: _write_hint(c.path, read_file(os.path.join(c.path, "HINT"))[:30]),
    "bad checksum": lambda c: _flip_hint(c, 35),
    "bad slot field": lambda c: _flip_hint(c, 12),
    "another image's salt": lambda c: _write_hint(c.path, _hint_for(c, c.ckpts[-1],
                                                                    salt=c.salt ^ 1)),
    "a directory": _replace_hint_with_directory,
    "a record that is not a checkpoint": lambda c: _write_hint(
        c.path, _hint_for(c, c.in_segment(c.newest_segno, checkpoint=False)[0])),
    "a data page": lambda c: _write_hint(c.path, _hint_for(c, c.recs[-1],
                                                           slot=c.recs[-1].first_slot)),
    "the slot past the log's end": lambda c: _write_hint(
        c.path, _hint_for(c, c.recs[-1], slot=c.recs[-1].slot_end, seq=c.recs[-1].seq + 1)),
    "slot 0": lambda c: _write_hint(c.path, _hint_for(c, c.ckpts[-1], slot=0)),
    "a slot past the segment's end": lambda c: _write_hint(c.path, _hint_for(
        c, c.ckpts[-1], slot=(1 << 32) - 1)),
    "a missing segment": lambda c: _write_hint(c.path, _hint_for(
        c, c.ckpts[-1], segno=c.newest_segno + 3)),
    "the newest checkpoint, wrong sum": lambda c: _write_hint(c.path, _hint_for(
        c, c.ckpts[-1], record_sum=c.ckpts[-1].sum ^ 1)),
    "the newest checkpoint, wrong commit": lambda c: _write_hint(c.path, _hint_for(
        c, c.ckpts[-1], seq=c.ckpts[-1].seq - 1)),
    "an older checkpoint of the newest segment": lambda c: _write_hint(
        c.path, _hint_for(c, c.in_segment(c.newest_segno, checkpoint=True)[0])),
    "a checkpoint of an older segment": lambda c: _write_hint(
        c.path, _hint_for(c, c.in_segment(2, checkpoint=True)[1])),
    "commit 0": lambda c: _write_hint(c.path, _hint_for(c, c.recs[0])),
}


class TestHint:
    def test_names_the_newest_checkpoint(self, pristine_chain):
        """After a checkpoint the writer leaves a HINT naming it (segment, slot, commit, sum)."""
        c = pristine_chain
        ckpt = c.ckpts[-1]
        assert ckpt.slot > 1 and ckpt.segno == c.newest_segno
        hint = fmt.decode_hint(read_file(os.path.join(c.path, "HINT")), c.salt)
        assert hint == (ckpt.segno, ckpt.slot, ckpt.seq, ckpt.sum)

    @pytest.mark.parametrize("kind", list(BAD_HINTS))
    def test_bad_hint_changes_nothing(self, pristine_chain, chain, kind):
        """A missing, damaged or stale HINT opens the same state, quietly, for reader and writer."""
        with open_quietly(pristine_chain.path, readonly=True) as store:
            expected = opened_state(store)
        BAD_HINTS[kind](chain)
        hist = chain.hist
        with open_quietly(chain.path, readonly=True) as store:
            assert opened_state(store) == expected
            hist.assert_state(store, store.head)
            with store.view(chain.ckpts[2].seq + 1) as view:
                for p in hist.pages():
                    assert view.read(p) == hist.expected(view.commit, p)
        with open_quietly(chain.path) as store:
            assert opened_state(store) == expected
            store.check()
            n = hist.commit(store, [3, 39])
        assert not saved_damage(chain.path)
        with open_quietly(chain.path, readonly=True) as store:
            assert store.head == n
            hist.assert_state(store, n)

    @pytest.mark.parametrize("readonly", [True, False])
    def test_missing_hint_and_damage_before_the_newest_checkpoint(self, chain, tmp_path,
                                                                  readonly):
        """A record damaged before the newest checkpoint opens alike with or without the HINT."""
        # The HINT is written without a sync, so a power cut may take it away:
        # whether such an image opens cannot depend on it.
        victim = next(r for r in chain.in_segment(chain.newest_segno, checkpoint=False)
                      if r.seq < chain.ckpts[-1].seq)
        damage_record(chain.path, victim, "header")
        without = chain.copy(str(tmp_path / "without.image"))
        os.unlink(os.path.join(without, "HINT"))
        outcomes = {}
        for name, path in (("with the HINT", chain.path), ("without it", without)):
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                try:
                    with PageStore.open(path, readonly=readonly) as store:
                        outcomes[name] = f"opened at commit {store.head}"
                except CorruptImage as exc:
                    outcomes[name] = f"CorruptImage: {exc}".replace(path, "IMAGE")
        assert outcomes["with the HINT"] == outcomes["without it"], outcomes


class TestViewsOfOldCommits:
    @pytest.mark.parametrize("readonly", [False, True])
    def test_every_commit_reads_as_it_did(self, chain, readonly):
        """A view of any commit, segments and checkpoints back, reads that commit's pages."""
        hist = chain.hist
        assert chain.recs[-1].segno - chain.recs[0].segno >= 3
        with open_quietly(chain.path, readonly=readonly) as store:
            for n in range(store.head + 1):
                with store.view(n) as view:
                    for p in hist.pages():
                        assert view.read(p) == hist.expected(n, p), f"page {p}, commit {n}"

    @pytest.mark.parametrize("part", ["record", "nodes"])
    @pytest.mark.parametrize("which", ["segment-first", "mid-segment"])
    def test_damaged_checkpoint_in_the_chain(self, chain, which, part):
        """A damaged old checkpoint fails the views needing it, naming commit or node."""
        hist = chain.hist
        in_seg = chain.in_segment(2, checkpoint=True)
        victim = in_seg[0] if which == "segment-first" else next(r for r in in_seg[1:]
                                                                 if r.nnodes)
        after = next(r for r in chain.ckpts if r.seq > victim.seq)   # the next checkpoint
        if part == "record":
            damage_record(chain.path, victim, "header")
            where = None
        else:
            assert victim.nnodes
            slot = victim.first_slot + victim.npages
            flip(seg_file(chain.path, 2), slot_offset(slot) + 64)
            where = f"seg-000002 slot {slot}"
        failed = set()
        with open_quietly(chain.path, readonly=True) as store:   # the head needs neither
            for n in range(store.head + 1):
                try:
                    with store.view(n) as view:
                        for p in hist.pages():
                            assert view.read(p) == hist.expected(n, p), f"page {p}, commit {n}"
                except (CorruptImage, KeyError) as exc:
                    msg = str(exc)
                    assert names_commit(msg, n) or (where and where in msg), msg
                    failed.add(n)
        if part == "record":
            assert failed == set(range(after.seq)), "views that need the checkpoint"
        else:            # later checkpoints may share the node; earlier ones never do
            assert victim.seq in failed and min(failed) >= victim.seq

    def test_damaged_record_after_a_checkpoint(self, chain):
        """A damaged record in a sealed segment fails views up to the next checkpoint."""
        hist = chain.hist
        victim = chain.in_segment(2, checkpoint=False)[1]
        after = next(r for r in chain.ckpts if r.seq > victim.seq)
        damage_record(chain.path, victim, "body")
        with open_quietly(chain.path, readonly=True) as store:
            for n in range(victim.seq - 3, after.seq + 2):
                try:
                    with store.view(n) as view:
                        assert [view.read(p) for p in hist.pages()] == \
                            [hist.expected(n, p) for p in hist.pages()], f"commit {n}"
                except CorruptImage as exc:
                    assert names_commit(str(exc), n) and victim.seq <= n < after.seq, str(exc)
                else:
                    assert not victim.seq <= n < after.seq, f"commit {n} opened past the damage"


# -- fuzz --------------------------------------------------------------------------------

FUZZ_KINDS = ("header", "record", "page", "node", "past the end", "hint", "newest segment",
              "anywhere")


def fuzz_image(path: str) -> History:
    """A small image of several segments whose checkpoints hold page-table nodes."""
    rng = random.Random(99)
    batches = []
    for i in range(36):
        if i % 5 == 0:
            start = rng.randrange(0, 80)
            batches.append(list(range(start, start + rng.randint(4, 8))))
        else:
            batches.append(rng.sample(range(100), rng.randint(1, 3)))
    batches += [[7], [8], [9]]            # the newest segment: several records, then room
    hist = build(path, batches, segment_size=TINY_SEGMENT)
    recs = records(path)
    assert len(segment_names(path)) >= 4 and any(r.nnodes for r in recs)
    assert recs[-1].slot_end < TINY_SEGMENT // PAGE
    assert os.path.exists(os.path.join(path, "HINT"))
    return hist


def fuzz_targets(path: str) -> dict[str, list[tuple[str, int, int]]]:
    """Byte ranges (file, start, end) of each kind of on-disk structure: segment
    headers, records (the bytes their checksum covers, and the checksum), data
    pages, page-table nodes, the zeroed slot past the newest log, the HINT."""
    recs = records(path)
    targets: dict[str, list] = {k: [] for k in FUZZ_KINDS}
    for name in segment_names(path):
        targets["header"].append((name, 0, fmt.HEADER_BYTES))
        targets["anywhere"].append((name, 0, os.path.getsize(os.path.join(path, name))))
    targets["newest segment"].append(targets["anywhere"][-1])
    targets["hint"].append(("HINT", 0, os.path.getsize(os.path.join(path, "HINT"))))
    for r in recs:
        name = fmt.segment_name(r.segno)
        targets["record"].append((name, slot_offset(r.slot), slot_offset(r.slot) + r.length))
        if r.npages:
            targets["page"].append((name, slot_offset(r.first_slot),
                                    slot_offset(r.first_slot + r.npages)))
        if r.nnodes:
            lo = slot_offset(r.first_slot + r.npages)
            targets["node"].append((name, lo, lo + r.nnodes * PAGE))
    newest = recs[-1]
    lo = slot_offset(newest.slot_end)
    targets["past the end"].append((fmt.segment_name(newest.segno), lo, lo + PAGE))
    assert all(targets.values()), targets
    return targets


def fuzz_one(pristine: str, work: str, hist: History, targets, seed: int) -> str:
    """Flip one seeded random byte, then open, read every page, check() and commit; how the
    damage showed.  Allowed: CorruptImage and RecoveryWarning, and a successful read must
    return the bytes the model expects at the head the image opened at."""
    rng = random.Random(seed)
    name, lo, hi = rng.choice(targets[rng.choice(FUZZ_KINDS)])
    shutil.copytree(pristine, work)
    try:
        flip(os.path.join(work, name), rng.randrange(lo, hi), mask=rng.randint(1, 255))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome = exercise(work, hist)
        others = [str(w.message) for w in caught if w.category is not RecoveryWarning]
        assert not others, others
        return "warned" if caught and outcome == "clean" else outcome
    finally:
        shutil.rmtree(work)


def exercise(path: str, hist: History) -> str:
    try:
        store = PageStore.open(path)
    except CorruptImage:
        return "open refused"
    outcome = "clean"
    with store:
        head = store.head
        assert head <= len(hist.writes) - 1
        for p in hist.pages():
            try:
                assert store.read(p) == hist.expected(head, p), f"page {p} at {head}"
            except CorruptImage:
                outcome = "read refused"
        try:
            store.check()
        except CorruptImage:
            outcome = "check refused" if outcome == "clean" else outcome
        store.write(1000, b"after the damage")
        n = store.commit()
    with PageStore.open(path, readonly=True) as store:
        assert store.head == n
        assert store.read(1000)[:16] == b"after the damage"
    return outcome


def run_fuzz(root: str, seeds) -> tuple[list[str], collections.Counter]:
    """Fuzz a fresh small image once per seed: the failures, as text, and how often each
    outcome happened."""
    pristine = os.path.join(root, "pristine.image")
    hist = fuzz_image(pristine)
    targets = fuzz_targets(pristine)
    failures, outcomes = [], collections.Counter()
    for seed in seeds:
        try:
            outcomes[fuzz_one(pristine, os.path.join(root, f"w{seed}.image"), hist, targets,
                              seed)] += 1
        except Exception as exc:   # noqa: BLE001 - any exception type is a finding here
            failures.append(f"seed {seed}: {type(exc).__name__}: {exc}")
    return failures, outcomes


class TestFuzz:
    def test_random_flips_in_process(self, tmp_path):
        """250 seeded byte flips: each opens and reads correctly or raises CorruptImage."""
        failures, outcomes = run_fuzz(str(tmp_path), range(250))
        assert not failures, "\n".join(failures[:20])
        for outcome in ("open refused", "read refused", "check refused", "warned", "clean"):
            assert outcomes[outcome] >= 5, outcomes

    def test_random_flips_in_a_subprocess(self, tmp_path):
        """250 more seeded flips in a child process, so a segfault fails the test, not pytest."""
        script = textwrap.dedent(f"""
            import faulthandler, sys
            faulthandler.enable()
            sys.path.insert(0, {os.path.dirname(__file__)!r})
            import test_pager_corruption as t
            failures, outcomes = t.run_fuzz({str(tmp_path)!r}, range(1000, 1250))
            print("\\n".join(failures))
            print(dict(outcomes))
            sys.exit(1 if failures else 0)
        """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n" \
                                     f"{proc.stderr[-4000:]}"


class TestRecordPageNumbers:
    """decode_record refuses a record (even one whose checksum holds, as a forger
    with the salt could make) that names a page at or past MAX_PAGE_NO."""

    @staticmethod
    def _record_naming(page_no: int) -> memoryview:
        salt, page = 0x5EED, 4096
        raw = fmt.encode_record(seq=1, parent=fmt.NO_PARENT, prev_sum=0, time_ns=1,
                                flags=fmt.FLAG_CHECKPOINT, segno=1, slot=1,
                                pairs=struct.pack("<QQ", 3, 9) + struct.pack("<QQ", page_no, 7),
                                usage=[], meta=b"", depth=1, root_loc=0, root_sum=0,
                                prev_ckpt=0, nnodes=0, nodes_sum=0, salt=salt,
                                stands_for=None)
        seg = bytearray(page * 8)
        seg[page:page + len(raw)] = raw
        return memoryview(bytes(seg)), salt, page

    @pytest.mark.parametrize("page_no", [0, 5, (1 << 40) - 1])
    def test_page_numbers_below_the_bound_are_taken(self, page_no):
        seg, salt, page = self._record_naming(page_no)
        rec = fmt.decode_record(seg, 1, 1, salt, page)
        assert rec is not None and rec.page_numbers() == (3, page_no)

    @pytest.mark.parametrize("page_no", [1 << 40, 1 << 41, 1 << 48, (1 << 64) - 1])
    def test_a_page_number_at_or_past_the_bound_is_refused(self, page_no):
        seg, salt, page = self._record_naming(page_no)
        assert fmt.decode_record(seg, 1, 1, salt, page) is None
