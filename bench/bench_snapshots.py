"""Snapshot benchmark (issue 5): making and listing snapshots, and opening an
old version, on a small and on a large image, in one run.

    python bench/bench_snapshots.py [--quick] [--reps R] [--json PATH]

Two images are built side by side: a SMALL one (an empty object memory) and
a LARGE one (1 GiB of pages, 32 MiB with --quick).  The large one's bulk is
written through the page store in 32 MiB commits, at page numbers far above
the heap, each commit carrying the object memory's meta words, so the image
stays a valid image; then both images get the same tail of small commits
(10,000, or 500 with --quick: ``img.root["n"] = i``, one durable commit each)
and a snapshot log of 10,000 entries naming those commits (written in bulk
with the log's own line format: the setup, not what is timed; with --quick
most ids lie past the head, which a listing never looks at).

1. Making a snapshot: ``img.snapshot(label)`` (an fsynced append to the
   snapshot log) on each image, interleaved; median ms.
2. Listing 10,000 snapshots: ``img.snapshots()`` (read and check every log
   line, fold statuses); median ms.
3. Opening a version 10,000 commits old: ``store.view(head - 10,000)`` then
   close (the pager: walk back the checkpoint chain, replay at most one
   checkpoint's worth of records), and ``img.at(old)`` reading one root
   value (the object memory over that view); beside them, as the reference
   in the same run, opening the head read-only (``PageStore.open``); median ms.
4. History of one global over 10,000 journal entries (500 with --quick):
   ``snapshots.history(img, "target")`` on a third image whose forms mostly
   change other data (hash-table-set! of new keys, vector-set! of another
   vector), set! another global every 100th form and change the target
   every 1,000th (every 100th with --quick).  Beside it, in the same run,
   the reference (a view per journaled version, history_reference) and the
   fast way over the same first 1,000 entries (200 with --quick), and the
   number of versions each opened.  The fast way compares the watched bytes
   of the pages each commit wrote and opens a version only when they changed
   (snapshots/_versions.py, HISTORY, FAST).

Targets (verdicts at the end): (1) a snapshot under SNAPSHOT_MS_TARGET ms and
(2) a listing under LIST_MS_TARGET ms on both images; (3) both within
SIZE_RATIO_TARGET x between the large and the small image (independent of
image size); (4) the old version of the 1 GiB image opens in under a second;
(5) the history of one global over all the journal's entries in under
HISTORY_S_TARGET seconds (issue 5: 10,000 entries "in a few seconds").
The ratio large/small is printed for every row.  Nothing asserts a timing:
the exit code is 0 whatever the verdicts say.  Everything lives under a
tempfile directory that is removed at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from _common import heading, num, report_verdicts

import image
import snapshots  # noqa: F401  (provides img.snapshots / img.snapshot)
from pager import PageStore
from snapshots._log import LOG_NAME, _line

SNAPSHOT_MS_TARGET = 10.0    # "milliseconds": one fsynced append, a few ms on this disk
LIST_MS_TARGET = 100.0       # "milliseconds", not seconds, for 10,000 entries
SIZE_RATIO_TARGET = 1.5      # "independent of image size": large within 1.5x of small
VIEW_S_TARGET = 1.0          # "under a second"
HISTORY_S_TARGET = 5.0       # "a few seconds" for 10,000 journal entries
BULK_BASE_PAGE = 1 << 24     # bulk pages live far above any heap of this benchmark
BULK_COMMIT_BYTES = 32 << 20  # half a segment: one commit never spans two
LISTED = 10_000


@dataclass(frozen=True)
class Config:
    large_bytes: int
    old_commits: int
    reps: int
    history_entries: int = 10_000
    reference_entries: int = 1_000
    target_every: int = 1_000


FULL = Config(large_bytes=1 << 30, old_commits=10_000, reps=15)
QUICK = Config(large_bytes=32 << 20, old_commits=500, reps=7, history_entries=500,
               reference_entries=200, target_every=100)
OTHER_GLOBAL_EVERY = 100   # a set! of another global: it writes the root table's entries


# -- building ----------------------------------------------------------------------------


def bulk_fill(path: str, nbytes: int) -> None:
    """nbytes of pages through the page store, in big commits carrying the meta."""
    block = os.urandom(1 << 20)
    with PageStore.open(path) as store:
        meta = store.head_meta
        addr = BULK_BASE_PAGE * store.page_size
        for start in range(0, nbytes, BULK_COMMIT_BYTES):
            size = min(BULK_COMMIT_BYTES, nbytes - start)
            for off in range(0, size, len(block)):
                store.write_bytes(addr + start + off, block[:size - off])
            store.commit(meta)


def small_commits(path: str, count: int) -> tuple[int, int]:
    """count one-value commits; returns (the commit before them, the head)."""
    with image.open(path) as img:
        old = img.head
        for i in range(count):
            img.root["n"] = i
        return old, img.head


def write_log(path: str, first: int) -> None:
    """LISTED snapshot entries naming commits first, first + 1, ..., in bulk.
    (With --quick the later ids name no commit yet: a listing never opens them.)"""
    lines = [_line({"op": "snapshot", "id": first + i, "time": time.time(),
                    "kind": "auto", "label": None, "branch": "main"}) for i in range(LISTED)]
    with open(os.path.join(path, LOG_NAME), "ab") as f:
        f.write(b"".join(lines))
        f.flush()
        os.fsync(f.fileno())


def build(base: str, name: str, bulk: int, cfg: Config) -> tuple[str, int, float]:
    """An image (bulk bytes of pages, then the small commits and the log);
    returns (path, the old commit, seconds taken)."""
    started = time.perf_counter()
    path = os.path.join(base, f"{name}.image")
    image.open(path).close()
    if bulk:
        bulk_fill(path, bulk)
    old, _ = small_commits(path, cfg.old_commits)
    write_log(path, old)
    return path, old, time.perf_counter() - started


# -- measuring -------------------------------------------------------------------------------


def timed_ms(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def interleaved(cases: dict, reps: int) -> dict[str, float]:
    """Median ms of each case, the cases run in turn rep by rep."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            samples[name].append(timed_ms(fn))
    return {name: statistics.median(values) for name, values in samples.items()}


