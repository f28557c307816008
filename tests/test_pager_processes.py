"""The page store across real processes: a writer killed with SIGKILL at random
moments, two writers contending for the LOCK, readers that refresh beside a
committing writer, and readers that probe the LOCK over a torn tail.

Child processes run small scripts through ``sys.executable -c``.  The bytes a
commit writes are a pure function of its commit number (``pages_of`` and
``content`` below, whose source the children run too), so the parent can
compute the expected state of any commit without being told.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

from pager import ImageLocked, PageStore, ReadOnlyStore, RecoveryWarning
from pager import _format as fmt

PAGE = 1024
NPAGES = 64                # pages the SIGKILL workload writes
SEGMENT = 64 << 10         # 64 slots: a segment rolls over every few dozen commits
READER_SET = 8             # pages every commit of the reader workload rewrites
KILL_ROUNDS = 30


# -- the workload: what commit n writes ------------------------------------------------


def pages_of(n: int) -> list[int]:
    """The pages commit n writes: one page, or, every third commit, a run of 2 to 12."""
    if n % 3 == 0:
        start = (n * 7) % NPAGES
        return sorted({(start + i) % NPAGES for i in range(2 + n % 11)})
    return [(n * 13) % NPAGES]


def content(n: int, page_no: int) -> bytes:
    """The bytes commit n writes to page_no: unique per (commit, page)."""
    return struct.pack("<QQ", n, page_no) * (PAGE // 16)


def digest(n: int) -> str:
    """A checksum of everything commit n writes, which the child prints with each ack."""
    return hashlib.sha256(b"".join(content(n, p) for p in pages_of(n))).hexdigest()[:16]


def expected(n: int, page_no: int) -> bytes:
    """Page page_no at commit n of the SIGKILL workload (commit 1 onward, from an empty image)."""
    for m in range(n, 0, -1):
        if page_no in pages_of(m):
            return content(m, page_no)
    return bytes(PAGE)


PRELUDE = "\n".join(
    [f"import hashlib, struct\nPAGE = {PAGE}\nNPAGES = {NPAGES}\nREADER_SET = {READER_SET}\n"]
    + [inspect.getsource(f) for f in (pages_of, content, digest)])


def script(body: str) -> str:
    """A child's program: the workload's source, the pager's names, then body."""
    return PRELUDE + "\nimport sys\nfrom pager import *\n" + textwrap.dedent(body)


