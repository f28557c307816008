"""The image REPL: read a form, run it as one transaction, print its value.

Built on prompt_toolkit.  What the user gets:

- Enter submits only when the input is a whole form (the reader says
  Incomplete otherwise, and Enter starts a new line); matching parentheses
  are highlighted; Tab completes the image's global names.
- The history is kept in the image (img.system["scheme"]["history"]) and is
  searchable with Ctrl-R, so it travels with the image, not with the machine.
- Values print with depth and length limits (a vector of ten million mails
  prints its head and its size, instantly).  *1, *2 and *3 hold the last
  three values and *e the last error (in this session only: not stored).
- Commands start with a comma: ,help ,describe ,apropos ,source ,doc ,time
  ,expand ,quit.
- An error prints as a Scheme condition and rolls the form back; Ctrl-C
  interrupts a running form, rolls it back, and the REPL goes on.

KnownGood marks the boot's snapshot good once: when the session ends
cleanly, or after it has run a while (a timer thread; `imago boot
--good-after MINUTES`) with no fatal error, which cancels it.

The loop is ``Repl.run()``; ``Repl.handle(text)`` does one submission and
returns what it printed, which is what the headless tests drive (they also
drive run() through a prompt_toolkit pipe input).
"""
from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Iterable

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.history import History
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout.processors import HighlightMatchingBracketProcessor

from browser._script import run_script, show
from vm import Interpreter, SchemeFailure
from vm._env import mangle
from vm._printer import write
from vm._reader import Incomplete, read_all
from vm._types import ErrorObject, MString, Pair, Symbol, intern

__all__ = ["KnownGood", "Repl", "run_script"]   # run_script: browser/_script.py


HELP = """\
Each form you enter runs as one transaction: it commits when it succeeds, and
an error (or Ctrl-C) rolls it back.  Definitions and data persist in the image.
  ,help               this text
  ,describe EXPR      what a value is (type, size, where it lives)
  ,apropos TEXT       global names containing TEXT
  ,source NAME        the form that defined NAME
  ,doc NAME           the docstring of NAME's definition
  ,time EXPR          run EXPR and say how long it took
  ,expand EXPR        EXPR with its macros expanded
  ,quit               leave (Ctrl-D too)
*1 *2 *3 are the last values, *e the last error."""


class KnownGood:
    """Runs mark() once: at finish() (a clean end), or when `after` seconds
    have passed since start() with no cancel() (a fatal error).  STATES:
    WAITING --timer or finish()--> MARKED; WAITING --cancel()--> CANCELLED;
    MARKED and CANCELLED are final.  mark() writes only the snapshot log
    (append + fsync), never the image, so the timer thread may run it while
    a form is running."""

    def __init__(self, mark: Callable[[], None], after: float) -> None:
        self._mark = mark
        self.after = after
        self.state = "waiting"
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.error: OSError | None = None   # the log could not be written

    def start(self) -> None:
        self._timer = threading.Timer(self.after, self._settle, args=("marked",))
        self._timer.daemon = True   # a timer never keeps a finished session alive
        self._timer.start()

    def finish(self) -> None:
        """A clean end: marks now, unless the timer already did (or failed to:
        then its error is raised here, in the session's thread)."""
        self._stop()
        self._settle("marked")
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self._stop()
        self._settle("cancelled")

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _settle(self, outcome: str) -> None:
        with self._lock:
            if self.state != "waiting":
                return
            self.state = outcome
            if outcome == "marked":
                try:
                    self._mark()
                except OSError as exc:
                    self.state, self.error = "failed", exc


class ImageHistory(History):
    """The REPL's input lines, kept in the image."""

    def __init__(self, interp: Interpreter) -> None:
        super().__init__()
        self.interp = interp

    def load_history_strings(self) -> Iterable[str]:
        lines = self.interp.history()
        return reversed(lines)   # prompt_toolkit wants the newest first

    def store_string(self, string: str) -> None:
        self.interp.add_history(string)


class GlobalNames(Completer):
    """Completes the identifier before the cursor with the image's global names."""

    def __init__(self, interp: Interpreter) -> None:
        self.interp = interp

    def get_completions(self, document, complete_event):
        word = document.get_word_before_cursor(pattern=_IDENTIFIER)
        if not word:
            return
        for name in self.interp.global_names():
            if name.startswith(word):
                yield Completion(name, start_position=-len(word))


_IDENTIFIER = re.compile(r"[^\s()\[\]'`,\"]+")


def is_complete(text: str) -> bool:
    """Whether text holds whole forms (so Enter submits it)."""
    if text.lstrip().startswith(","):
        return True
    try:
        read_all(text, "<repl>")
    except Incomplete:
        return False
    except Exception:   # a read error: submit, and let evaluation report it
        return True
    return True


