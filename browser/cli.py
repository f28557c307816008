"""The ``imago`` command.

    imago                          boot the default image (created on first use) into the REPL
    imago boot IMAGE               boot IMAGE into the REPL (created if missing)
    imago eval IMAGE 'FORMS'       evaluate, print the value of each form, exit (1 on error)
    imago load IMAGE FILE.scm      evaluate a file, one transaction per top-level form
    imago create IMAGE [--page-size N]
    imago info IMAGE               head, page size, size on disk, objects, root names
    imago check IMAGE              verify every record, page and page-table node, then the heap
    imago commits IMAGE [--json]   the commit history

Every error reaches the user as one line, ``imago: error: ...``, with exit
status 1; never a traceback.  The default image lives in $IMAGO_HOME, else in
the user's data directory ($XDG_DATA_HOME/imago, ~/.local/share/imago, or
~/Library/Application Support/imago on macOS).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence

import image
from pager import CorruptImage, PageStore, PagerError, RecoveryWarning


def default_image_path() -> str:
    home = os.environ.get("IMAGO_HOME")
    if not home:
        if sys.platform == "darwin":
            base = os.path.expanduser("~/Library/Application Support")
        else:
            base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
        home = os.path.join(base, "imago")
    return os.path.join(home, "default.image")


def _size_on_disk(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _print_info(store: PageStore, out) -> None:
    last = store.commits()[-1]
    print(f"image      {store.path}", file=out)
    print(f"head       commit {store.head}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(last.time))}", file=out)
    print(f"page size  {store.page_size} bytes", file=out)
    print(f"on disk    {_human(_size_on_disk(store.path))}", file=out)


def _print_objects(path: str, out) -> None:
    """The object memory's part of `info`; a bare page store has none."""
    try:
        img = image.open(path, readonly=True)
    except CorruptImage as exc:
        if "no object memory" not in str(exc):
            raise
        print("objects    none (a bare page store)", file=out)
        return
    with img:
        stats = img.stats()
        names = sorted(map(repr, img.root))
    print(f"objects    {stats['objects']:,} in {_human(stats['heap_bytes'])} of heap, "
          f"{_human(stats['free_bytes'])} free, {stats['collections']} collections", file=out)
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} names)" if len(names) > 12 else "")
    print(f"root       {shown or '(empty)'}", file=out)


def _check_all(path: str) -> tuple[dict, dict]:
    with PageStore.open(path, readonly=True) as store:
        pages = store.check()
    with image.open(path, readonly=True) as img:
        heap = img.check()
    return pages, heap


def cmd_default(args, out) -> int:
    path = default_image_path()
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.open(path).close()
        print(f";; created a new image at {path}", file=out)
    args.image, args.latest, args.snapshot = path, False, None
    return cmd_boot(args, out)


def _interpreter(path: str):
    """An image (created when missing) and its interpreter."""
    import vm
    img = image.open(path)
    try:
        return img, vm.Interpreter(img)
    except BaseException:
        img.close()
        raise


def cmd_boot(args, out) -> int:
    """Boots a snapshot (the head, --snapshot ID, or --latest / a pipe on
    stdin: the newest known-good one), leaves a boot snapshot, runs the REPL
    (or, when stdin is not a terminal, the forms it holds, each printed), and
    on a clean end marks the boot good and snapshots the final version."""
    import snapshots
    import vm
    from browser.repl import Repl, run_script
    interactive = sys.stdin.isatty()
    img = image.open(args.image)
    with img:
        log = snapshots.log_of(img)
        _boot_version(img, log, args, interactive, out)
        boot = log.take(_boot_commit(img), "boot")
        interp = vm.Interpreter(img)
        if not interactive:
            status = run_script(interp, sys.stdin.read(), lambda text: print(text, file=out),
                                lambda text: print(text, file=sys.stderr))
        else:
            Repl(interp, lambda text: print(text, file=out, flush=True)).run()
            status = 0
        log.mark(boot.id, "good")
        end = log.take(img.head, "auto")
        log.mark(end.id, "good")
    return status


def _boot_version(img, log, args, interactive: bool, out) -> None:
    """Rewinds to the snapshot asked for; a rewind is made durable at once
    with a commit of its own (the branch starts there)."""
    target = None
    if args.snapshot is not None:
        target = args.snapshot
        if target not in {s.id for s in log.snapshots()} and target != img.head:
            raise ValueError(f"{args.image} has no snapshot {target} (imago snapshots lists them)")
    elif args.latest or not interactive:
        good = log.newest_good()
        target = good.id if good is not None else None
        if good is not None and good.id != img.head:
            print(f";; booting the newest known-good snapshot, {good.id} "
                  f"({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(good.time))})", file=out)
    if target is not None and target != img.head:
        img.rewind(target)


def _boot_commit(img) -> int:
    """Every boot is a commit of its own (the boot's time and the version it
    started from), so that each boot snapshot names a version no other
    snapshot names; after a rewind it is the branch's first commit."""
    started_from = img.base
    with img.transaction(f"boot from commit {started_from}"):
        img.system["last boot"] = (time.time(), started_from)
    return img.head


