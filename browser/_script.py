"""Forms from a pipe or a command line (`imago eval`, `imago load`, a pipe on
stdin): every form runs as one transaction and its value prints as at the
prompt.

Kept apart from browser/repl.py so that a script needs no prompt_toolkit:
importing it costs a third of a second, which every `imago eval` paid.

INVARIANT: a form's value prints exactly as the REPL prints it (the same
pretty printer and limits: browser/repl.py takes PRINT_DEPTH and
PRINT_LENGTH from here).
"""
from __future__ import annotations

from typing import Any, Callable

from vm import Interpreter, SchemeFailure
from vm._printer import pretty
from vm._reader import read_all

__all__ = ["PRINT_DEPTH", "PRINT_LENGTH", "run_script", "show"]

PRINT_DEPTH = 8       # nesting shown before "..."
PRINT_LENGTH = 50     # items of a sequence shown before "... (N more)"


def show(value: Any) -> str:
    """A value as the REPL prints it."""
    return pretty(value, depth=PRINT_DEPTH, length=PRINT_LENGTH)


def run_script(interp: Interpreter, text: str, out: Callable[[str], None],
               err: Callable[[str], None] | None = None, source: str = "<stdin>") -> int:
    """Non-interactive input (a pipe, imago eval): every form runs and prints
    its value like at the prompt; errors go to err.  The exit status is 1 if
    any form failed (the others still ran, each in its own transaction)."""
    err = err or out
    try:
        forms = read_all(text, source)
    except Exception as exc:
        err(f"imago: error: {exc}")
        return 1
    failed = False
    for datum in forms:
        try:
            value = interp.run_form(datum)
        except SchemeFailure as exc:
            err(f"imago: error: {exc} (the form was rolled back)")
            failed = True
            continue
        if value is not None:
            out(show(value))
    return 1 if failed else 0