def open_old(path: str, old: int) -> None:
    with PageStore.open(path, readonly=True) as store:
        store.view(old).close()


def measure(images: dict[str, tuple[str, int]], reps: int) -> dict:
    opened = {name: image.open(path) for name, (path, _) in images.items()}
    try:
        listing = interleaved({name: img.snapshots for name, img in opened.items()}, reps)
        counts = {name: len(img.snapshots()) for name, img in opened.items()}
        taking = interleaved({name: (lambda img=img: img.snapshot("bench"))
                              for name, img in opened.items()}, reps)
        stores = {name: PageStore.open(path, readonly=True) for name, (path, _) in images.items()}
        try:
            views = interleaved({name: (lambda s=stores[name], o=old: s.view(o).close())
                                 for name, (_, old) in images.items()}, reps)
        finally:
            for store in stores.values():
                store.close()
        at = interleaved({name: (lambda img=opened[name], o=old: _read_at(img, o))
                          for name, (_, old) in images.items()}, reps)
        cold = interleaved({name: (lambda p=path, o=old: open_old(p, o))
                            for name, (path, old) in images.items()}, reps)
        heads = interleaved({name: (lambda p=path: PageStore.open(p, readonly=True).close())
                             for name, (path, _) in images.items()}, reps)
    finally:
        for img in opened.values():
            img.close()
    return {"snapshot_ms": taking, "list_ms": listing, "listed": counts, "view_ms": views,
            "at_ms": at, "open_and_view_ms": cold, "open_head_ms": heads}


def _read_at(img: image.Image, old: int) -> None:
    with img.at(old) as view:
        view.root.get("n")


def history_form(i: int, cfg: Config) -> str:
    """The i-th form of the history workload (see 4. in the module docstring)."""
    if i % cfg.target_every == cfg.target_every - 1:
        return f"(vector-set! target 0 {i})"
    if i % OTHER_GLOBAL_EVERY == OTHER_GLOBAL_EVERY // 2:
        return f"(set! counter {i})"
    if i % 2:
        return f'(hash-table-set! notes "k{i}" "note {i}: some text of a typical length")'
    return f"(vector-set! scratch {i % 64} {i})"


def build_history(base: str, cfg: Config) -> tuple[str, int, float]:
    """The history image; returns (path, the commit of the reference_entries-th form, seconds)."""
    import vm
    started = time.perf_counter()
    path = os.path.join(base, "history.image")
    with image.open(path) as img:
        interp = vm.Interpreter(img)
        interp.eval("(define target (vector 0 0 0)) (define notes (make-hash-table)) "
                    "(define counter 0) (define scratch (make-vector 64 0))")
        middle = img.head
        for i in range(cfg.history_entries):
            interp.eval(history_form(i, cfg))
            if i == cfg.reference_entries - 1:
                middle = img.head
    return path, middle, time.perf_counter() - started


def measure_history(path: str, middle: int) -> dict:
    """History of "target": the fast way over the whole line, and both ways up to middle."""
    from snapshots import _versions
    out: dict = {}
    with image.open(path, readonly=True) as img:
        for key, scan_class, tip in (("fast_all", _versions._WatchScan, None),
                                     ("fast_part", _versions._WatchScan, middle),
                                     ("reference_part", _versions._EveryVersionScan, middle)):
            scans: list = []

            def kept(*args, scan_class=scan_class, scans=scans):   # keeps the scan: its count
                scans.append(scan_class(*args))
                return scans[-1]

            started = time.perf_counter()
            versions = _versions._history(img, "target", tip, kept)
            out[key] = {"s": time.perf_counter() - started, "opened": scans[0].opened,
                        "versions": len(versions)}
        out["entries"] = len(snapshots.journal(img))
    return out


# -- reporting --------------------------------------------------------------------------------


def row(label: str, small: float, large: float) -> None:
    print(f"  {label:<52} {num(small, 2):>10} {num(large, 2):>10} {large / small:>7.2f}x")


