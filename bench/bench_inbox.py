"""Inbox benchmark (issue 3): imago's object memory beside SQLite, LMDB and ZODB.

    python bench/bench_inbox.py [--quick] [--n N] [--reps R] [--json PATH]
    python bench/bench_inbox.py --million [--n N]

The workload is a mail inbox: a growable array of mails, each a mapping of
from, to, subject, date (ISO string), read (bool) and a body of 1,024 ASCII
characters, generated from a seed so that every system gets the same mails.
Every system runs the same steps with the same commit points, in one process:

1. bulk: append N mails, one durable commit every 1,000 (mails/s);
2. durable single appends: 1,000 more mails, one durable commit each (/s);
3. reopen: close, then open again (ms); the open includes learning the
   inbox's length, which any client needs first.  The same build at N/10 is
   reopened in the same rounds, to show whether open time grows with N;
4. random reads: inbox[i]["subject"] for 10,000 seeded random i, right after
   a reopen (reads/s);
5. mark one mail read: inbox[i]["read"] = True as one durable commit: time,
   and the bytes it appended to disk (imago: ``store.appended_bytes``, which
   counts the pages and the record block the commit wrote) and the bytes the
   process passed to write() (/proc/self/io wchar, every system);
6. delete the middle mail with array semantics (every later mail moves down
   by one index) as one durable commit (ms);
7. size on disk of the whole store (allocated blocks, after close).

Targets, each with a verdict line at the end: (1) bulk and (2) durable single
appends >= SQLite; (3) random reads >= LMDB; (4) mark-read appends at most
two pages plus one record block (8,704 bytes); (5) delete-middle faster than
every peer; (6) reopen constant in N: open(N) within 1.5x of open(N/10).

The systems:

* imago: ``image.open(dir)``; ``img.root["inbox"]`` is a Vector; a mail is a
  dict, stored as a Table; ``with img.transaction()`` around each bulk batch,
  autocommit for every single operation.
* SQLite: WAL, synchronous=FULL; one table ``mail(id INTEGER PRIMARY KEY,
  sender, recipient, subject, date, read, body)`` with id = array index; a
  bulk batch is one executemany in BEGIN/COMMIT.  Delete-middle deletes row k
  and renumbers every later row in the same transaction: first as one
  ``UPDATE mail SET id = id - 1 WHERE id > k ORDER BY id LIMIT -1`` (the
  fastest form; SQLite does not promise the order in which it updates rows,
  so a collision is possible in principle and would raise IntegrityError),
  and if that fails, through negative temporary ids (two UPDATEs that
  cannot collide).  The notes under the table say which one ran.
* LMDB (sync=True, metasync=True): pickled mails keyed by the big-endian
  8-byte index; reads in one read transaction, keys encoded before timing;
  mark-read unpickles, sets the flag and puts the mail back; delete-middle
  moves every later value down one key and deletes the last key, in one
  write transaction.
* ZODB 6 with FileStorage (it fsyncs every commit), two layouts, each with
  its own TransactionManager (tm.commit() is transaction.commit() for one
  database): "ZODB BTree" is an IOBTree of PersistentMapping keyed by index
  (delete-middle moves every later value down one key); "ZODB list" is a
  PersistentList of PersistentMapping (delete-middle is ``del lst[k]``, which
  rewrites the list object).  FileStorage is never packed, so its size keeps
  every old revision, as imago's append-only store keeps old commits.

Noise: the machine is shared, so everything is interleaved (batch b of every
system, then batch b+1, ...; the same for single appends in blocks, for
reopen rounds, mark-reads and deletes), and every figure is a median: of the
per-batch rates, of the per-block rates, of the rounds.  Nothing asserts a
timing: the verdicts are printed and the exit code is 0 whatever they say.

Before closing, every system is checked against a Python model of the inbox
(length, and subject and read flag of sampled mails) and imago's heap is
verified (``img.check()``); a mismatch is printed as such and makes the exit
code 1, because then the figures compare different work.

``--quick`` is a scaled-down run (N=3,000, a few seconds; the smoke test runs
it).  ``--million`` runs imago alone with N=1,000,000 (and N/10 beside it):
build rate, open time, the maximum RSS of a fresh child process that opens
the image and reads one mail (so that the build's memory does not count) and
size on disk.  Every file lives under a tempfile directory that is removed
at the end.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import lmdb  # noqa: E402  (a peer; installed by the [test] extra)
import transaction  # noqa: E402  (ZODB's; installed by the [test] extra)
import ZODB  # noqa: E402
from BTrees.IOBTree import IOBTree  # noqa: E402
from persistent.list import PersistentList  # noqa: E402
from persistent.mapping import PersistentMapping  # noqa: E402
from ZODB.FileStorage import FileStorage  # noqa: E402

from _common import (bytes_handed_to_write, heading, load_average, num,  # noqa: E402  (bench/)
                     report_verdicts)
import image  # noqa: E402
from pager import PageStore  # noqa: E402

PAGE = 4096
RECORD_BLOCK = 512                        # pager/_format.py: RECORD_BLOCK
MARK_BYTES_TARGET = 2 * PAGE + RECORD_BLOCK   # 8,704 bytes
OPEN_RATIO_TARGET = 1.5                   # "constant in N": open(N) within 1.5x of open(N/10)
BODY_CHARS = 1024
SEED = 20240603                           # every random choice is seeded


@dataclass(frozen=True)
class Config:
    n: int              # mails of the bulk build
    batch: int          # mails per bulk commit
    singles: int        # durable single appends after the bulk build
    single_block: int   # single appends per timed block (the median is over blocks)
    reads: int          # random reads per round
    reps: int           # reopen + read rounds, and mark-read commits
    delete_reps: int    # delete-middle commits


FULL = Config(n=100_000, batch=1000, singles=1000, single_block=100, reads=10_000, reps=7,
              delete_reps=5)
QUICK = Config(n=3000, batch=500, singles=100, single_block=25, reads=2000, reps=3,
               delete_reps=3)
MILLION = Config(n=1_000_000, batch=1000, singles=1000, single_block=100, reads=10_000, reps=7,
                 delete_reps=0)


# -- helpers ---------------------------------------------------------------------

def median(xs: list[float]) -> float:
    return statistics.median(xs)


def du(path: str) -> int:
    """Allocated bytes of a file or of every file under a directory."""
    if os.path.isfile(path):
        return os.stat(path).st_blocks * 512
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
    return total


WIDTH = 44


def row(label: str, *cells: str, width: int = WIDTH) -> None:
    print(f"  {label:<{width}}" + "".join(f"{c:>13}" for c in cells), flush=True)


# -- the mails -------------------------------------------------------------------

_WORDS = ("meeting agenda invoice report quarterly review budget draft final update "
          "project deadline team lunch friday monday schedule contract offer release notes "
          "server outage ticket customer feedback design proposal travel hotel flight "
          "conference slides paper reviewer minutes follow up question answer request "
          "approval urgent reminder weekly summary").split()
_NAMES = ("alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia "
          "peggy rupert sybil trent victor walter").split()
_DOMAINS = ("example.org", "mail.example.com", "lists.example.net", "corp.example")


def make_mails(start: int, count: int) -> list[dict]:
    """Mails start..start+count-1; each depends only on the seed and its number."""
    rng = random.Random(f"{SEED}:{start}:{count}")
    mails = []
    for i in range(start, start + count):
        words = rng.choices(_WORDS, k=200)
        body = " ".join(words)[:BODY_CHARS].ljust(BODY_CHARS, ".")
        mails.append({
            "from": f"{rng.choice(_NAMES)}@{rng.choice(_DOMAINS)}",
            "to": f"{rng.choice(_NAMES)}@{rng.choice(_DOMAINS)}",
            "subject": " ".join(rng.choices(_WORDS, k=rng.randrange(3, 8))) + f" #{i}",
            "date": "2024-%02d-%02dT%02d:%02d:%02dZ" % (
                1 + i // 100_000 % 12, 1 + i // 4000 % 28, i // 167 % 24, i // 3 % 60, i % 60),
            "read": False,
            "body": body,
        })
    return mails


# -- the systems -----------------------------------------------------------------
#
# Each keeps its length in self.n, learnt at open, and offers the same steps.
# A system is created empty in a directory of its own, then driven through
# append_batch / append_one / close / open / subjects / mark_read / delete.

class Imago:
    label = "imago"

    def __init__(self, tmp: str, tag: str) -> None:
        self.path = os.path.join(tmp, f"{tag}-mail.image")
        self.img = image.open(self.path)
        self.img.root["inbox"] = []
        self.inbox = self.img.root["inbox"]
        self.n = 0

    def append_batch(self, mails: list[dict]) -> None:
        with self.img.transaction():
            append = self.inbox.append
            for m in mails:
                append(m)
        self.n += len(mails)

    def append_one(self, mail: dict) -> None:
        self.inbox.append(mail)
        self.n += 1

    def close(self) -> None:
        self.inbox = None
        self.img.close()
        self.img = None

    def open(self) -> None:
        self.img = image.open(self.path)
        self.inbox = self.img.root["inbox"]
        self.n = len(self.inbox)

    def prepare_reads(self, indices: list[int]):
        return indices

    def subjects(self, indices) -> None:
        inbox = self.inbox
        for i in indices:
            inbox[i]["subject"]

    def appended(self) -> int | None:
        return self.img.store.appended_bytes

    def mark_read(self, i: int) -> None:
        self.inbox[i]["read"] = True

    def delete(self, i: int) -> None:
        del self.inbox[i]
        self.n -= 1

    def get(self, i: int) -> tuple[str, bool]:
        mail = self.inbox[i]
        return mail["subject"], mail["read"]


class Sqlite:
    label = "SQLite"
    COLUMNS = ("id", "sender", "recipient", "subject", "date", "read", "body")

    def __init__(self, tmp: str, tag: str) -> None:
        self.path = os.path.join(tmp, f"{tag}-mail.sqlite")
        self.renumber = None     # which delete-middle method ran
        self._connect()
        self.db.execute("CREATE TABLE mail (id INTEGER PRIMARY KEY, sender TEXT NOT NULL, "
                        "recipient TEXT NOT NULL, subject TEXT NOT NULL, date TEXT NOT NULL, "
                        "read INTEGER NOT NULL, body TEXT NOT NULL)")
        self.n = 0

    def _connect(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None)
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        assert mode == "wal", mode
        self.db.execute("PRAGMA synchronous=FULL")

    @staticmethod
    def _row(i: int, m: dict) -> tuple:
        return (i, m["from"], m["to"], m["subject"], m["date"], int(m["read"]), m["body"])

    def append_batch(self, mails: list[dict]) -> None:
        db, n = self.db, self.n
        db.execute("BEGIN")
        db.executemany("INSERT INTO mail VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [self._row(n + j, m) for j, m in enumerate(mails)])
        db.execute("COMMIT")
        self.n += len(mails)

    def append_one(self, mail: dict) -> None:
        self.db.execute("INSERT INTO mail VALUES (?, ?, ?, ?, ?, ?, ?)", self._row(self.n, mail))
        self.n += 1

    def close(self) -> None:
        self.db.close()
        self.db = None

    def open(self) -> None:
        self._connect()
        top = self.db.execute("SELECT max(id) FROM mail").fetchone()[0]
        self.n = 0 if top is None else top + 1

    def prepare_reads(self, indices: list[int]):
        return indices

    def subjects(self, indices) -> None:
        execute = self.db.execute
        sql = "SELECT subject FROM mail WHERE id = ?"
        for i in indices:
            execute(sql, (i,)).fetchone()[0]

    def appended(self) -> int | None:
        return None

    def mark_read(self, i: int) -> None:
        self.db.execute("UPDATE mail SET read = 1 WHERE id = ?", (i,))

    def delete(self, k: int) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM mail WHERE id = ?", (k,))
            db.execute("SAVEPOINT renumber")
            try:
                try:
                    db.execute("UPDATE mail SET id = id - 1 WHERE id > ? ORDER BY id LIMIT -1",
                               (k,))
                    method = "one UPDATE ... ORDER BY id"
                except sqlite3.OperationalError:   # built without UPDATE ... ORDER BY
                    db.execute("UPDATE mail SET id = id - 1 WHERE id > ?", (k,))
                    method = "one UPDATE"
                db.execute("RELEASE renumber")
            except sqlite3.IntegrityError:          # it met a row not yet moved
                db.execute("ROLLBACK TO renumber")
                db.execute("RELEASE renumber")
                db.execute("UPDATE mail SET id = -(id - 1) WHERE id > ?", (k,))
                db.execute("UPDATE mail SET id = -id WHERE id < 0")
                method = "negative temporary ids"
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.renumber = method
        self.n -= 1

    def get(self, i: int) -> tuple[str, bool]:
        subject, read = self.db.execute("SELECT subject, read FROM mail WHERE id = ?",
                                        (i,)).fetchone()
        return subject, bool(read)


def _key(i: int) -> bytes:
    return i.to_bytes(8, "big")


class Lmdb:
    label = "LMDB"

    def __init__(self, tmp: str, tag: str, map_size: int) -> None:
        self.path = os.path.join(tmp, f"{tag}-mail.lmdb")
        self.map_size = map_size
        self.env = self._env()
        self.n = 0

    def _env(self):
        return lmdb.open(self.path, map_size=self.map_size, sync=True, metasync=True)

    def append_batch(self, mails: list[dict]) -> None:
        n, dumps = self.n, pickle.dumps
        with self.env.begin(write=True) as txn:
            put = txn.put
            for j, m in enumerate(mails):
                put(_key(n + j), dumps(m, protocol=5), append=True)
        self.n += len(mails)

    def append_one(self, mail: dict) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(_key(self.n), pickle.dumps(mail, protocol=5), append=True)
        self.n += 1

    def close(self) -> None:
        self.env.close()
        self.env = None

    def open(self) -> None:
        self.env = self._env()
        self.n = self.env.stat()["entries"]

    def prepare_reads(self, indices: list[int]):
        return [_key(i) for i in indices]   # keys encoded before the clock starts

    def subjects(self, keys) -> None:
        loads = pickle.loads
        with self.env.begin() as txn:
            get = txn.get
            for k in keys:
                loads(get(k))["subject"]

    def appended(self) -> int | None:
        return None

    def mark_read(self, i: int) -> None:
        with self.env.begin(write=True) as txn:
            mail = pickle.loads(txn.get(_key(i)))
            mail["read"] = True
            txn.put(_key(i), pickle.dumps(mail, protocol=5))

    def delete(self, k: int) -> None:
        with self.env.begin(write=True) as txn:
            get, put = txn.get, txn.put
            for i in range(k, self.n - 1):
                put(_key(i), get(_key(i + 1)))
            txn.delete(_key(self.n - 1))
        self.n -= 1

    def get(self, i: int) -> tuple[str, bool]:
        with self.env.begin() as txn:
            mail = pickle.loads(txn.get(_key(i)))
        return mail["subject"], mail["read"]


class _Zodb:
    """ZODB with FileStorage; the subclass chooses the container."""

    def __init__(self, tmp: str, tag: str) -> None:
        self.path = os.path.join(tmp, f"{tag}-{self.slug}.fs")
        self.tm = transaction.TransactionManager()
        self._connect()
        self.root.inbox = self.container()
        self.tm.commit()
        self.inbox = self.root.inbox
        self.n = 0

    def _connect(self) -> None:
        self.db = ZODB.DB(FileStorage(self.path))
        self.conn = self.db.open(transaction_manager=self.tm)
        self.root = self.conn.root

    def close(self) -> None:
        self.tm.abort()
        self.conn.close()
        self.db.close()
        self.db = self.conn = self.root = self.inbox = None

    def open(self) -> None:
        self._connect()
        self.inbox = self.root.inbox
        self.n = self.length()

    def prepare_reads(self, indices: list[int]):
        return indices

    def subjects(self, indices) -> None:
        inbox = self.inbox
        for i in indices:
            inbox[i]["subject"]

    def appended(self) -> int | None:
        return None

    def mark_read(self, i: int) -> None:
        self.inbox[i]["read"] = True
        self.tm.commit()

    def get(self, i: int) -> tuple[str, bool]:
        mail = self.inbox[i]
        return mail["subject"], mail["read"]


class ZodbBTree(_Zodb):
    label = "ZODB BTree"
    slug = "btree"
    container = IOBTree

    def length(self) -> int:
        return 0 if not self.inbox else self.inbox.maxKey() + 1   # O(log n); len() is O(n)

    def append_batch(self, mails: list[dict]) -> None:
        inbox, n = self.inbox, self.n
        for j, m in enumerate(mails):
            inbox[n + j] = PersistentMapping(m)
        self.tm.commit()
        self.n += len(mails)

    def append_one(self, mail: dict) -> None:
        self.inbox[self.n] = PersistentMapping(mail)
        self.tm.commit()
        self.n += 1

    def delete(self, k: int) -> None:
        inbox = self.inbox
        for i in range(k, self.n - 1):
            inbox[i] = inbox[i + 1]
        del inbox[self.n - 1]
        self.tm.commit()
        self.n -= 1


class ZodbList(_Zodb):
    label = "ZODB list"
    slug = "list"
    container = PersistentList

    def length(self) -> int:
        return len(self.inbox)

    def append_batch(self, mails: list[dict]) -> None:
        append = self.inbox.append
        for m in mails:
            append(PersistentMapping(m))
        self.tm.commit()
        self.n += len(mails)

    def append_one(self, mail: dict) -> None:
        self.inbox.append(PersistentMapping(mail))
        self.tm.commit()
        self.n += 1

    def delete(self, k: int) -> None:
        del self.inbox[k]
        self.tm.commit()
        self.n -= 1


def make_systems(tmp: str, tag: str, n: int, only_imago: bool = False) -> list:
    systems = [Imago(tmp, tag)]
    if not only_imago:
        map_size = max(1 << 30, n * (16 << 10))
        systems += [Sqlite(tmp, tag), Lmdb(tmp, tag, map_size), ZodbBTree(tmp, tag),
                    ZodbList(tmp, tag)]
    return systems


# -- the steps -------------------------------------------------------------------

def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def build(systems: list, cfg: Config, n: int, model: list | None) -> dict:
    """Bulk build of n mails, then cfg.singles durable single appends; interleaved."""
    batch_rates = {s.label: [] for s in systems}
    build_s = {s.label: 0.0 for s in systems}
    for start in range(0, n, cfg.batch):
        mails = make_mails(start, min(cfg.batch, n - start))
        if model is not None:
            model.extend([m["subject"], False] for m in mails)
        for s in systems:
            gc.collect()
            dt = timed(s.append_batch, mails)
            batch_rates[s.label].append(len(mails) / dt)
            build_s[s.label] += dt
    print(f"  bulk {n:,}: " + ", ".join(f"{k} {v:.1f} s" for k, v in build_s.items()),
          flush=True)
    single_rates = {s.label: [] for s in systems}
    single_wchar = {s.label: [] for s in systems}       # bytes to write() per append
    single_appended = {s.label: [] for s in systems}    # imago: bytes appended per append
    single_s = {s.label: 0.0 for s in systems}
    for start in range(n, n + cfg.singles, cfg.single_block):
        mails = make_mails(start, min(cfg.single_block, n + cfg.singles - start))
        if model is not None:
            model.extend([m["subject"], False] for m in mails)
        for s in systems:
            gc.collect()
            a0, w0 = s.appended(), bytes_handed_to_write()
            t0 = time.perf_counter()
            for m in mails:
                s.append_one(m)
            dt = time.perf_counter() - t0
            single_rates[s.label].append(len(mails) / dt)
            single_s[s.label] += dt
            a1, w1 = s.appended(), bytes_handed_to_write()
            if w0 is not None and w1 is not None:
                single_wchar[s.label].append((w1 - w0) / len(mails))
            if a0 is not None:
                single_appended[s.label].append((a1 - a0) / len(mails))
    print(f"  {cfg.singles:,} single appends: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in single_s.items()), flush=True)
    return {"bulk_median_per_s": {k: median(v) for k, v in batch_rates.items()},
            "bulk_overall_per_s": {k: n / v for k, v in build_s.items()},
            "singles_median_per_s": {k: median(v) for k, v in single_rates.items()},
            "singles_wchar": {k: (median(v) if v else None) for k, v in single_wchar.items()},
            "singles_appended": {k: (median(v) if v else None)
                                 for k, v in single_appended.items()},
            "bulk_batch_rates": batch_rates, "single_block_rates": single_rates}


def reopen_and_read(big: list, small: list | None, cfg: Config) -> dict:
    """Rounds of: close and reopen each system at N, read cfg.reads random
    subjects; close and reopen each system at N/10."""
    rng = random.Random(SEED + 1)
    opens = {s.label: [] for s in big}
    closes = {s.label: [] for s in big}
    opens_small = {s.label: [] for s in (small or [])}
    reads = {s.label: [] for s in big}
    for _ in range(cfg.reps):
        indices = [rng.randrange(big[0].n) for _ in range(cfg.reads)]
        for i, s in enumerate(big):
            gc.collect()
            closes[s.label].append(timed(s.close))
            gc.collect()
            opens[s.label].append(timed(s.open))
            prepared = s.prepare_reads(indices)
            gc.collect()
            reads[s.label].append(cfg.reads / timed(s.subjects, prepared))
            if small:
                t = small[i]
                t.close()
                gc.collect()
                opens_small[t.label].append(timed(t.open))
    return {"open_ms": {k: 1e3 * median(v) for k, v in opens.items()},
            "close_ms": {k: 1e3 * median(v) for k, v in closes.items()},
            "first_close_ms": {k: 1e3 * v[0] for k, v in closes.items()},
            "open_small_ms": {k: 1e3 * median(v) for k, v in opens_small.items()},
            "reads_per_s": {k: median(v) for k, v in reads.items()},
            "runs": {"open_s": opens, "close_s": closes, "open_small_s": opens_small,
                     "reads_per_s": reads}}


def mark_reads(systems: list, cfg: Config, model: list) -> dict:
    rng = random.Random(SEED + 2)
    targets = rng.sample(range(systems[0].n), cfg.reps)
    times = {s.label: [] for s in systems}
    wchar = {s.label: [] for s in systems}
    appended = {s.label: [] for s in systems}
    for i in targets:
        model[i][1] = True
        for s in systems:
            gc.collect()
            a0, w0 = s.appended(), bytes_handed_to_write()
            dt = timed(s.mark_read, i)
            a1, w1 = s.appended(), bytes_handed_to_write()
            times[s.label].append(dt)
            if w0 is not None and w1 is not None:
                wchar[s.label].append(w1 - w0)
            if a0 is not None:
                appended[s.label].append(a1 - a0)
    return {"ms": {k: 1e3 * median(v) for k, v in times.items()},
            "wchar": {k: (median(v) if v else None) for k, v in wchar.items()},
            "appended": {k: (median(v) if v else None) for k, v in appended.items()},
            "appended_first": {k: (v[0] if v else None) for k, v in appended.items()},
            "appended_max": {k: (max(v) if v else None) for k, v in appended.items()},
            "indices": targets,
            "runs": {"s": times, "wchar": wchar, "appended": appended}}


def delete_middles(systems: list, cfg: Config, model: list) -> dict:
    times = {s.label: [] for s in systems}
    for _ in range(cfg.delete_reps):
        k = len(model) // 2
        del model[k]
        for s in systems:
            assert s.n == len(model) + 1, (s.label, s.n, len(model))
            gc.collect()
            times[s.label].append(timed(s.delete, k))
    return {"ms": {k: 1e3 * median(v) for k, v in times.items()}, "runs_s": times}


def verify(systems: list, model: list) -> list[str]:
    """Each system against the model: length, and subject and flag of sampled mails."""
    problems = []
    rng = random.Random(SEED + 3)
    sample = sorted(set(rng.sample(range(len(model)), min(200, len(model)))
                        + [0, len(model) // 2 - 1, len(model) // 2, len(model) - 1]))
    flagged = [i for i, (_, read) in enumerate(model) if read]
    for s in systems:
        if s.n != len(model):
            problems.append(f"{s.label}: length {s.n}, expected {len(model)}")
            continue
        for i in sorted(set(sample + flagged)):
            got, want = s.get(i), tuple(model[i])
            if got != want:
                problems.append(f"{s.label}: mail {i} is {got!r}, expected {want!r}")
                break
    return problems


# -- the full and quick runs -----------------------------------------------------

def advantage(imago: float | None, peer: float | None, higher_is_better: bool) -> str:
    """How many times better imago is than the peer (> 1.00x: imago better)."""
    if not imago or not peer:
        return "n/a"
    return f"{(imago / peer if higher_is_better else peer / imago):.2f}x"


def run_peers(cfg: Config) -> dict:
    small_n = max(1, cfg.n // 10)
    res: dict = {}
    tmp = tempfile.mkdtemp(prefix="imago-bench-inbox-")
    try:
        big = make_systems(tmp, "n", cfg.n)
        small = make_systems(tmp, "n10", small_n)
        labels = [s.label for s in big]
        model: list = []

        heading(f"building: {cfg.n:,} mails in commits of {cfg.batch:,}, then "
                f"{cfg.singles:,} single durable appends (and the same at N/10 = {small_n:,})")
        t0 = time.perf_counter()
        res["build"] = build(big, cfg, cfg.n, model)
        res["build_small"] = build(small, cfg, small_n, None)
        print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
        res["reopen"] = reopen_and_read(big, small, cfg)
        for s in small:
            s.close()
        res["mark"] = mark_reads(big, cfg, model)
        res["delete"] = delete_middles(big, cfg, model)
        t0 = time.perf_counter()
        problems = verify(big, model)
        check = big[0].img.check()
        res["check_s"] = time.perf_counter() - t0
        res["imago_check"] = check
        res["imago_stats"] = big[0].img.stats()
        res["problems"] = problems
        res["sqlite_renumber"] = next(s.renumber for s in big if isinstance(s, Sqlite))
        for s in big:
            s.close()
        res["disk_bytes"] = {s.label: du(s.path) for s in big}
        res["disk_bytes_small"] = {s.label: du(s.path) for s in small}
        res["tail"] = {"n": imago_tail(big[0].path), "n10": imago_tail(small[0].path)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    b, ro, mk, de = res["build"], res["reopen"], res["mark"], res["delete"]
    disk = res["disk_bytes"]
    heading(f"Inbox workload, N = {cfg.n:,} mails of ~{BODY_CHARS + 150:,} bytes "
            f"(medians; {cfg.reps} reopen/read rounds and mark-reads, "
            f"{cfg.delete_reps} deletes)")
    row("measure", *labels)
    rows = [
        # (label, values, digits, higher is better)
        (f"bulk append, per {cfg.batch:,}-mail commit (/s)", b["bulk_median_per_s"], 0, True),
        ("bulk append, whole build (/s)", b["bulk_overall_per_s"], 0, True),
        ("durable single appends (/s)", b["singles_median_per_s"], 0, True),
        ("single append: bytes to write()", b["singles_wchar"], 0, False),
        (f"reopen at N = {cfg.n:,} (ms)", ro["open_ms"], 2, False),
        (f"reopen at N/10 = {small_n:,} (ms)", ro["open_small_ms"], 2, False),
        ("close (ms)", ro["close_ms"], 2, False),
        ("random reads of inbox[i]['subject'] (/s)", ro["reads_per_s"], 0, True),
        ("mark read, one durable commit (ms)", mk["ms"], 2, False),
        ("mark read: bytes to write()", mk["wchar"], 0, False),
        ("delete middle, one durable commit (ms)", de["ms"], 2, False),
        ("size on disk (MiB)", {k: v / (1 << 20) for k, v in disk.items()}, 1, False),
    ]
    for label, values, digits, _ in rows:
        row(label, *(num(values.get(k), digits) for k in labels))
    row("open N / open N/10",
        *(f"{ro['open_ms'][k] / ro['open_small_ms'][k]:.2f}x" for k in labels))
    print(f"  imago, single append: {num(b['singles_appended']['imago'])} bytes appended to "
          f"the store (median of blocks) = {b['singles_appended']['imago'] / PAGE:.2f} pages")
    tail = res["tail"]
    print(f"  imago, reopen replays the commits since the last checkpoint: "
          f"{num(tail['n']['since_checkpoint'])} at N, {num(tail['n10']['since_checkpoint'])} "
          f"at N/10 ({tail['n']['segments']} and {tail['n10']['segments']} segment files)")
    a = mk["appended"]["imago"]
    print(f"  imago, mark read: {num(a)} bytes appended to the store (median; first "
          f"{num(mk['appended_first']['imago'])}, max {num(mk['appended_max']['imago'])}) "
          f"= {a / PAGE:.2f} pages")

    heading("imago's advantage over each peer (> 1.00x: imago is better; rates imago/peer, "
            "times and bytes peer/imago)")
    peers = labels[1:]
    row("measure", *peers)
    for label, values, _, higher in rows:
        if label.startswith(("close", "reopen at N/10")):
            continue
        row(label, *(advantage(values.get("imago"), values.get(k), higher) for k in peers))

    print()
    print(f"  notes: SQLite renumbered with {res['sqlite_renumber']}; LMDB reads in one read "
          f"transaction; ZODB: FileStorage, unpacked,\n  default cache; 'bytes to write()' is "
          f"/proc/self/io wchar around the commit; 'close' includes SQLite's WAL\n  checkpoint "
          f"and ZODB's index write (first close after the build: "
          + ", ".join(f"{k} {ro['first_close_ms'][k]:,.0f} ms" for k in labels) + ").")
    ck = res["imago_check"]
    print(f"  imago heap check: {ck.get('objects', '?'):,} objects, {ck.get('tables', '?'):,} "
          f"tables, {ck.get('heap_bytes', 0) / (1 << 20):,.1f} MiB heap, free "
          f"{ck.get('free_bytes', 0) / (1 << 20):,.1f} MiB")
    if problems:
        print("  CONSISTENCY CHECK FAILED:")
        for p in problems:
            print(f"    {p}")
    else:
        print(f"  consistency: every system holds the model's {len(model):,} mails "
              f"(length, sampled subjects and read flags)")
    res["rows"] = {label: values for label, values, _, _ in rows}
    res["labels"] = labels
    return res


def peer_verdicts(res: dict) -> list[dict]:
    b, ro, mk, de = res["build"], res["reopen"], res["mark"], res["delete"]
    peers = [k for k in res["labels"] if k != "imago"]
    bulk, single = b["bulk_median_per_s"], b["singles_median_per_s"]
    reads, dele = ro["reads_per_s"], de["ms"]
    mark = mk["appended"]["imago"]
    ratio_open = ro["open_ms"]["imago"] / ro["open_small_ms"]["imago"]
    fastest_peer = min(peers, key=lambda k: dele[k])
    return [
        {"target": "1. bulk append: imago >= SQLite",
         "met": bulk["imago"] >= bulk["SQLite"],
         "detail": f"{num(bulk['imago'])}/s vs {num(bulk['SQLite'])}/s = "
                   f"{bulk['imago'] / bulk['SQLite']:.2f}x"},
        {"target": "2. durable single appends: imago >= SQLite",
         "met": single["imago"] >= single["SQLite"],
         "detail": f"{num(single['imago'])}/s vs {num(single['SQLite'])}/s = "
                   f"{single['imago'] / single['SQLite']:.2f}x"},
        {"target": "3. random reads: imago >= LMDB",
         "met": reads["imago"] >= reads["LMDB"],
         "detail": f"{num(reads['imago'])}/s vs {num(reads['LMDB'])}/s = "
                   f"{reads['imago'] / reads['LMDB']:.2f}x"},
        {"target": f"4. mark read appends <= 2 pages + 1 record block ({MARK_BYTES_TARGET:,} B)",
         "met": mark <= MARK_BYTES_TARGET,
         "detail": f"{num(mark)} bytes (median of {len(mk['indices'])}; max "
                   f"{num(mk['appended_max']['imago'])})"},
        {"target": "5. delete middle: imago faster than every peer",
         "met": all(dele["imago"] < dele[k] for k in peers),
         "detail": f"{dele['imago']:.2f} ms; fastest peer {fastest_peer} "
                   f"{dele[fastest_peer]:.2f} ms = {dele[fastest_peer] / dele['imago']:.0f}x"},
        {"target": f"6. reopen constant in N: open(N) within {OPEN_RATIO_TARGET}x of open(N/10)",
         "met": ratio_open <= OPEN_RATIO_TARGET,
         "detail": f"{ro['open_ms']['imago']:.2f} ms vs {ro['open_small_ms']['imago']:.2f} ms "
                   f"= {ratio_open:.2f}x"},
    ]


# -- the million run: imago alone --------------------------------------------------

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, ROOT)


def status():
    found = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in ("VmHWM", "RssAnon", "RssFile"):
                    found[key] = int(line.split()[1])
    except OSError:
        pass
    return found


t0 = time.perf_counter()
import image
t1 = time.perf_counter()
out = {"import_s": t1 - t0}
if PATH:
    img = image.open(PATH)
    inbox = img.root["inbox"]
    n = len(inbox)
    t2 = time.perf_counter()
    mail = dict(inbox[n // 2])
    assert len(mail["body"]) == BODY, mail
    out.update(open_s=t2 - t1, read_s=time.perf_counter() - t2, n=n)
    out.update(status())   # RssAnon and RssFile while the image is open
    img.close()
else:
    out.update(status())
out["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out["VmHWM"] = status().get("VmHWM")
if out["VmHWM"] is None:
    del out["VmHWM"]
print(json.dumps(out))
"""


