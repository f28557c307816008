"""The ``imago`` command.

    imago                          boot the default image (created on first use) into the REPL
    imago boot IMAGE [--latest | --snapshot ID] [--good-after MINUTES]
                                   boot IMAGE into the REPL (created if missing); on a
                                   terminal with more than one snapshot the boot menu
                                   (browser/bootmenu.py) chooses; a pipe on stdin boots the
                                   newest known-good snapshot and runs the forms it holds.
                                   Booting an older version keeps the line left as the
                                   branch <branch>~<tip>.  The boot is marked good at a
                                   clean end or after MINUTES (10, $IMAGO_GOOD_AFTER)
    imago snapshots IMAGE [--json] the snapshots (size: what each holds back, when the
                                   vacuum's snapshots.held_back is there; else null)
    imago snapshot IMAGE LABEL     label the current version
    imago branch / switch / history / diff / changes / replay
                                   the version commands (browser/_cmd_versions.py)
    imago eval IMAGE 'FORMS'       evaluate, print the value of each form, exit (1 on error)
    imago load IMAGE FILE.scm      evaluate a file, one transaction per top-level form
    imago create IMAGE [--page-size N]
    imago info IMAGE               head, page size, size on disk, objects, root names
    imago check IMAGE              verify every record, page and page-table node, then the heap
    imago commits IMAGE [--json]   the commit history

The snapshot commands live in their own modules, each adding its
subcommands with ``register(sub)``: _cmd_versions (branch, switch, history,
diff, changes, replay), _cmd_vacuum (vacuum), _cmd_bundles (export, import,
fsck).

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
    args.image, args.latest, args.snapshot, args.good_after = path, False, None, None
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


GOOD_AFTER_MINUTES = 10.0   # a session that ran this long without a fatal error booted a good version
_QUIT = object()            # the boot menu was left without choosing


def cmd_boot(args, out) -> int:
    """Boots a snapshot (on a terminal the boot menu chooses when there is
    more than one; --snapshot ID; --latest or a pipe on stdin: the newest
    known-good one), leaves a boot snapshot, runs the REPL (or, when stdin
    is not a terminal, the forms it holds, each printed).  The boot is marked
    good when the session ends cleanly or has run --good-after minutes; a
    clean end also snapshots the final version."""
    import snapshots
    good_after = _good_after(args)
    interactive = sys.stdin.isatty()
    if interactive and args.snapshot is None and not args.latest:
        chosen = _menu_choice(args.image)
        if chosen is _QUIT:
            print(";; nothing booted", file=out)
            return 0
        args.snapshot = chosen
    img = image.open(args.image)
    with img:
        log = snapshots.log_of(img)
        branch = snapshots.current_branch(img)
        _boot_version(img, log, args, interactive, out)
        boot = log.take(_boot_commit(img, branch), "boot", branch=branch)
        status = _session(img, interactive, lambda: log.mark(boot.id, "good"), good_after, out)
        end = log.take(img.head, "auto", branch=snapshots.current_branch(img))
        log.mark(end.id, "good")
    return status


def _session(img, interactive: bool, mark_good, good_after: float, out) -> int:
    """The REPL (or the script on stdin); mark_good runs once, at a clean end
    or after good_after seconds, unless a fatal error came first."""
    import vm
    from browser.repl import KnownGood, Repl, run_script
    interp = vm.Interpreter(img)
    good = KnownGood(mark_good, good_after)
    good.start()
    try:
        if not interactive:
            status = run_script(interp, sys.stdin.read(), lambda text: print(text, file=out),
                                lambda text: print(text, file=sys.stderr))
        else:
            Repl(interp, lambda text: print(text, file=out, flush=True)).run()
            status = 0
    except BaseException:
        good.cancel()   # a fatal error (or an interrupt): the boot is not known to be good
        raise
    good.finish()
    return status


def _good_after(args) -> float:
    """Seconds before a running session's boot counts as good (--good-after, $IMAGO_GOOD_AFTER, 10 min)."""
    minutes = args.good_after
    if minutes is None:
        try:
            minutes = float(os.environ.get("IMAGO_GOOD_AFTER", GOOD_AFTER_MINUTES))
        except ValueError:
            raise ValueError("IMAGO_GOOD_AFTER must be a number of minutes") from None
    if not minutes >= 0:
        raise ValueError(f"--good-after takes minutes (0 or more), not {minutes}")
    return 60.0 * minutes


def _menu_choice(path: str):
    """The snapshot the boot menu chose; None (no menu: a new image, or only
    one snapshot) or _QUIT (left without choosing)."""
    import snapshots
    from browser.bootmenu import choose
    if not os.path.isdir(path):
        return None
    with image.open(path, readonly=True) as img:
        listed = [s for s in snapshots.log_of(img).snapshots() if s.status != "vacuumed"]
        if len(listed) < 2:
            return None
        chosen = choose(listed, lambda sid: _forms_before(img, sid))
    return _QUIT if chosen is None else chosen