def report(res: dict, cfg: Config) -> None:
    size = f"{res['large_mib']:,.0f} MiB"
    heading(f"1. Making a snapshot (img.snapshot), median of {cfg.reps}")
    print(f"  {'':<52} {'small':>10} {size:>10} {'ratio':>8}")
    row("make a snapshot (ms)", res["snapshot_ms"]["small"], res["snapshot_ms"]["large"])
    heading(f"2. Listing {LISTED:,} snapshots (img.snapshots)")
    row(f"list {res['listed']['large']:,} snapshots (ms)", res["list_ms"]["small"],
        res["list_ms"]["large"])
    heading(f"3. Opening a version {cfg.old_commits:,} commits old")
    row("store.view(old) + close (ms)", res["view_ms"]["small"], res["view_ms"]["large"])
    row("img.at(old), read one root value (ms)", res["at_ms"]["small"], res["at_ms"]["large"])
    row("open read-only + view(old) + close (ms)", res["open_and_view_ms"]["small"],
        res["open_and_view_ms"]["large"])
    row("reference: open the head read-only + close (ms)", res["open_head_ms"]["small"],
        res["open_head_ms"]["large"])
    print(f"\n  (built: small in {res['build_s']['small']:.1f} s, {size} in "
          f"{res['build_s']['large']:.1f} s)")
    hist = res["history"]
    heading(f"4. History of one global over {hist['entries']:,} journal entries")
    print(f"  {'':<52} {'seconds':>10} {'opened':>10} {'changes':>8}")
    for key, label in (("fast_all", f"history, all {hist['entries']:,} entries"),
                       ("fast_part", f"history, first {cfg.reference_entries:,} entries"),
                       ("reference_part", f"reference, first {cfg.reference_entries:,} entries")):
        f = hist[key]
        print(f"  {label:<52} {num(f['s'], 2):>10} {f['opened']:>10,} {f['versions']:>8}")
    part = hist["reference_part"]["s"] / hist["fast_part"]["s"]
    print(f"\n  reference / fast over the same entries: {part:.2f}x  (history image built in "
          f"{res['build_s']['history']:.1f} s)")


def verdicts(res: dict) -> list[dict]:
    snap, listing = res["snapshot_ms"], res["list_ms"]
    view_s = res["open_and_view_ms"]["large"] / 1e3
    size = f"{res['large_mib']:,.0f} MiB"
    hist = res["history"]
    return [
        {"target": f"1. a snapshot under {SNAPSHOT_MS_TARGET:.0f} ms",
         "met": max(snap.values()) < SNAPSHOT_MS_TARGET,
         "detail": f"{snap['small']:.2f} ms small, {snap['large']:.2f} ms {size}"},
        {"target": f"2. listing {LISTED:,} snapshots under {LIST_MS_TARGET:.0f} ms",
         "met": max(listing.values()) < LIST_MS_TARGET,
         "detail": f"{listing['small']:.1f} ms small, {listing['large']:.1f} ms {size}"},
        {"target": f"3. independent of image size: large within {SIZE_RATIO_TARGET}x of small",
         "met": all(v["large"] <= SIZE_RATIO_TARGET * v["small"] for v in (snap, listing)),
         "detail": f"snapshot {snap['large'] / snap['small']:.2f}x, "
                   f"listing {listing['large'] / listing['small']:.2f}x"},
        {"target": f"4. a version {res['old_commits']:,} commits old on {size} opens in under "
                   f"{VIEW_S_TARGET:.0f} s",
         "met": view_s < VIEW_S_TARGET,
         "detail": f"{view_s * 1e3:.1f} ms (open read-only + view + close)"},
        {"target": f"5. the history of one global over {hist['entries']:,} journal entries in "
                   f"under {HISTORY_S_TARGET:.0f} s",
         "met": hist["fast_all"]["s"] < HISTORY_S_TARGET,
         "detail": f"{hist['fast_all']['s']:.2f} s, {hist['fast_all']['opened']:,} versions opened"},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB and 500 commits")
    parser.add_argument("--reps", type=int, help="repetitions of each timed measurement")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.reps:
        cfg = replace(cfg, reps=args.reps)
    started = time.perf_counter()
    base = tempfile.mkdtemp(prefix="imago-bench-snapshots-")
    try:
        print(f"building a small image and a {cfg.large_bytes >> 20:,} MiB one, each with "
              f"{cfg.old_commits:,} small commits and {LISTED:,} snapshots ...", flush=True)
        small, small_old, small_s = build(base, "small", 0, cfg)
        large, large_old, large_s = build(base, "large", cfg.large_bytes, cfg)
        res = measure({"small": (small, small_old), "large": (large, large_old)}, cfg.reps)
        print(f"building a history image of {cfg.history_entries:,} journal entries ...", flush=True)
        hist_path, middle, hist_s = build_history(base, cfg)
        res["history"] = measure_history(hist_path, middle)
        res.update(build_s={"small": small_s, "large": large_s, "history": hist_s},
                   old_commits=cfg.old_commits, large_mib=cfg.large_bytes / (1 << 20))
        report(res, cfg)
        res["verdicts"] = verdicts(res)
        report_verdicts(res, started, args.json)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