def imago_tail(path: str) -> dict:
    """What an imago open replays: the commits since the newest checkpoint (a
    private counter of the pager, "n/a" if it ever moves) and the segment files."""
    store = PageStore.open(path, readonly=True)
    try:
        since = getattr(store, "_records_since_ckpt", None)
    finally:
        store.close()
    segments = sum(1 for name in os.listdir(path) if name.startswith("seg-"))
    return {"since_checkpoint": since if isinstance(since, int) else None,
            "segments": segments}


def child(path: str | None) -> dict:
    """Runs CHILD in a new Python process; its peak RSS is VmHWM where /proc has it.

    ru_maxrss cannot be used as it is: Linux carries the parent's peak across
    fork and execve into the child's ru_maxrss, so a child of this (large)
    process reports at least the parent's RSS.  VmHWM belongs to the child's
    own address space, which exec made new; elsewhere ru_maxrss is all there is."""
    code = (CHILD.replace("ROOT", repr(ROOT)).replace("PATH", repr(path))
            .replace("BODY", str(BODY_CHARS)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, check=False)
    if proc.returncode:
        raise SystemExit(f"bench_inbox: the child process failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def run_million(cfg: Config) -> dict:
    small_n = max(1, cfg.n // 10)
    tmp = tempfile.mkdtemp(prefix="imago-bench-inbox-million-")
    res: dict = {}
    try:
        need = (cfg.n + small_n) * 2500 + (1 << 30)
        free = shutil.disk_usage(tmp).free
        if free < need:
            raise SystemExit(f"bench_inbox: {tmp} has {free >> 20} MiB free; the million run "
                             f"needs about {need >> 20} MiB")
        heading(f"building imago alone: {cfg.n:,} mails in commits of {cfg.batch:,}, then "
                f"{cfg.singles:,} single durable appends (and the same at N/10 = {small_n:,})")
        big, small = Imago(tmp, "n"), Imago(tmp, "n10")
        res["build"] = build([big], cfg, cfg.n, None)
        res["build_small"] = build([small], cfg, small_n, None)
        res["stats"] = big.img.stats()
        opens = {"n": [], "n10": []}
        for _ in range(cfg.reps):
            for key, s in (("n", big), ("n10", small)):
                s.close()
                gc.collect()
                opens[key].append(timed(s.open))
        big.close()
        small.close()
        res["open_ms"] = {k: 1e3 * median(v) for k, v in opens.items()}
        res["child"] = {"n": [child(big.path) for _ in range(3)],
                        "n10": [child(small.path) for _ in range(3)],
                        "baseline": [child(None) for _ in range(3)]}
        res["disk_bytes"] = {"n": du(big.path), "n10": du(small.path)}
        res["tail"] = {"n": imago_tail(big.path), "n10": imago_tail(small.path)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ch = res["child"]

    def cmed(key: str, field: str) -> float:
        return median([c[field] for c in ch[key]])

    rss = "VmHWM" if all("VmHWM" in c for cs in ch.values() for c in cs) else "maxrss_kib"

    heading(f"imago alone, N = {cfg.n:,} and N/10 = {small_n:,} (medians)")
    row("measure", f"N={cfg.n:,}", f"N/10={small_n:,}", "N / N/10")
    bulk = res["build"]["bulk_median_per_s"]["imago"]
    bulk10 = res["build_small"]["bulk_median_per_s"]["imago"]
    row(f"bulk append, per {cfg.batch:,}-mail commit (/s)", num(bulk), num(bulk10),
        f"{bulk / bulk10:.2f}x")
    row("bulk append, whole build (/s)", num(res["build"]["bulk_overall_per_s"]["imago"]),
        num(res["build_small"]["bulk_overall_per_s"]["imago"]), "")
    row("durable single appends (/s)", num(res["build"]["singles_median_per_s"]["imago"]),
        num(res["build_small"]["singles_median_per_s"]["imago"]), "")
    o = res["open_ms"]
    row("open, in process (ms)", num(o["n"], 2), num(o["n10"], 2), f"{o['n'] / o['n10']:.2f}x")
    row("open, fresh child process (ms)", num(1e3 * cmed("n", "open_s"), 2),
        num(1e3 * cmed("n10", "open_s"), 2),
        f"{cmed('n', 'open_s') / cmed('n10', 'open_s'):.2f}x")
    base = cmed("baseline", rss)
    row("max RSS, child: open + read one (MiB)", num(cmed("n", rss) / 1024, 1),
        num(cmed("n10", rss) / 1024, 1), "")
    row("  of which above 'import image' (MiB)", num((cmed("n", rss) - base) / 1024, 1),
        num((cmed("n10", rss) - base) / 1024, 1), "")
    if rss == "VmHWM":
        row("RSS with the image open: anonymous (MiB)", num(cmed("n", "RssAnon") / 1024, 1),
            num(cmed("n10", "RssAnon") / 1024, 1), "")
        row("RSS with the image open: file pages (MiB)", num(cmed("n", "RssFile") / 1024, 1),
            num(cmed("n10", "RssFile") / 1024, 1), "")
    tail = res["tail"]
    row("imago: commits since the last checkpoint", num(tail["n"]["since_checkpoint"]),
        num(tail["n10"]["since_checkpoint"]), "")
    row("imago: segment files", num(tail["n"]["segments"]), num(tail["n10"]["segments"]), "")
    d = res["disk_bytes"]
    row("size on disk (MiB)", num(d["n"] / (1 << 20), 1), num(d["n10"] / (1 << 20), 1),
        f"{d['n'] / d['n10']:.2f}x")
    print(f"  (child: a new Python process runs `import image` (max RSS {base / 1024:.1f} MiB "
          f"alone), image.open, len(inbox)\n   and dict(inbox[n // 2]); max RSS is "
          f"{'VmHWM' if rss == 'VmHWM' else 'ru_maxrss'}; mapped file pages are the segments' "
          f"page cache, which the open\n   touched verifying the commits since the last "
          f"checkpoint; open time follows that count, not N; heap "
          f"{res['stats']['heap_bytes'] / (1 << 20):,.0f} MiB in "
          f"{res['stats']['objects']:,} objects)")
    ratio_open = o["n"] / o["n10"]
    res["verdicts"] = [
        {"target": f"6. reopen constant in N: open(N) within {OPEN_RATIO_TARGET}x of open(N/10)",
         "met": ratio_open <= OPEN_RATIO_TARGET,
         "detail": f"{o['n']:.2f} ms vs {o['n10']:.2f} ms = {ratio_open:.2f}x"}]
    return res


# -- main --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="N=3,000: a few seconds")
    mode.add_argument("--million", action="store_true",
                      help="imago alone, N=1,000,000: open time, RSS, size on disk")
    parser.add_argument("--n", type=int, help="mails of the bulk build (default: 100,000)")
    parser.add_argument("--reps", type=int, help="reopen/read rounds and mark-reads")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else MILLION if args.million else FULL
    if args.n:
        if args.n < 10:
            parser.error("--n must be at least 10")
        cfg = replace(cfg, n=args.n)
    if args.reps:
        cfg = replace(cfg, reps=args.reps)
    name = "quick" if args.quick else "million" if args.million else "full"
    started = time.perf_counter()
    print(f"imago inbox benchmark ({name}, N={cfg.n:,}): Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, LMDB {'.'.join(map(str, lmdb.version()))}, "
          f"ZODB {_version('ZODB')}, {os.cpu_count()} CPUs, temp dir {tempfile.gettempdir()}, "
          f"{load_average()}", flush=True)
    res: dict = {"config": asdict(cfg), "mode": name}
    if args.million:
        res.update(run_million(cfg))
    else:
        res.update(run_peers(cfg))
        res["verdicts"] = peer_verdicts(res)
    report_verdicts(res, started, args.json)
    return 1 if res.get("problems") else 0


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:   # noqa: BLE001 - only for the header line
        return "?"


if __name__ == "__main__":
    sys.exit(main())