def _forms_before(img, snapshot_id: int, count: int = 5) -> list[str]:
    """The last forms of the journal as of that snapshot (a view of it)."""
    import snapshots
    try:
        with img.at(snapshot_id) as view:
            entries = snapshots.journal(view)
    except (KeyError, image.ImageError, PagerError) as exc:
        return [f"(this version cannot be read: {exc})"]
    return _collapse_runs([" ".join(c.form.split()) for c in entries], count)


def _collapse_runs(forms: list[str], count: int) -> list[str]:
    """The last count lines of forms, a run of one form journaled again and
    again (a loop with (commit) points journals at each) shown once with
    its count, so that it does not fill the menu alone."""
    lines: list[str] = []
    i = len(forms)
    while i > 0 and len(lines) < count:
        j = i - 1
        while j > 0 and forms[j - 1] == forms[i - 1]:
            j -= 1
        run = i - j
        lines.append(forms[i - 1] if run == 1 else f"{forms[i - 1]}   (x{run})")
        i = j
    return lines[::-1]


def _boot_version(img, log, args, interactive: bool, out) -> None:
    """Rewinds to the snapshot asked for, keeping the line it leaves as a
    branch; the rewind is made durable with the boot's commit."""
    import snapshots
    target = None
    if args.snapshot is not None:
        target = args.snapshot
        if target not in {s.id for s in log.snapshots()} and target != img.head:
            raise ValueError(f"{args.image} has no snapshot {target} (imago snapshots lists them)")
    elif args.latest or not interactive:
        good = snapshots.boot_target(img, log)
        if good is not None:
            target = good.id
            print(f";; the last session crashed: booting the newest known-good snapshot, {good.id} "
                  f"({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(good.time))})", file=sys.stderr)
        else:   # a note, on stderr: a script's stdout holds only its values
            print(f";; booting version {img.head}, the newest of branch "
                  f"{snapshots.current_branch(img)} (its last session did not crash)", file=sys.stderr)
    if target is not None and target != img.base:
        kept = snapshots.rewind_keeping_line(img, target)
        print(f";; booted version {target}; the line you left is kept as branch {kept} "
              f"(imago changes {args.image} --since {target} --from {kept} lists its forms, "
              f"imago replay {args.image} --since {target} --skip N re-runs them)", file=out)


def _boot_commit(img, branch: str) -> int:
    """Every boot is a commit of its own (the boot's time and the version it
    started from), so that each boot snapshot names a version no other
    snapshot names; after a rewind it is the branch's first commit, and it
    keeps the branch the session was on (the older version may say another)."""
    started_from = img.base
    with img.transaction(f"boot from commit {started_from}"):
        img.system["last boot"] = (time.time(), started_from)
        img.system["branch"] = branch
    return img.head


def cmd_snapshots(args, out) -> int:
    import snapshots
    log = snapshots.SnapshotLog(_existing(args.image))
    listed = log.snapshots(session_running=_locked(args.image))
    held = getattr(snapshots, "held_back", None)   # the vacuum's report, when it is there
    sizes = held(args.image) if held is not None else {}
    if args.json:
        json.dump([dict(s.as_json(), size=sizes.get(s.id)) for s in listed], out)
        print(file=out)
        return 0
    for s in reversed(listed):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.time))
        label = f"  {s.labels_text}" if s.labels else ""   # escaped: one snapshot, one line
        size = f"  {_human(sizes[s.id])}" if s.id in sizes else ""
        print(f"{s.id:>8}  {when}  {s.kind:<5}  {s.status:<8}  {s.branch}{size}{label}", file=out)
    return 0


def cmd_snapshot(args, out) -> int:
    import snapshots
    if not args.label.strip():   # as (snapshot! ""): a blank label names nothing, yet is kept forever
        raise ValueError("snapshot: expected a label (a non-empty string), got " + repr(args.label))
    with image.open(_existing(args.image), readonly=True) as img:
        head, branch = img.head, snapshots.current_branch(img)
    snap = snapshots.SnapshotLog(args.image).take(head, "label", args.label, branch)
    print(f"snapshot {snap.id}: {snap.labels_text}", file=out)
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
    from browser._script import run_script
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
    p.add_argument("--good-after", type=float, default=None, metavar="MINUTES",
                   help=f"mark the boot good after this long without a fatal error "
                        f"(default {GOOD_AFTER_MINUTES:g}, or $IMAGO_GOOD_AFTER)")
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
    from browser import _cmd_bundles, _cmd_vacuum, _cmd_versions
    for module in (_cmd_versions, _cmd_vacuum, _cmd_bundles):
        module.register(sub)
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
