"""Page-store benchmark: imago's pager beside SQLite and LMDB, in one run.

    python bench/bench_pager.py [--quick] [--json PATH] [--reps N]

Four benchmarks, each printed as a table with the figure for imago, for each
peer and the ratio imago/peer; a verdict per target closes the output.

1. Durable one-page commits per second.  imago writes ~100 bytes into one page
   and commits (a random page of a 1,000-page working set, and the same page
   every time); SQLite (WAL, synchronous=FULL, autocommit) inserts one small
   row per transaction; LMDB (sync=True, metasync=True) puts one small value
   per write transaction, under a random key of a 1,000-key working set.
   Target: imago >= both peers.
2. Bytes appended per one-page commit: ``store.appended_bytes`` over a run of
   thousands of commits (so several page-table checkpoints are included),
   in bytes, in pages, and as record slot + data page + page-table nodes.  Target: at most two
   pages plus one record block (8,704 bytes).  Beside it: the bytes each
   system handed to write()/pwrite() per commit in benchmark 1's runs
   (/proc/self/io wchar).  Section 4 adds the same count for one-page commits
   spread over the whole large store, where nearly every commit dirties its
   own page-table leaf (verdict 2b).
3. Random page reads from Python per second: ``store.read`` on a store opened
   fresh (read-only), first pass touching every page once in random order (so
   each page is verified on first touch), then a warm pass; LMDB ``txn.get``
   of 4 KiB values under one read transaction, same keys and order.  Target:
   imago >= LMDB.
4. Open time (``PageStore.open`` then ``close``) of a ~10 MiB store and a
   ~10 GiB store, both with the same tail of one-page commits (into their
   first 1,000 pages) after the bulk build, so both replay the same number of
   records.  Target: the 10 GiB open within 1.5x of the 10 MiB open.

Timings are medians over repetitions, and the peers run interleaved with
imago (rep 1 of each, then rep 2 of each, ...) so that a noisy neighbour hits
all of them alike.  Nothing here asserts a timing: the verdicts are printed,
and the exit code is 0 whatever they say.  Every file lives under a
tempfile directory (on the filesystem of /tmp) that is removed at the end.

``--quick`` scales everything down (10 GiB -> 200 MiB, fewer commits and
reads) so that the whole run takes well under 30 s; tests/test_bench_smoke.py
runs it.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import lmdb  # noqa: E402  (a peer; installed by the [test] extra)

from _common import (bytes_handed_to_write, heading, load_average, num,  # noqa: E402  (bench/)
                     report_verdicts)
from pager import PageStore  # noqa: E402

PAGE = 4096
RECORD_BLOCK = 512                       # pager/_format.py: RECORD_BLOCK
BYTES_TARGET = 2 * PAGE + RECORD_BLOCK   # benchmark 2's target: 8,704 bytes
OPEN_RATIO_TARGET = 1.5                  # "10 GiB open ~ 10 MiB open": within 50 %
PAYLOAD = 100                            # bytes written per one-page commit
SEED = 20240601                          # every random choice is seeded


@dataclass(frozen=True)
class Config:
    reps: int                # repetitions of each timed measurement
    working_set: int         # pages (imago) / keys (LMDB) written before the commit runs
    commits_per_rep: int     # commits per timed run of benchmark 1
    bytes_commits: int       # commits of benchmark 2's single long run
    read_pages: int          # pages (and LMDB keys) of benchmark 3
    warm_reads: int          # reads in benchmark 3's warm pass
    small_bytes: int         # the small store of benchmark 4
    large_bytes: int         # the large store of benchmark 4
    bulk_pages: int          # pages per commit while building benchmark 4's stores
    tail_commits: int        # one-page commits made after the bulk build
    open_reps: int
    spread_commits: int      # one-page commits over the whole large store, after the opens


FULL = Config(reps=7, working_set=1000, commits_per_rep=2000, bytes_commits=6000,
              read_pages=20_000, warm_reads=100_000, small_bytes=10 << 20,
              large_bytes=10 << 30, bulk_pages=4000, tail_commits=1000, open_reps=9,
              spread_commits=3000)
QUICK = Config(reps=3, working_set=1000, commits_per_rep=300, bytes_commits=3000,
               read_pages=5000, warm_reads=20_000, small_bytes=10 << 20,
               large_bytes=200 << 20, bulk_pages=4000, tail_commits=200, open_reps=5,
               spread_commits=600)


# -- small helpers ---------------------------------------------------------------

def median(xs: list[float]) -> float:
    return statistics.median(xs)


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def row(label: str, *cells: str, width: int = 34) -> None:
    print(f"  {label:<{width}}" + "".join(f"{c:>14}" for c in cells))


def du(path: str) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def payloads(n: int, rng: random.Random) -> list[bytes]:
    return [rng.randbytes(PAYLOAD) for _ in range(n)]


# -- benchmark 1 (and the OS-level half of 2): durable one-page commits -----------

class ImagoCommits:
    """One-page commits on a PageStore whose working set was written first."""

    def __init__(self, tmp: str, name: str, working_set: int, same_page: bool) -> None:
        self.store = PageStore.create(os.path.join(tmp, f"{name}.image"))
        self.store.write_bytes(0, random.Random(SEED).randbytes(working_set * PAGE))
        self.store.commit()
        self.working_set = working_set
        self.same_page = same_page

    def run(self, n: int, rng: random.Random) -> None:
        data = payloads(n, rng)
        if self.same_page:
            pages = [7] * n
        else:
            pages = [rng.randrange(self.working_set) for _ in range(n)]
        offsets = [rng.randrange(PAGE - PAYLOAD) for _ in range(n)]
        write, commit = self.store.write, self.store.commit
        for page, off, d in zip(pages, offsets, data):
            write(page, d, off)
            commit()

    def close(self) -> None:
        self.store.close()


class SqliteCommits:
    """One small row INSERT per transaction (autocommit), WAL + synchronous=FULL."""

    def __init__(self, tmp: str) -> None:
        self.db = sqlite3.connect(os.path.join(tmp, "peer.sqlite"), isolation_level=None)
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        assert mode == "wal", mode
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")

    def run(self, n: int, rng: random.Random) -> None:
        data = payloads(n, rng)
        execute = self.db.execute
        sql = "INSERT INTO t (v) VALUES (?)"
        for d in data:
            execute(sql, (d,))

    def close(self) -> None:
        self.db.close()


class LmdbCommits:
    """One small put per write transaction, sync=True, metasync=True (defaults)."""

    def __init__(self, tmp: str, working_set: int) -> None:
        self.env = lmdb.open(os.path.join(tmp, "peer.lmdb"), map_size=1 << 30, sync=True,
                             metasync=True)
        self.keys = [i.to_bytes(8, "big") for i in range(working_set)]
        rng = random.Random(SEED)
        with self.env.begin(write=True) as txn:
            for k in self.keys:
                txn.put(k, rng.randbytes(PAYLOAD))

    def run(self, n: int, rng: random.Random) -> None:
        data = payloads(n, rng)
        keys = [self.keys[rng.randrange(len(self.keys))] for _ in range(n)]
        begin = self.env.begin
        for k, d in zip(keys, data):
            with begin(write=True) as txn:
                txn.put(k, d)

    def close(self) -> None:
        self.env.close()


def bench_commits(cfg: Config) -> dict:
    heading(f"1. Durable one-page commits per second "
            f"(median of {cfg.reps} runs x {cfg.commits_per_rep:,} commits)")
    with tempfile.TemporaryDirectory(prefix="imago-bench-commits-") as tmp:
        systems = {
            "imago_random": ImagoCommits(tmp, "random", cfg.working_set, same_page=False),
            "imago_same": ImagoCommits(tmp, "same", cfg.working_set, same_page=True),
            "sqlite": SqliteCommits(tmp),
            "lmdb": LmdbCommits(tmp, cfg.working_set),
        }
        rates: dict[str, list[float]] = {k: [] for k in systems}
        wbytes: dict[str, list[float]] = {k: [] for k in systems}
        rng = random.Random(SEED)
        try:
            for _ in range(cfg.reps):
                for name, system in systems.items():
                    gc.collect()
                    w0, t0 = bytes_handed_to_write(), time.perf_counter()
                    system.run(cfg.commits_per_rep, rng)
                    t1, w1 = time.perf_counter(), bytes_handed_to_write()
                    rates[name].append(cfg.commits_per_rep / (t1 - t0))
                    if w0 is not None and w1 is not None:
                        wbytes[name].append((w1 - w0) / cfg.commits_per_rep)
        finally:
            for system in systems.values():
                system.close()
    med = {k: median(v) for k, v in rates.items()}
    wmed = {k: (median(v) if v else None) for k, v in wbytes.items()}
    row("case", "imago", "SQLite", "LMDB", "imago/SQLite", "imago/LMDB")
    for label, key in ((f"random page of {cfg.working_set:,} (/s)", "imago_random"),
                       ("same page every commit (/s)", "imago_same")):
        row(label, num(med[key]), num(med["sqlite"]), num(med["lmdb"]),
            ratio(med[key], med["sqlite"]), ratio(med[key], med["lmdb"]))
    print(f"  (SQLite: one INSERT of a {PAYLOAD}-byte row per autocommit transaction; "
          f"LMDB: one {PAYLOAD}-byte put per write transaction)")
    return {"commits_per_s": med, "commits_per_s_runs": rates,
            "written_bytes_per_commit": wmed}


# -- benchmark 2: bytes appended per one-page commit -------------------------------

def one_page_commits(store: PageStore, n: int, npages: int, rng: random.Random) -> dict:
    """n commits of PAYLOAD bytes into a random page of the first npages, and
    what they appended, commit by commit."""
    deltas, checkpoints = [], 0
    segs0 = segment_count(store.path)
    w0 = bytes_handed_to_write()
    for _ in range(n):
        before = store.appended_bytes
        store.write(rng.randrange(npages), rng.randbytes(PAYLOAD), rng.randrange(PAGE - PAYLOAD))
        store.commit()
        deltas.append(store.appended_bytes - before)
        checkpoints += store._ckpt.seq == store.head   # private: the head's checkpoint record
    w1 = bytes_handed_to_write()
    # A one-page commit appends whole slots: its record (one slot while the
    # record is under a page), its data page, and page-table nodes when it is a
    # checkpoint.  So slots - 2 are node pages.
    slots = [d // PAGE for d in deltas]
    return {"commits": n, "appended_bytes_per_commit": sum(deltas) / n,
            "pages_per_commit": sum(deltas) / n / PAGE,
            "node_pages_per_commit": sum(max(k - 2, 0) for k in slots) / n,
            "largest_commit_bytes": max(deltas),
            "checkpoints": checkpoints,
            "segments_started": segment_count(store.path) - segs0,
            "written_bytes_per_commit": (w1 - w0) / n if w0 is not None and w1 else None}


def segment_count(path: str) -> int:
    return sum(1 for name in os.listdir(path) if name.startswith("seg-"))


def appended_rows(st: dict, width: int, extra: tuple[str, ...] = ()) -> None:
    per = st["appended_bytes_per_commit"]
    row("appended bytes / commit (store count)", num(per), *extra, width=width)
    row("  in pages (4,096 B)", num(per / PAGE, 3), *extra, width=width)
    row("  = record slot + data page + nodes",
        f"1+1+{st['node_pages_per_commit']:.3f}", *extra, width=width)
    row("  largest single commit (bytes)", num(st["largest_commit_bytes"]), *extra, width=width)
    row("  commits that wrote a checkpoint", num(st["checkpoints"]), *extra, width=width)
    row("  segments started (zero-filled)", num(st["segments_started"]), *extra, width=width)


def bench_bytes(cfg: Config, commits: dict) -> dict:
    n = cfg.bytes_commits
    heading(f"2. Bytes appended per one-page commit "
            f"({n:,} commits, random page of {cfg.working_set:,})")
    rng = random.Random(SEED + 2)
    with tempfile.TemporaryDirectory(prefix="imago-bench-bytes-") as tmp:
        store = PageStore.create(os.path.join(tmp, "bytes.image"))
        try:
            store.write_bytes(0, rng.randbytes(cfg.working_set * PAGE))
            store.commit()
            st = one_page_commits(store, n, cfg.working_set, rng)
        finally:
            store.close()
    wr = commits["written_bytes_per_commit"]
    width = 40
    row("measure", "imago", "SQLite", "LMDB", "imago/SQLite", "imago/LMDB", width=width)
    appended_rows(st, width, ("-",) * 4)
    row("bytes to write() / commit, this run", num(st["written_bytes_per_commit"]),
        *("-",) * 4, width=width)
    row("bytes to write() / commit, bench 1", num(wr.get("imago_random")),
        num(wr.get("sqlite")), num(wr.get("lmdb")),
        ratio(wr.get("imago_random"), wr.get("sqlite")),
        ratio(wr.get("imago_random"), wr.get("lmdb")), width=width)
    print("  (bytes to write(): what the process passed to write()/pwrite(), /proc/self/io "
          "wchar.\n   imago also writes the zeroed slot after each commit (the next record's "
          "place),\n   which is not appended.  The pager zero-fills each new segment (64 MiB) "
          "before using it,\n   about as many bytes again as the commits append: that shows "
          "in the write() count\n   only of a run that started a segment, never in the "
          "appended count.\n   Section 4 has the same figures for commits spread over the "
          "whole large store.)")
    return {**st, "written_bytes_per_commit_bench1": wr}


# -- benchmark 3: random page reads --------------------------------------------------

def build_read_stores(tmp: str, cfg: Config) -> tuple[str, str]:
    rng = random.Random(SEED + 3)
    path = os.path.join(tmp, "reads.image")
    store = PageStore.create(path)
    try:
        chunk = 2000
        for first in range(0, cfg.read_pages, chunk):
            count = min(chunk, cfg.read_pages - first)
            store.write_bytes(first * PAGE, rng.randbytes(count * PAGE))
            store.commit()
    finally:
        store.close()
    lpath = os.path.join(tmp, "reads.lmdb")
    env = lmdb.open(lpath, map_size=4 * cfg.read_pages * PAGE + (64 << 20))
    try:
        for first in range(0, cfg.read_pages, 2000):
            with env.begin(write=True) as txn:
                for i in range(first, min(first + 2000, cfg.read_pages)):
                    txn.put(i.to_bytes(8, "big"), rng.randbytes(PAGE))
    finally:
        env.close()
    return path, lpath


def read_imago(path: str, first: list[int], warm: list[int]) -> tuple[float, float]:
    store = PageStore.open(path, readonly=True)
    try:
        read = store.read
        gc.collect()
        t0 = time.perf_counter()
        for p in first:
            read(p)
        t1 = time.perf_counter()
        for p in warm:
            read(p)
        t2 = time.perf_counter()
    finally:
        store.close()
    return len(first) / (t1 - t0), len(warm) / (t2 - t1)


def read_lmdb(path: str, first: list[bytes], warm: list[bytes]) -> tuple[float, float]:
    env = lmdb.open(path, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            get = txn.get
            gc.collect()
            t0 = time.perf_counter()
            for k in first:
                get(k)
            t1 = time.perf_counter()
            for k in warm:
                get(k)
            t2 = time.perf_counter()
    finally:
        env.close()
    return len(first) / (t1 - t0), len(warm) / (t2 - t1)


def bench_reads(cfg: Config) -> dict:
    mib = cfg.read_pages * PAGE / (1 << 20)
    heading(f"3. Random page reads per second from Python "
            f"({cfg.read_pages:,} pages = {mib:.0f} MiB, median of {cfg.reps} fresh opens)")
    rng = random.Random(SEED + 4)
    with tempfile.TemporaryDirectory(prefix="imago-bench-reads-") as tmp:
        path, lpath = build_read_stores(tmp, cfg)
        runs: dict[str, list[tuple[float, float]]] = {"imago": [], "lmdb": []}
        for _ in range(cfg.reps):
            first = list(range(cfg.read_pages))
            rng.shuffle(first)
            warm = [rng.randrange(cfg.read_pages) for _ in range(cfg.warm_reads)]
            runs["imago"].append(read_imago(path, first, warm))
            runs["lmdb"].append(read_lmdb(lpath, [p.to_bytes(8, "big") for p in first],
                                          [p.to_bytes(8, "big") for p in warm]))
    med = {k: {"first_pass": median([r[0] for r in v]), "warm": median([r[1] for r in v])}
           for k, v in runs.items()}
    row("pass", "imago", "LMDB", "imago/LMDB", width=44)
    row("first pass, every page once (/s)", num(med["imago"]["first_pass"]),
        num(med["lmdb"]["first_pass"]),
        ratio(med["imago"]["first_pass"], med["lmdb"]["first_pass"]), width=44)
    row(f"warm, {cfg.warm_reads:,} random reads (/s)", num(med["imago"]["warm"]),
        num(med["lmdb"]["warm"]), ratio(med["imago"]["warm"], med["lmdb"]["warm"]), width=44)
    print("  (imago: PageStore.open(readonly=True), store.read(page) -> bytes; LMDB: one read "
          "transaction, txn.get(8-byte key) -> 4 KiB bytes; both files are in the page cache)")
    return {"reads_per_s": med,
            "runs": {k: [list(r) for r in v] for k, v in runs.items()}}


# -- benchmark 4: open time ----------------------------------------------------------

def build_open_store(path: str, nbytes: int, cfg: Config, rng: random.Random) -> dict:
    """Write nbytes of pages in bulk commits, then cfg.tail_commits one-page
    commits into the first working_set pages (the same tail for every size)."""
    npages = nbytes // PAGE
    block = rng.randbytes(cfg.bulk_pages * PAGE)
    t0 = time.perf_counter()
    store = PageStore.create(path)
    bulk = 0
    try:
        for first in range(0, npages, cfg.bulk_pages):
            count = min(cfg.bulk_pages, npages - first)
            store.write_bytes(first * PAGE, memoryview(block)[:count * PAGE])
            store.commit()
            bulk += 1
        t1 = time.perf_counter()
        one_page_commits(store, cfg.tail_commits, min(cfg.working_set, npages), rng)
    finally:
        store.close()
    segments = segment_count(path)
    return {"pages": npages, "bulk_commits": bulk, "tail_commits": cfg.tail_commits,
            "build_s": t1 - t0, "build_mib_per_s": nbytes / (1 << 20) / (t1 - t0),
            "segments": segments, "disk_bytes": du(path)}


def since_checkpoint(path: str) -> int | None:
    """Commits since the newest checkpoint, as a freshly opened store sees it.

    The pager has no public accessor for it; this peeks at the private counter
    and says "n/a" if that ever moves."""
    store = PageStore.open(path, readonly=True)
    try:
        value = getattr(store, "_records_since_ckpt", None)
        return value if isinstance(value, int) else None
    finally:
        store.close()


def time_open(path: str, readonly: bool) -> float:
    t0 = time.perf_counter()
    store = PageStore.open(path, readonly=readonly)
    store.close()
    return time.perf_counter() - t0


def size_label(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):g} GiB" if nbytes >= 1 << 30 else f"{nbytes / (1 << 20):g} MiB"


def bench_open(cfg: Config) -> dict:
    small_label, large_label = size_label(cfg.small_bytes), size_label(cfg.large_bytes)
    heading(f"4. Open time, {small_label} store vs {large_label} store "
            f"(median of {cfg.open_reps} opens)")
    tmp = tempfile.mkdtemp(prefix="imago-bench-open-")
    try:
        need = cfg.large_bytes * 9 // 8 + cfg.small_bytes + (1 << 30)
        free = shutil.disk_usage(tmp).free
        if free < need:
            raise SystemExit(f"bench_pager: {tmp} has {free >> 20} MiB free; building the "
                             f"stores needs about {need >> 20} MiB (try --quick)")
        rng = random.Random(SEED + 5)
        paths = {"small": os.path.join(tmp, "small.image"),
                 "large": os.path.join(tmp, "large.image")}
        print(f"  building the {large_label} store in commits of {cfg.bulk_pages:,} pages ...",
              flush=True)
        built = {"small": build_open_store(paths["small"], cfg.small_bytes, cfg, rng),
                 "large": build_open_store(paths["large"], cfg.large_bytes, cfg, rng)}
        since = {k: since_checkpoint(p) for k, p in paths.items()}
        times: dict[str, dict[str, list[float]]] = {
            k: {"writer": [], "reader": []} for k in paths}
        for _ in range(cfg.open_reps):
            for key, path in paths.items():
                for mode in ("writer", "reader"):
                    gc.collect()
                    times[key][mode].append(time_open(path, readonly=(mode == "reader")))
        store = PageStore.open(paths["large"])
        try:
            spread = one_page_commits(store, cfg.spread_commits, built["large"]["pages"], rng)
        finally:
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: {m: median(v) for m, v in modes.items()} for k, modes in times.items()}
    width = 44
    row("measure", small_label, large_label, "large/small", width=width)
    row("open + close as the writer (ms)", num(med["small"]["writer"] * 1e3, 2),
        num(med["large"]["writer"] * 1e3, 2),
        ratio(med["large"]["writer"], med["small"]["writer"]), width=width)
    row("open + close read-only (ms)", num(med["small"]["reader"] * 1e3, 2),
        num(med["large"]["reader"] * 1e3, 2),
        ratio(med["large"]["reader"], med["small"]["reader"]), width=width)
    row("commits since the last checkpoint", num(since["small"]), num(since["large"]), "",
        width=width)
    row("bulk commits + one-page tail commits",
        f"{built['small']['bulk_commits']}+{built['small']['tail_commits']}",
        f"{built['large']['bulk_commits']}+{built['large']['tail_commits']}", "", width=width)
    row("segment files / on disk (MiB)",
        f"{built['small']['segments']} / {built['small']['disk_bytes'] >> 20:,}",
        f"{built['large']['segments']} / {built['large']['disk_bytes'] >> 20:,}", "",
        width=width)
    row("bulk build (s) / (MiB/s)",
        f"{built['small']['build_s']:.1f} / {built['small']['build_mib_per_s']:.0f}",
        f"{built['large']['build_s']:.1f} / {built['large']['build_mib_per_s']:.0f}", "",
        width=width)
    print(f"  then {cfg.spread_commits:,} one-page commits, each into a random page of the "
          f"whole {large_label} store:")
    appended_rows(spread, width)
    row("bytes to write() / commit", num(spread["written_bytes_per_commit"]), width=width)
    return {"open_s": med, "open_s_runs": times, "commits_since_checkpoint": since,
            "built": built, "spread_commits": spread,
            "labels": {"small": small_label, "large": large_label}}


# -- verdicts and main ---------------------------------------------------------------

def verdicts(res: dict) -> list[dict]:
    c = res["commits"]["commits_per_s"]
    b = res["bytes"]["appended_bytes_per_commit"]
    r = res["reads"]["reads_per_s"]
    o = res["open"]["open_s"]
    labels = res["open"]["labels"]
    open_ratio = o["large"]["writer"] / o["small"]["writer"]
    spread = res["open"]["spread_commits"]["appended_bytes_per_commit"]
    return [
        {"target": "1. one-page commits/s: imago >= SQLite and >= LMDB (random page)",
         "met": c["imago_random"] >= c["sqlite"] and c["imago_random"] >= c["lmdb"],
         "detail": f"imago {num(c['imago_random'])}/s, SQLite {num(c['sqlite'])}/s, "
                   f"LMDB {num(c['lmdb'])}/s; same page: imago {num(c['imago_same'])}/s"},
        {"target": f"2. bytes appended per one-page commit (random page of "
                   f"{res['config']['working_set']:,}) <= {BYTES_TARGET:,}",
         "met": b <= BYTES_TARGET,
         "detail": f"{num(b)} bytes = {b / PAGE:.3f} pages"},
        {"target": f"2b. the same over the whole {labels['large']} store (section 4) "
                   f"<= {BYTES_TARGET:,}",
         "met": spread <= BYTES_TARGET,
         "detail": f"{num(spread)} bytes = {spread / PAGE:.3f} pages"},
        {"target": "3. random reads/s: imago >= LMDB (first pass and warm)",
         "met": r["imago"]["first_pass"] >= r["lmdb"]["first_pass"]
                and r["imago"]["warm"] >= r["lmdb"]["warm"],
         "detail": f"first pass {ratio(r['imago']['first_pass'], r['lmdb']['first_pass'])}, "
                   f"warm {ratio(r['imago']['warm'], r['lmdb']['warm'])} of LMDB"},
        {"target": f"4. open {labels['large']} within {OPEN_RATIO_TARGET}x of open "
                   f"{labels['small']}",
         "met": open_ratio <= OPEN_RATIO_TARGET,
         "detail": f"{o['large']['writer'] * 1e3:.2f} ms vs {o['small']['writer'] * 1e3:.2f} ms "
                   f"= {open_ratio:.2f}x"},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="scale everything down (finishes in well under 30 s)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--reps", type=int, help="repetitions of each timed measurement")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.reps:
        cfg = Config(**{**asdict(cfg), "reps": args.reps})
    started = time.perf_counter()
    print(f"imago page-store benchmark ({'quick' if args.quick else 'full'}): "
          f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
          f"LMDB {'.'.join(map(str, lmdb.version()))} (py-lmdb {lmdb.__version__}), "
          f"{os.cpu_count()} CPUs, temp dir {tempfile.gettempdir()}, {load_average()}")
    res: dict = {"config": asdict(cfg), "quick": args.quick}
    res["commits"] = bench_commits(cfg)
    res["bytes"] = bench_bytes(cfg, res["commits"])
    res["reads"] = bench_reads(cfg)
    res["open"] = bench_open(cfg)
    res["verdicts"] = verdicts(res)
    report_verdicts(res, started, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