def cmd_snapshots(args, out) -> int:
    import snapshots
    log = snapshots.SnapshotLog(_existing(args.image))
    listed = log.snapshots(session_running=_locked(args.image))
    if args.json:
        json.dump([dict(s.as_json(), size=None) for s in listed], out)
        print(file=out)
        return 0
    for s in reversed(listed):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.time))
        label = f"  {', '.join(s.labels)}" if s.labels else ""
        print(f"{s.id:>8}  {when}  {s.kind:<5}  {s.status:<7}  {s.branch}{label}", file=out)
    return 0


def cmd_snapshot(args, out) -> int:
    import snapshots
    with PageStore.open(_existing(args.image), readonly=True) as store:
        head = store.head
    snap = snapshots.SnapshotLog(args.image).take(head, "label", args.label)
    print(f"snapshot {snap.id}: {args.label}", file=out)
    return 0


def _existing(path: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no image at {path}")
    return path


def _locked(path: str) -> bool:
    """Whether a writer holds the image (a session may be running)."""
    with PageStore.open(path, readonly=True) as store:
        return store.writer_active


def cmd_eval(args, out) -> int:
    from browser.repl import run_script
    img, interp = _interpreter(args.image)
    with img:
        return run_script(interp, args.forms, lambda text: print(text, file=out),
                          lambda text: print(text, file=sys.stderr), "<eval>")


def cmd_load(args, out) -> int:
    import vm
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    img, interp = _interpreter(args.image)
    with img:
        try:
            interp.eval(text, args.file)
        except vm.SchemeFailure as exc:
            print(f"imago: error: {exc} (that form was rolled back; the forms before it are kept)",
                  file=sys.stderr)
            return 1
    return 0


def cmd_create(args, out) -> int:
    if os.path.exists(args.image):
        raise ValueError(f"{args.image} already exists")
    image.open(args.image, page_size=args.page_size).close()
    print(f"created {args.image}", file=out)
    return 0


def cmd_info(args, out) -> int:
    with PageStore.open(args.image, readonly=True) as store:
        _print_info(store, out)
    _print_objects(args.image, out)
    return 0


def cmd_check(args, out) -> int:
    pages, heap = _check_all(args.image)
    print(f"{args.image}: ok: head {pages['head']}, {pages['commits']} commits, "
          f"{pages['pages']} pages, {pages['nodes']} page-table nodes, "
          f"{pages['segments']} segments; {heap['objects']:,} objects, "
          f"{heap['vectors']:,} vectors, {heap['tables']:,} tables", file=out)
    return 0


def cmd_commits(args, out) -> int:
    with PageStore.open(args.image, readonly=True) as store:
        commits = store.commits()
    if args.json:
        json.dump([{"number": c.number, "parent": c.parent, "time": c.time,
                    "meta": image.commit_note(c.meta).decode("utf-8", "replace"), "pages": len(c.pages)}
                   for c in commits], out)
        print(file=out)
        return 0
    for c in commits:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.time))
        meta = image.commit_note(c.meta).decode("utf-8", "replace")
        print(f"{c.number:>8}  {when}  {len(c.pages):>6} pages  {meta}", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imago", description="A persistent object image.")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("boot", help="boot an image into the REPL (created if missing)")
    p.add_argument("image")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--latest", action="store_true", help="the newest known-good snapshot")
    which.add_argument("--snapshot", type=int, default=None, metavar="ID", help="that snapshot")
    p.set_defaults(run=cmd_boot)
    p = sub.add_parser("snapshots", help="list the snapshots")
    p.add_argument("image")
    p.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    p.set_defaults(run=cmd_snapshots)
    p = sub.add_parser("snapshot", help="label the current version")
    p.add_argument("image")
    p.add_argument("label")
    p.set_defaults(run=cmd_snapshot)
    p = sub.add_parser("eval", help="evaluate forms and print each value")
    p.add_argument("image")
    p.add_argument("forms")
    p.set_defaults(run=cmd_eval)
    p = sub.add_parser("load", help="evaluate a file, one transaction per top-level form")
    p.add_argument("image")
    p.add_argument("file")
    p.set_defaults(run=cmd_load)
    p = sub.add_parser("create", help="make a new, empty image")
    p.add_argument("image")
    p.add_argument("--page-size", type=int, default=4096)
    p.set_defaults(run=cmd_create)
    for name, run, text in (("info", cmd_info, "what an image holds"),
                            ("check", cmd_check, "verify every record and page"),
                            ("commits", cmd_commits, "list the commit history")):
        p = sub.add_parser(name, help=text)
        p.add_argument("image")
        p.set_defaults(run=run)
        if name == "commits":
            p.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    parser.set_defaults(run=cmd_default)
    return parser


def main(argv: Sequence[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RecoveryWarning)
            status = args.run(args, out)
        for w in caught:
            print(f"imago: warning: {w.message}", file=sys.stderr)
        return status
    except BrokenPipeError:   # `imago commits X | head`: the reader left, nothing to say
        sys.stdout = open(os.devnull, "w")
        return 0
    except (PagerError, image.ImageError, OSError, ValueError, KeyError, RecursionError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"imago: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imago: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
