"""The boot menu: which snapshot to boot (prompt_toolkit, full screen).

Lists the snapshots newest first, one line each: id, time, kind, status,
branch, labels (control characters escaped, so a label holding a newline or
a terminal escape still takes one line).  A snapshot a vacuum dropped
(status "vacuumed") is not offered: its pages may be gone.  Below the list, for the selected snapshot, the last forms of
the changes journal before it (read from a view of that version by the
caller's forms_before(id), asked once per snapshot and kept).

KEYS: Up/Down (k/j), PageUp/PageDown, Home/End move; Enter boots the
selected snapshot; q, Escape or Ctrl-C leave without booting anything.

STATES: CHOOSING --Enter--> CHOSEN (choose() returns the id)
                 --q/Esc/Ctrl-C--> LEFT (choose() returns None).
The cursor starts on the newest good snapshot (the one Enter boots by
default), else on the newest.  The menu writes nothing.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from prompt_toolkit.application import Application
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import HSplit, Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.styles import Style

from snapshots import Snapshot

__all__ = ["BootMenu", "choose"]

FORMS_SHOWN = 5     # journal forms shown under the list
PAGE = 10           # rows PageUp/PageDown move
VACUUMED = "vacuumed"   # the status of a snapshot a vacuum dropped (snapshots/_log.py invariant 5)

STYLE = Style.from_dict({"title": "bold", "selected": "reverse", "good": "ansigreen",
                         "crashed": "ansired", "unknown": "ansiyellow", "dim": "ansibrightblack"})


class BootMenu:
    """The menu's state: the snapshots (newest first) and the cursor."""

    def __init__(self, snapshots: Sequence[Snapshot], forms_before: Callable[[int], list[str]]) -> None:
        self.rows = sorted((s for s in snapshots if s.status != VACUUMED), key=lambda s: s.id,
                           reverse=True)
        if not self.rows:
            raise ValueError("the boot menu needs at least one snapshot (not vacuumed)")
        self.forms_before = forms_before
        self._forms: dict[int, list[str]] = {}
        good = [i for i, s in enumerate(self.rows) if s.status == "good"]
        self.cursor = good[0] if good else 0
        self.chosen: int | None = None

    def check(self) -> None:
        """The cursor is on a row; no row is a vacuumed snapshot."""
        assert 0 <= self.cursor < len(self.rows), (self.cursor, len(self.rows))
        assert all(s.status != VACUUMED for s in self.rows)

    @property
    def selected(self) -> Snapshot:
        return self.rows[self.cursor]

    def move(self, delta: int) -> None:
        self.cursor = max(0, min(len(self.rows) - 1, self.cursor + delta))

    def forms(self, snapshot_id: int) -> list[str]:
        if snapshot_id not in self._forms:
            self._forms[snapshot_id] = self.forms_before(snapshot_id)
        return self._forms[snapshot_id]

    # -- what the screen shows ---------------------------------------------------------------

    def title(self) -> StyleAndTextTuples:
        return [("class:title", " imago: boot which snapshot?  "),
                ("class:dim", "Up/Down choose, Enter boots, q leaves")]

    def listing(self) -> StyleAndTextTuples:
        out: StyleAndTextTuples = []
        for i, s in enumerate(self.rows):
            line = row_text(s)
            if i == self.cursor:
                out.append(("[SetCursorPosition]", ""))
                out.append(("class:selected", "> " + line))
            else:
                out.append((f"class:{s.status}" if s.status in ("crashed", "unknown") else "", "  " + line))
            out.append(("", "\n"))
        return out

    def details(self) -> StyleAndTextTuples:
        s = self.selected
        forms = self.forms(s.id)
        out: StyleAndTextTuples = [("class:title", f" the last forms before snapshot {s.id}:\n")]
        if not forms:
            out.append(("class:dim", "   (none: no journaled form yet)\n"))
        for form in forms:
            out.append(("", f"   {form[:200]}\n"))
        return out


def row_text(s: Snapshot) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.time))
    labels = f"  {s.labels_text}" if s.labels else ""
    return f"{s.id:>8}  {when}  {s.kind:<5}  {s.status:<8}  {s.branch}{labels}"


def application(menu: BootMenu, **kwargs) -> Application:
    """The prompt_toolkit Application over menu (kwargs: input=, output= for tests)."""
    keys = KeyBindings()

    def mover(delta: int):
        def move(event) -> None:
            menu.move(delta)
        return move

    for names, delta in ((("up",), -1), (("k",), -1), (("down",), 1), (("j",), 1),
                         (("pageup",), -PAGE), (("pagedown",), PAGE),
                         (("home",), -len(menu.rows)), (("end",), len(menu.rows))):
        keys.add(*names)(mover(delta))

    @keys.add("enter")
    def _(event) -> None:
        menu.chosen = menu.selected.id
        event.app.exit(result=menu.chosen)

    for key in ("q", "escape", "c-c"):
        keys.add(key, eager=True)(lambda event: event.app.exit(result=None))

    body = HSplit([
        Window(FormattedTextControl(menu.title), height=1),
        Window(FormattedTextControl(menu.listing, focusable=True, show_cursor=False)),
        Window(height=1, char="-", style="class:dim"),
        Window(FormattedTextControl(menu.details), height=FORMS_SHOWN + 1),
    ])
    return Application(layout=Layout(body), key_bindings=keys, style=STYLE, full_screen=True,
                       mouse_support=False, **kwargs)


def choose(snapshots: Sequence[Snapshot], forms_before: Callable[[int], list[str]], **kwargs) -> int | None:
    """Shows the menu; the id of the snapshot to boot, or None if the user left."""
    menu = BootMenu(snapshots, forms_before)
    return application(menu, **kwargs).run()