def child(body: str, *args: str, **kw) -> subprocess.Popen:
    """Start sys.executable running script(body) with args in sys.argv[1:]."""
    return subprocess.Popen([sys.executable, "-c", script(body), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run_child(body: str, *args: str) -> subprocess.CompletedProcess:
    """Run script(body) to its end; fails the test if it exits non-zero."""
    proc = subprocess.run([sys.executable, "-c", script(body), *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


class LineReader:
    """Drains a child's stdout on a thread, so a full pipe never stalls the child."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.first = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream) -> None:
        for line in stream:
            if line.endswith("\n"):     # a line cut short by the kill is not an ack
                self.lines.append(line[:-1])
            self.first.set()
        self.first.set()
        stream.close()

    def join(self) -> list[str]:
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()
        return self.lines


@pytest.fixture
def image(tmp_path) -> str:
    path = str(tmp_path / "p.image")
    PageStore.create(path, page_size=PAGE, segment_size=SEGMENT).close()
    return path


def open_writer(path: str) -> tuple[PageStore, list[str]]:
    """Open for writing; the RecoveryWarnings it gave (any other warning fails the test)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = PageStore.open(path)
    assert all(w.category is RecoveryWarning for w in caught), [str(w.message) for w in caught]
    return store, [str(w.message) for w in caught]


# -- a writer killed with SIGKILL --------------------------------------------------------

COMMIT_LOOP = """
    store = PageStore.open(sys.argv[1])
    while True:
        n = store.head + 1
        for p in pages_of(n):
            store.write(p, content(n, p))
        if store.commit(b"n=%d" % n) != n:
            sys.exit("commit returned an unexpected number")
        sys.stdout.write(f"{n} {digest(n)}\\n")
        sys.stdout.flush()
"""


def kill_round(path: str, rng: random.Random, wait_for_ack: bool) -> list[int]:
    """Run the commit loop and SIGKILL it, after its first ack plus a random delay or at a
    random moment from its start (perhaps inside open); the commits it acknowledged."""
    proc = child(COMMIT_LOOP, path)
    try:
        reader = LineReader(proc.stdout)
        if wait_for_ack:
            assert reader.first.wait(timeout=30), "the child never acknowledged a commit"
            time.sleep(rng.uniform(0, 0.06))
        else:
            time.sleep(rng.uniform(0.05, 0.4))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    lines = reader.join()
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the child died on its own:\n{stderr}"
    acked = []
    for line in lines:
        n, sent = line.split()
        assert sent == digest(int(n)), f"commit {n}: the child and the test disagree"
        acked.append(int(n))
    assert acked == sorted(acked) and len(set(acked)) == len(acked)
    return acked


def verify_after_kill(path: str, last_acked: int, earlier: list[int]) -> PageStore:
    """Reopen: every acknowledged commit is there, whole, and check() passes."""
    store, _ = open_writer(path)
    head = store.head
    assert head >= last_acked, f"acknowledged commit {last_acked} lost; opened at {head}"
    for p in range(NPAGES):
        assert store.read(p) == expected(head, p), f"page {p} at head {head}"
    for n in [last_acked, *earlier]:
        if n == 0:
            continue
        with store.view(n) as view:
            for p in range(NPAGES):
                assert view.read(p) == expected(n, p), f"page {p} in a view of commit {n}"
    store.check()
    return store


class TestSigkill:
    def test_acknowledged_commits_survive(self, image):
        """A writer killed at 30 random moments never loses an acknowledged commit."""
        rng = random.Random(20240611)
        last_acked, acked_total = 0, 0
        for round_no in range(KILL_ROUNDS):
            acked = kill_round(image, rng, wait_for_ack=round_no % 3 != 2)
            if acked:
                last_acked = acked[-1]
                acked_total += len(acked)
            earlier = rng.sample(acked, min(2, len(acked)))
            verify_after_kill(image, last_acked, earlier).close()
        store, notes = open_writer(image)
        with store:
            assert not notes, "the writers' reopens left damage behind"
            info = store.check()
        assert acked_total >= KILL_ROUNDS, "too few commits to mean anything"
        assert info["segments"] >= 10, "the workload never rolled over to new segments"

    def test_kill_does_not_hold_the_lock(self, image):
        """A writer killed with SIGKILL leaves the LOCK free for the next writer."""
        proc = child("""
            store = PageStore.open(sys.argv[1])
            print("open", flush=True)
            sys.stdin.read()
        """, image, stdin=subprocess.PIPE)
        try:
            assert proc.stdout.readline().strip() == "open"
            with pytest.raises(ImageLocked):
                PageStore.open(image)
        finally:
            proc.kill()
            proc.wait(timeout=30)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                stream.close()
        with PageStore.open(image) as store:
            assert store.head == 0


# -- two writers --------------------------------------------------------------------------

HOLD_WRITER = """
    store = PageStore.open(sys.argv[1])
    print("open", flush=True)
    sys.stdin.readline()
    store.write(0, b"from the child")
    store.commit()
    store.close()
    print("closed", flush=True)
"""

TRY_WRITER = """
    try:
        PageStore.open(sys.argv[1]).close()
        print("opened")
    except ImageLocked as exc:
        print("ImageLocked", exc)
"""


class TestTwoWriters:
    def test_same_process(self, image):
        """A second writer in this process gets ImageLocked naming the path until the first closes."""
        first = PageStore.open(image)
        with pytest.raises(ImageLocked) as err:
            PageStore.open(image)
        assert image in str(err.value) and str(os.getpid()) in str(err.value)
        with PageStore.open(image, readonly=True) as reader:
            assert reader.head == 0
        first.write(1, b"first")
        first.commit()
        with pytest.raises(ImageLocked):
            PageStore.open(image)
        first.close()
        with PageStore.open(image) as second:
            assert second.read(1)[:5] == b"first"

    def test_other_process_holds_the_lock(self, image):
        """While another process writes, open raises ImageLocked naming the path and its pid."""
        proc = child(HOLD_WRITER, image, stdin=subprocess.PIPE)
        try:
            assert proc.stdout.readline().strip() == "open"
            for _ in range(3):
                with pytest.raises(ImageLocked) as err:
                    PageStore.open(image)
                assert image in str(err.value) and f"pid {proc.pid}" in str(err.value)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "closed"
        finally:
            _, err_text = proc.communicate(timeout=30)
        assert proc.returncode == 0, err_text
        with PageStore.open(image) as store:
            assert store.head == 1 and store.read(0)[:14] == b"from the child"

    def test_this_process_holds_the_lock(self, image):
        """While this process writes, another process's open raises ImageLocked; then it works."""
        with PageStore.open(image):
            out = run_child(TRY_WRITER, image).stdout
            assert out.startswith("ImageLocked")
            assert image in out and f"pid {os.getpid()}" in out
        assert run_child(TRY_WRITER, image).stdout.strip() == "opened"


# -- readers beside a writer ------------------------------------------------------------------

READER_LOOP = """
    import json, os, random
    path, stop = sys.argv[1], sys.argv[2]
    rng = random.Random(int(sys.argv[3]))
    store = PageStore.open(path, readonly=True)
    last, heads, errors, refreshes, views = store.head, set(), [], 0, 0
    def expect(n, p):
        return content(n, p) if n else bytes(PAGE)
    while not os.path.exists(stop) and not errors:
        try:
            head = store.refresh()
            refreshes += 1
            if head < last:
                errors.append(f"the head went back from {last} to {head}")
            last = head
            heads.add(head)
            for p in range(READER_SET):
                if store.read(p) != expect(head, p):
                    errors.append(f"page {p} at commit {head} is not that commit's")
            if refreshes % 25 == 0 and heads:
                n = rng.choice(sorted(heads))
                with store.view(n) as view:
                    views += 1
                    if any(view.read(p) != expect(n, p) for p in range(READER_SET)):
                        errors.append(f"a view of commit {n} reads another commit's pages")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"refreshes": refreshes, "heads": len(heads), "last": last,
                      "views": views, "errors": errors[:10]}))
"""


def write_reader_workload(store: PageStore, n: int, rng: random.Random) -> None:
    """Commit n rewrites the whole reader set with n, and sometimes a few other pages."""
    for p in range(READER_SET):
        store.write(p, content(n, p))
    for p in rng.sample(range(100, 400), rng.choice((0, 0, 1, 5))):
        store.write(p, content(n, p))
    assert store.commit() == n


REOPEN_LOOP = """
    import os, warnings
    warnings.simplefilter("ignore", RecoveryWarning)
    opens = torn = 0
    while not os.path.exists(sys.argv[2]):
        with PageStore.open(sys.argv[1], readonly=True) as store:
            torn += bool(store.recovery_notes)
            store.refresh()
        opens += 1
    print(opens, torn)
"""


def log_end(path: str) -> int:
    """The slot past the log of a one-segment image: where its next record would start.

    The log is read forward from slot 1, each record starting where the last ended."""
    with open(os.path.join(path, "seg-000001"), "rb") as f:
        raw = memoryview(f.read())
    header = fmt.decode_segment_header(bytes(raw[:fmt.HEADER_BYTES]))
    slot = 1
    while (rec := fmt.decode_record(raw, 1, slot, header.salt, PAGE)) is not None:
        slot = rec.slot_end
    assert 1 < slot < len(raw) // PAGE and not any(raw[slot * PAGE:(slot + 1) * PAGE])
    return slot


def tear(path: str, slot: int, seed: int) -> None:
    """Write garbage over the first record block of the slot past the log's end, as a
    torn commit leaves."""
    with open(os.path.join(path, "seg-000001"), "r+b") as f:
        f.seek(slot * PAGE)
        f.write(random.Random(seed).randbytes(fmt.RECORD_BLOCK))


class TestReaders:
    def test_reader_beside_a_committing_writer(self, image, tmp_path):
        """Readers refreshing beside a writer see only whole commits, and never go backwards."""
        stop = str(tmp_path / "stop")
        readers = [child(READER_LOOP, image, stop, str(seed)) for seed in (1, 2)]
        rng = random.Random(7)
        try:
            with PageStore.open(image) as store:
                deadline = time.monotonic() + 2.5
                while time.monotonic() < deadline:
                    write_reader_workload(store, store.head + 1, rng)
                head = store.head
                segments = store.check()["segments"]
        finally:
            with open(stop, "w"):
                pass
            results = [proc.communicate(timeout=60) for proc in readers]
        for proc, (out, err) in zip(readers, results):
            assert proc.returncode == 0, err
            report = json.loads(out)
            assert not report["errors"], report
            assert report["heads"] >= 10 and report["views"] >= 1, report
            assert report["last"] <= head
        assert segments >= 5, "the writer never rolled over to a new segment"

    def test_readonly_without_a_writer(self, image):
        """A read-only open with no writer reads the head, refreshes, and refuses writes."""
        rng = random.Random(8)
        with PageStore.open(image) as store:
            for n in range(1, 6):
                write_reader_workload(store, n, rng)
        with PageStore.open(image, readonly=True) as reader:
            assert reader.head == 5
            assert all(reader.read(p) == content(5, p) for p in range(READER_SET))
            assert reader.refresh() == 5
            with pytest.raises(ReadOnlyStore, match=image):
                reader.write(0, b"x")
            with pytest.raises(ReadOnlyStore):
                reader.commit()
            with PageStore.open(image) as writer:    # readers take no lock
                write_reader_workload(writer, 6, rng)
            assert reader.head == 5 and reader.read(0) == content(5, 0)
            assert reader.refresh() == 6 and reader.read(0) == content(6, 0)
            reader.check()

    def test_reader_in_another_process_without_a_writer(self, image):
        """A read-only open in another process, with no writer anywhere, reads the head."""
        rng = random.Random(9)
        with PageStore.open(image) as store:
            for n in range(1, 4):
                write_reader_workload(store, n, rng)
        proc = run_child("""
            store = PageStore.open(sys.argv[1], readonly=True)
            ok = all(store.read(p) == content(3, p) for p in range(READER_SET))
            store.check()
            print(store.head, ok)
        """, image)
        assert proc.stdout.split() == ["3", "True"]

    def test_readers_probing_a_torn_tail_never_lock_out_a_writer(self, image, tmp_path):
        """Readers whose opens probe the LOCK over a torn tail never make a writer's open fail.
        Rounds go on (up to a bound) until the readers have opened over a torn
        tail often enough for the test to prove something: on a loaded machine
        one round may give them too few turns."""
        rng = random.Random(10)
        with PageStore.open(image) as store:
            for n in range(1, 4):
                write_reader_workload(store, n, rng)
        end = log_end(image)
        locked, attempts, opens, torn = [], 0, 0, 0
        for round_no in range(6):
            if torn >= 5 and opens > 100 and attempts >= 100:
                break
            stop = str(tmp_path / f"stop-{round_no}")
            round_attempts, round_opens, round_torn = self._tear_under_readers(
                image, end, stop, locked, attempts)
            attempts += round_attempts
            opens += round_opens
            torn += round_torn
        assert not locked, f"{len(locked)} of {attempts} writer opens failed: {locked[0]}"
        assert attempts >= 100 and opens > 100
        assert torn >= 5, "readers seldom opened while the tail was torn: the test proves little"
        with PageStore.open(image, readonly=True) as store:
            assert store.head == 3 and store.read(0) == content(3, 0)

    @staticmethod
    def _tear_under_readers(image: str, end: int, stop: str, locked: list,
                            first_attempt: int) -> tuple[int, int, int]:
        """One round: two readers reopen in a loop while the tail is torn
        again and again and a writer opens; returns (writer attempts, reader
        opens, reader opens that met a torn tail); lock failures go to locked."""
        readers = [child(REOPEN_LOOP, image, stop) for _ in range(2)]
        attempts = opens = torn = 0
        try:
            time.sleep(0.3)
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                tear(image, end, first_attempt + attempts)
                attempts += 1
                try:
                    store, _ = open_writer(image)
                except ImageLocked as exc:
                    locked.append(str(exc))
                else:
                    store.close()
        finally:
            with open(stop, "w"):
                pass
            results = [proc.communicate(timeout=60) for proc in readers]
        for proc, (out, err) in zip(readers, results):
            assert proc.returncode == 0, err
            reader_opens, seen = map(int, out.split())
            opens += reader_opens
            torn += seen
        return attempts, opens, torn