class Repl:
    """The read-eval-print loop over one interpreter."""

    def __init__(self, interp: Interpreter, out: Callable[[str], None] | None = None) -> None:
        self.interp = interp
        self.out = out or (lambda text: print(text, flush=True))
        self.done = False
        self.commands = {"help": self.cmd_help, "describe": self.cmd_describe,
                         "apropos": self.cmd_apropos, "source": self.cmd_source, "doc": self.cmd_doc,
                         "time": self.cmd_time, "expand": self.cmd_expand, "quit": self.cmd_quit}

    # -- one submission -----------------------------------------------------------------

    def handle(self, text: str) -> None:
        """Runs one submission (forms or a command) and prints the outcome."""
        stripped = text.strip()
        if not stripped:
            return
        if stripped.startswith(","):
            name, _, arg = stripped[1:].partition(" ")
            command = self.commands.get(name)
            if command is None:
                self.out(f";; unknown command ,{name} (,help lists them)")
                return
            command(arg.strip())
            return
        self.evaluate(text)

    def evaluate(self, text: str) -> None:
        try:
            values = self.interp.eval_forms(text, "<repl>")
        except SchemeFailure as exc:
            self._failed(exc.condition, f";; error: {exc}  (the form was rolled back)")
            return
        except KeyboardInterrupt:
            self.out(";; interrupted: the form was rolled back")
            return
        for value in values:
            self._remember(value)
            if value is not None:
                self.out(self.show(value))

    def show(self, value: Any) -> str:
        return show(value)

    def _remember(self, value: Any) -> None:
        ns = self.interp.env.namespace
        ns[mangle("*3")] = ns.get(mangle("*2"))
        ns[mangle("*2")] = ns.get(mangle("*1"))
        ns[mangle("*1")] = value

    def _failed(self, condition: Any, message: str) -> None:
        self.interp.env.namespace[mangle("*e")] = condition
        self.out(message)

    # -- commands -------------------------------------------------------------------------

    def cmd_help(self, arg: str) -> None:
        self.out(HELP)

    def cmd_quit(self, arg: str) -> None:
        self.done = True

    def cmd_apropos(self, arg: str) -> None:
        names = [n for n in self.interp.global_names() if arg in n]
        self.out(" ".join(names) if names else f";; no global name contains {arg!r}")

    def cmd_source(self, arg: str) -> None:
        text = self.interp.source_of(arg)
        self.out(text if text else f";; no stored definition of {arg}")

    def cmd_doc(self, arg: str) -> None:
        text = self.interp.source_of(arg)
        doc = docstring_of(text) if text else None
        self.out(doc if doc else f";; {arg} has no docstring")

    def cmd_describe(self, arg: str) -> None:
        try:
            value = self.interp.eval(arg, "<describe>")
        except SchemeFailure as exc:
            self._failed(exc.condition, f";; error: {exc}")
            return
        self.out(describe(value))

    def cmd_time(self, arg: str) -> None:
        started = time.perf_counter()
        self.evaluate(arg)
        self.out(f";; {1000 * (time.perf_counter() - started):.3f} ms")

    def cmd_expand(self, arg: str) -> None:
        from vm._expand import expand_toplevel, strip_syntax
        try:
            forms = read_all(arg, "<expand>")
            syntax = self.interp.env.syntax.copy()   # expanding must not define anything
            for datum in forms:
                self.out(write(strip_syntax(expand_toplevel(datum, syntax))))
        except Exception as exc:   # a syntax error is the answer here
            self.out(f";; error: {exc}")

    # -- the loop -------------------------------------------------------------------------

    def session(self, **kwargs: Any) -> PromptSession:
        bindings = KeyBindings()

        @bindings.add("enter")
        def _(event) -> None:
            buffer = event.current_buffer
            if is_complete(buffer.text):
                buffer.validate_and_handle()
            else:
                buffer.insert_text("\n")

        return PromptSession(
            message="imago> ", prompt_continuation="   ... ", multiline=True,
            key_bindings=bindings, history=ImageHistory(self.interp),
            completer=GlobalNames(self.interp), complete_while_typing=False,
            enable_history_search=True,
            input_processors=[HighlightMatchingBracketProcessor(chars="()[]")], **kwargs)

    def run(self, session: PromptSession | None = None) -> None:
        """Prompts until ,quit or end of input."""
        session = session or self.session()
        self.out(f";; imago: {self.interp.img.head} commits, {len(self.interp.global_names())} "
                 "globals.  ,help for help; each form is one transaction.")
        for note in self.interp.boot_notes:
            self.out(f";; {note}")
        while not self.done:
            try:
                text = session.prompt()
            except KeyboardInterrupt:
                continue   # Ctrl-C at the prompt clears the line
            except EOFError:
                break
            self.handle(text)


def docstring_of(source: str) -> str | None:
    """The docstring of (define (f ...) "doc" body ...): a string first in a body of two or more."""
    try:
        datum = read_all(source, "<source>")[0]
    except Exception:
        return None
    if not (isinstance(datum, Pair) and isinstance(datum.cdr, Pair)):
        return None
    body = datum.cdr.cdr
    if isinstance(datum.cdr.car, Symbol) and isinstance(body, Pair) and isinstance(body.car, Pair) \
            and body.car.car is intern("lambda") and isinstance(body.car.cdr, Pair):
        body = body.car.cdr.cdr   # (define f (lambda (x) "doc" ...))
    if isinstance(body, Pair) and isinstance(body.cdr, Pair) and isinstance(body.car, (str, MString)):
        return body.car if isinstance(body.car, str) else body.car.s
    return None


def describe(value: Any) -> str:
    """What a value is: its type, its size, and whether it lives in the image."""
    import image
    from vm._persist import PersistentPair, PersistentString, StoredProcedure
    kind = type(value).__name__
    where = "in the image" if isinstance(value, (image.Handle, PersistentPair, PersistentString,
                                                  StoredProcedure)) else "transient"
    if isinstance(value, image.Vector):
        return f"a vector of {len(value):,} items, in the image at {value.address:#x}"
    if isinstance(value, image.Table):
        return f"a hash table of {len(value):,} entries, in the image at {value.address:#x}"
    if isinstance(value, ErrorObject):
        return f"an error object: {value.message}"
    if callable(value):
        name = getattr(value, "scheme_name", None) or getattr(value, "__name__", "?")
        return f"a procedure {name} ({where})"
    return f"{write(value)}: a {kind} ({where})"

