"""The Scheme interpreter over an image: persistent globals, one transaction per form.

``Interpreter(img)`` is the Python API (``interp.eval(text)``, ``eval_file``);
the REPL and ``imago eval`` / ``imago load`` drive it.

WHERE SCHEME LIVES IN THE IMAGE

    img.root            the globals: name (str) -> value.  The root table is
                        the global environment, so Python's
                        img.root["inbox"] is Scheme's inbox.
    img.system["scheme"]  a table of the Scheme layer's own state:
        "sources"       name -> the text of the form that last defined it
        "syntax"        the texts of define-syntax forms, in order
        "replay"        the texts of definitions whose values cannot be
                        stored (records, closures over locals, parameters):
                        run again, in order, when the image boots
        "journal"       the changes journal: (n, commit, time, form) for
                        every top-level form that changed the image
        "history"       the REPL's input lines

A global's value is stored in the root when it is defined or set!
(vm/_persist.py says how each kind of value is stored).  Compiled code reads
globals from the environment's namespace, a per-process cache of the root
filled at boot; stored procedures compile on their first call.

TRANSACTIONS: each top-level form is one transaction.  An error (a Scheme
condition, a Python error inside a primitive, Ctrl-C) rolls back the image
and the namespace entries the form changed, and surfaces as SchemeFailure
carrying the condition, never as a Python traceback.  A form that changed
the image is journaled in the same transaction, with the commit number it
makes (the image's only writer is this process, so that number is the head
plus one).

THE VERSION FORMS: (snapshots) lists the snapshots as alists; (snapshot!
"label") labels the last committed version; (history 'name) the versions in
which a global changed (snapshots.history); (at version expr) evaluates expr
(unevaluated, at top level) in a second Interpreter over a read-only view of
that version (``Interpreter(view, view_of=version)``: define and set! of a
global raise there, and so does a write to stored data), copies the value
out as transient data and closes the view (_Detacher: everything the value
reaches is copied, stored or made in the view; a procedure made in the view
cannot leave it, the standard procedures can).  The live interpreter then
registers its image procedures and record classes again, which the view's
interpreter replaced process-wide.  Inside a view, (at W expr) opens W from
the live image too, and (history 'name) answers for the line up to the
view's version.

STATES: READY --eval--> RUNNING A FORM --ok: commit / error: roll back--> READY;
BOOTING (replaying syntax and unstorable definitions) happens once, in
__init__, and journals nothing.
"""
from __future__ import annotations

import os
import time
from fractions import Fraction
from typing import Any

import image
from pager import PagerError

from . import _persist
from ._env import Environment, mangle
from ._reader import read_all
from ._runtime import RUNTIME, eval_datum, run
from ._types import (NIL, Char, ErrorObject, MString, Pair, SchemeError, SchemeRaise, Symbol, Values,
                     from_iterable, intern)

__all__ = ["Interpreter", "SchemeFailure"]

_UNBOUND = object()
_DEFINING = frozenset(("define", "define-values", "define-record-type", "define-syntax", "set!"))


class SchemeFailure(Exception):
    """A top-level form failed; it was rolled back.  ``condition`` is the
    Scheme object raised; str() is its printed form."""

    def __init__(self, message: str, condition: Any) -> None:
        super().__init__(message)
        self.condition = condition


class ImageEnvironment(Environment):
    """The global environment whose definitions live in the image's root."""

    def __init__(self, img: image.Image, primitives: dict, syntax: Any) -> None:
        self.img = img
        self.booting = False
        self._log: list[tuple[str, Any]] = []   # (key, value before) of each write in the running form
        self.unstored: list[Symbol] = []      # defined by the running form, not storable
        self.view_of: int | None = None       # a view of that version (at): globals are read-only
        # The image's Scheme state of this session (vm/_persist): the
        # interpreter's own procedures by name and by id, the CLOSURE each
        # standard procedure was stored as, and the running transaction's
        # promotions (undone if it rolls back).
        self.own_procedures: dict[str, Any] = {}
        self.own_names: dict[int, str] = {}
        self.system_closures: dict[str, Any] = {}
        self.promotions = _persist.Promotions()
        super().__init__(primitives, syntax)

    def _refuse_in_view(self, what: str, sym: Symbol) -> None:
        if self.view_of is not None and not self.booting:
            raise SchemeError(f"at: version {self.view_of} is read-only: cannot {what} {sym.name}")

    def define(self, sym: Symbol, value: Any) -> None:
        self._refuse_in_view("define", sym)
        self._remember(sym)
        super().define(sym, self._store(sym, value))

    def set(self, sym: Symbol, value: Any) -> None:
        if not self.is_bound(sym):
            super().set(sym, value)   # raises "unbound variable"
        self._refuse_in_view("set!", sym)
        self._remember(sym)
        super().set(sym, self._store(sym, value))

    def _store(self, sym: Symbol, value: Any) -> Any:
        """Stores value as the global's, and returns what the namespace should
        hold: the value itself (now a handle, if it was a pair or a string),
        or the handle of its image copy."""
        if self.img.readonly:
            return value
        root = self.img.root
        try:
            _persist.store(self.img, value, lambda: root.__setitem__(sym.name, value))
        except TypeError:
            if not _kept_as_source(value):
                raise   # data that cannot be stored is an error, never silently transient
            if sym.name in root and not self.booting:
                del root[sym.name]   # a stale stored value must not come back at boot
            self.unstored.append(sym)
            return value
        return _persist.kept(value, lambda: root[sym.name])

    def define_standard(self, sym: Symbol, value: Any) -> None:
        """Binds a procedure of the system (not stored: every boot binds it again)."""
        self._standard[sym] = value
        Environment._bind(self, sym, value)

    def _remember(self, sym: Symbol) -> None:
        key = mangle(sym.name)
        self._log.append((key, self.namespace.get(key, _UNBOUND)))

    def savepoint(self) -> tuple[int, int]:
        """A point (transaction ...) can put the namespace and the promoted
        transients back to."""
        return len(self._log), self.promotions.mark()

    def rollback_to(self, mark: tuple[int, int]) -> None:
        """Puts back the namespace entries written since mark, newest first,
        and the transients promoted since (their handles went stale)."""
        log_mark, promotions_mark = mark
        while len(self._log) > log_mark:
            key, old = self._log.pop()
            if old is _UNBOUND:
                self.namespace.pop(key, None)
            else:
                self.namespace[key] = old
        self.promotions.undo_to(promotions_mark)

    def form_done(self) -> None:
        self._log.clear()
        self.unstored.clear()
        if not self.img.in_transaction:   # committed (else a caller's transaction goes on)
            self.promotions.forget()

    def form_failed(self) -> None:
        """Puts back the namespace entries the failed form changed."""
        self.rollback_to((0, 0))
        self.form_done()


class Interpreter:
    """Scheme over one image (see the module docstring)."""

    def __init__(self, img: image.Image, view_of: int | None = None) -> None:
        """view_of: img is a read-only view of that version, for (at ...):
        defining or setting a global there is an error."""
        from ._builtins import PRIMITIVES
        from ._expand import SyntacticEnv
        self.img = img
        # The image versions are opened from: img itself, or for a view's
        # interpreter the live image (a view cannot open another version).
        self._origin = img
        procedures = dict(PRIMITIVES)
        procedures.update(RUNTIME)
        self.env = ImageEnvironment(img, procedures, SyntacticEnv.standard())
        self.env.view_of = view_of
        _persist.register_system_procedures(procedures)
        _persist.register_runtime_constants()
        _persist.install(img, self.env)
        self._image_procedures: dict[str, Any] = {}
        self._install_image_forms()
        self._install_version_forms()
        self.boot_notes: list[str] = []
        self._seen_head = _version_of(img)
        self._boot()

    # -- the image forms ---------------------------------------------------------------

    def _install_image_forms(self) -> None:
        """(transaction body ...), (commit), (gc) and the blob procedures."""
        from ._expand import QUOTE, register_special_form
        img = self.img

        env = self.env

        def in_transaction(thunk: Any) -> Any:
            mark = env.savepoint()
            try:
                with img.transaction():   # a savepoint of the form's transaction
                    return run(thunk)
            except BaseException:
                env.rollback_to(mark)
                raise

        def transaction_form(form: Any, ctx: Any) -> Any:
            body = ctx.arguments(form, 1, None, "(transaction body ...)")
            if ctx.is_toplevel:
                # A top-level form is already one transaction: its definitions stay global.
                return ctx.expander.toplevel_sequence(list(body))
            thunk = ctx.expand(from_iterable([ctx.keyword("lambda"), NIL, *body]))
            return from_iterable([from_iterable([QUOTE, in_transaction]), thunk])

        register_special_form(self.env.syntax, "transaction", transaction_form)
        self._register({"image:in-transaction": in_transaction})
        def commit() -> None:
            self._commit_point()

        def gc() -> Any:
            return self._collect()

        def blob(data: Any) -> Any:
            return self._blob(data)

        procedures = {"commit": commit, "gc": gc, "blob": blob,
                      "blob?": lambda x: isinstance(x, image.Blob), "blob-read": _blob_read,
                      "blob-hash": lambda b: bytes(_check_blob("blob-hash", b).hash),
                      "blob-length": lambda b: len(_check_blob("blob-length", b))}
        self._define_standard(procedures)

    def _define_standard(self, procedures: dict[str, Any]) -> None:
        for name, proc in procedures.items():
            proc.scheme_name = name
            self.env.define_standard(intern(name), proc)
        self._register({f"image:{k}": v for k, v in procedures.items()})

    def _register(self, procedures: dict[str, Any]) -> None:
        """Registers this interpreter's image procedures by name (stored code
        embeds them); kept, to register again after another interpreter (a
        view's, in (at ...)) has registered its own under the same names."""
        self._image_procedures.update(procedures)
        _persist.register_own(self.env, procedures)

    # -- the version forms -----------------------------------------------------------

    def _install_version_forms(self) -> None:
        """(snapshots), (snapshot! label), (at version expr), (history 'name)."""
        from ._expand import QUOTE, register_special_form, strip_syntax

        def at_form(form: Any, ctx: Any) -> Any:
            version, expr = ctx.arguments(form, 2, 2, "(at version expr)")
            return from_iterable([from_iterable([QUOTE, at]), ctx.expand(version),
                                  from_iterable([QUOTE, strip_syntax(expr)])])

        def at(version: Any, datum: Any) -> Any:
            return self._at(version, datum)

        register_special_form(self.env.syntax, "at", at_form)
        self._register({"image:at": at})
        self._define_standard({"snapshots": lambda: self._snapshots(),
                               "snapshot!": lambda label: self._snapshot(label),
                               "history": lambda name: self._history(name)})

    def _snapshots(self) -> Any:
        """(snapshots): every snapshot, oldest first, each an alist
        ((id . n) (time . t) (kind . "boot") (label . "x" or #f) (status . "good") (branch . "main"))."""
        import snapshots   # noqa: F401  (provides img.snapshots)
        return from_iterable(_alist(s.as_json()) for s in self.img.snapshots())

    def _snapshot(self, label: Any) -> int:
        """(snapshot! "label"): labels the last committed version (the forms
        before this one); returns its id."""
        import snapshots   # noqa: F401  (provides img.snapshot)
        if not isinstance(label, (str, MString)) or not str(_text(label)).strip():
            raise SchemeError("snapshot!: expected a label (a non-empty string), got", label)
        if self.img.readonly:
            raise SchemeError("snapshot!: this image is read-only")
        return self.img.snapshot(_text(label)).id

    def _history(self, name: Any) -> Any:
        """(history 'name): the versions in which global name changed, oldest
        first: ((commit . c) (time . t) (how . "changed") (form . "text" or #f))."""
        import snapshots
        if not isinstance(name, (Symbol, str, MString)):
            raise SchemeError("history: expected a global's name, got", name)
        key = name.name if isinstance(name, Symbol) else _text(name)
        try:   # in a view: the history of the line up to the view's version
            versions = snapshots.history(self._origin, key, tip=self.env.view_of)
        except (ValueError, image.ImageError, PagerError) as exc:
            raise SchemeError(f"history: {exc}") from None
        return from_iterable(_alist({"commit": v.commit, "time": v.time, "how": v.how,
                                     "form": v.forms[-1] if v.forms else False}) for v in versions)

    def _at(self, version: Any, datum: Any) -> Any:
        """(at version expr): expr evaluated in a read-only view of that
        version, beside the live image (its globals are that version's); the
        value is copied out and the view closed."""
        if type(version) is not int:
            raise SchemeError("at: expected a version (a snapshot id, a commit number), got", version)
        try:
            view = self._origin.at(version)
        except (KeyError, image.ImageError, PagerError) as exc:
            reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise SchemeError(f"at: there is no version {version} ({reason})") from None
        live_classes = dict(self.img._handle_classes)
        try:
            inner = Interpreter(view, view_of=version)
            inner._origin = self._origin   # an (at ...) inside opens from the live image too
            self._take_back(live_classes)
            try:
                value = inner.run_form(datum)
            except SchemeFailure as exc:
                if isinstance(exc.condition, BaseException):   # the view refused a write
                    raise SchemeError(f"at: version {version} is read-only ({exc})") from None
                raise SchemeRaise(exc.condition) from None
            finally:   # an (at ...) inside made one more interpreter
                self._take_back(live_classes)
            try:
                return _detach(value, version, self.img)
            except RecursionError:
                raise SchemeError(f"at: the value is nested too deeply to copy out of version "
                                  f"{version}") from None
        finally:
            view.close()

    def _take_back(self, classes: dict) -> None:
        """The live image's handle classes as they were before a view's
        interpreter ran (record types replayed in the view belong to the
        view, vm/_persist.running; this keeps the live image's own even so)."""
        for index, cls in classes.items():
            if self.img._handle_classes.get(index) is not cls:
                self.img.set_handle_class(index, cls)

    def _commit_point(self) -> None:
        """(commit): makes what the running form has done so far durable; the
        form goes on in a new transaction (so an error later rolls back only
        what came after).  Not inside (transaction ...)."""
        img = self.img
        if img._depth != 1:
            raise SchemeError("commit: not inside (transaction ...): a savepoint commits with its form")
        self._record_partial()
        try:
            img._end(b"commit point")   # on failure this rolled the form back (depth 0)
        finally:
            img._begin()                # the form's transaction goes on (or on from its start)
        self.env.form_done()
        self.env.promotions.forget()    # committed: a later rollback does not undo them

    def _collect(self) -> Any:
        """(gc): collects the image; returns what it freed, as an alist
        ((objects . n) (bytes . n) (pages . n))."""
        freed = self.img._collect() if self.img._depth else self.img.gc()
        return from_iterable(Pair(intern(k), v) for k, v in freed.items())

    def _blob(self, data: Any) -> Any:
        if not isinstance(data, (bytes, bytearray)):
            raise SchemeError("blob: expected a bytevector, got", data)
        return self.img.blob(bytes(data))

    def _record_partial(self) -> None:
        """A commit point journals the running form as far as it went."""
        datum = getattr(self, "_running", None)
        if datum is not None and self.img.changed:
            self._record(datum, _form_text(datum))

    # -- the image's Scheme state ---------------------------------------------------

    def _state(self) -> Any:
        """img.system["scheme"], made on first use (not in a read-only image)."""
        system = self.img.system
        state = system.get("scheme") if hasattr(system, "get") else None
        if state is None and not self.img.readonly:
            with self.img.transaction():
                system["scheme"] = {"sources": {}, "syntax": [], "replay": [], "journal": [],
                                    "history": []}
            state = system["scheme"]
        return state

    def _load_root(self, boot: bool) -> None:
        """The root's entries into the namespace: all of them at boot; later,
        those that code outside the interpreter (Python's img.root) added or
        replaced with data."""
        namespace = self.env.namespace
        for name, value in self.img.root.items():
            if not isinstance(name, str):
                continue
            key = mangle(name)
            old = namespace.get(key, _UNBOUND)
            value = _persist.read_back(value)
            if boot or old is _UNBOUND or (old is not value and not callable(old)):
                self.env._names.setdefault(key, intern(name))
                namespace[key] = value
        self._seen_head = _version_of(self.img)

    def _boot(self) -> None:
        """Syntax and record types first (stored records read as records only
        once their type is back), then the globals from the root, then the
        other definitions kept as source, in the order they were made."""
        state = self._state()
        if state is None:
            self._load_root(boot=True)
            return
        self.env.booting = True
        try:
            self._replay(list(state["syntax"]))   # record types are kept there too (_record)
            self._load_root(boot=True)
            self._replay(list(state["replay"]))
        finally:
            self.env.booting = False

    def _replay(self, texts: list[str]) -> None:
        for text in texts:
            try:
                self._run_forms(text, "<boot>", journal=False)
            except SchemeFailure as exc:
                self.boot_notes.append(f"a stored definition failed when run again: {exc}")

    # -- evaluation ------------------------------------------------------------------

    def eval(self, text: str, source: str = "<eval>") -> Any:
        """Evaluates every form of text, each in a transaction of its own;
        returns the last value (a string as a Python str, a character as a
        one-character str, other values as Scheme values or handles)."""
        return to_python(self._run_forms(text, source, journal=True))

    def eval_file(self, path: str | os.PathLike) -> Any:
        """Evaluates a file, one transaction per top-level form."""
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return to_python(self._run_forms(text, os.fspath(path), journal=True))

    def eval_forms(self, text: str, source: str = "<eval>") -> list:
        """Every form's value, in order (each form in a transaction of its own)."""
        values: list = []
        self._run_forms(text, source, journal=True, values=values)
        return values

    def _run_forms(self, text: str, source: str, *, journal: bool, values: list | None = None) -> Any:
        positions: dict = {}
        try:
            forms = read_all(text, source, positions=positions)
        except SchemeRaise as exc:
            raise SchemeFailure(condition_text(exc.payload), exc.payload) from None
        result = None
        for datum in forms:
            result = self.run_form(datum, positions, journal=journal)
            if values is not None:
                values.append(result)
        return result

    def run_form(self, datum: Any, positions: dict | None = None, *, journal: bool = True) -> Any:
        """One top-level form, one transaction: its value, or SchemeFailure."""
        img, env = self.img, self.env
        version = _version_of(img)
        if version != self._seen_head:   # the root changed under us (Python, a rewind)
            self._load_root(boot=version[1] != self._seen_head[1])
        self._running = datum
        self._marks = (env.syntax.version, _persist.record_types_made)
        if not img.in_transaction:   # a caller's transaction that rolled back left stale ones
            env.promotions.settle()
        head = img.head
        try:
            with _persist.running(img):
                value = self._run_in_transaction(datum, positions, journal)
        except SchemeRaise as exc:
            env.form_failed()
            raise SchemeFailure(condition_text(exc.payload), exc.payload) from None
        except (image.ImageError, PagerError, OSError) as exc:
            env.form_failed()
            raise SchemeFailure(f"the image refused the change: {exc}", exc) from None
        except BaseException:
            if img.head == head:
                env.form_failed()
            else:   # the form's commit is durable; an interruption came after it (pager: _catch_up)
                env.form_done()
                self._seen_head = _version_of(img)
            raise
        env.form_done()
        self._seen_head = _version_of(img)
        return value

    def _run_in_transaction(self, datum: Any, positions: dict | None, journal: bool) -> Any:
        img, env = self.img, self.env
        if img.readonly:   # a read-only image (or a view of an old commit): no transaction
            return run(eval_datum, datum, env, positions)
        text = _form_text(datum)
        with img.transaction(text[:200]):
            value = run(eval_datum, datum, env, positions)
            if journal:
                self._record(datum, text)
        return value

    def _record(self, datum: Any, text: str) -> None:
        """What the form (whose text is text) leaves besides its effects: its
        source if it defines, and a journal entry if it changed the image."""
        head = datum.car.name if isinstance(datum, Pair) and isinstance(datum.car, Symbol) else ""
        defined = (self.env.syntax.version, _persist.record_types_made) != self._marks
        if not (self.img.changed or head in _DEFINING or self.env.unstored or defined):
            return
        state = self._state()
        name = _defined_name(datum)
        syntax_version, types_made = self._marks
        if self.env.syntax.version != syntax_version:   # it defined syntax (anywhere in the form)
            state["syntax"].append(text)
        elif _persist.record_types_made != types_made:   # it defined a record type
            state["syntax"].append(text)                  # run before the root is read, like syntax
        elif self.env.unstored:
            state["replay"].append(text)
        elif name is not None and head in ("define", "set!"):
            self._forget_replay(state, name)   # the stored value wins over an older source
        if name is not None and head != "set!":
            state["sources"][name] = text
        journal = state["journal"]
        journal.append((len(journal) + 1, self.img.head + 1, time.time(), text))

    def _forget_replay(self, state: Any, name: str) -> None:
        """Drops the kept-as-source definitions of name (a later stored value replaces them)."""
        replay = state["replay"]
        stale = [i for i, text in enumerate(replay) if _defined_name_of_text(text) == name]
        for i in reversed(stale):
            del replay[i]

    # -- what the REPL and the browser ask ----------------------------------------------

    def global_names(self) -> list[str]:
        return sorted(sym.name for sym in self.env.names())

    def source_of(self, name: str) -> str | None:
        state = self._state()
        return state["sources"].get(name) if state is not None else None

    def history(self) -> list[str]:
        """The REPL's input lines, oldest first."""
        state = self._state()
        return [line for line in state["history"] if isinstance(line, str)] if state is not None else []

    def add_history(self, line: str) -> None:
        state = self._state()
        if state is not None:
            with self.img.transaction():
                state["history"].append(line)

    def journal(self) -> list[tuple]:
        state = self._state()
        return list(state["journal"]) if state is not None else []


def _version_of(img: image.Image) -> tuple[int, int]:
    """(head, base) of img: a rewind changes the base, a commit the head."""
    return img.head, img.base


def _alist(fields: dict) -> Any:
    """A Scheme alist of a dict: symbol keys; None becomes #f."""
    return from_iterable(Pair(intern(k), False if v is None else v) for k, v in fields.items())


def _text(x: Any) -> str:
    return x.s if isinstance(x, MString) else x


def _detach(x: Any, version: int, live: image.Image) -> Any:
    """A value computed in a view, copied out as transient data (the view
    closes): see _Detacher."""
    return _Detacher(version, live).copy(x)


class _Detacher:
    """Copies a value out of a view of version V: every pair, string, vector,
    table, record and condition it reaches, stored in V or made while the
    view ran, so that nothing the result holds reads the closed view.  A
    procedure made in the view (a lambda, a stored procedure, a record
    constructor, a continuation, a parameter, a promise) cannot leave it: its
    code reads V's globals.  The standard procedures are the same in every
    version and pass as they are.  Shared structure and cycles are copied once:
    the memo maps id(original) -> (original, copy), keeping each original
    alive so that its id is not reused during the walk."""

    def __init__(self, version: int, live: image.Image) -> None:
        self.version, self.live = version, live
        self.memo: dict[int, tuple[Any, Any]] = {}
        self._standard: frozenset[int] | None = None

    def copy(self, x: Any) -> Any:
        if type(x) in _ATOMS:
            return x
        done = self.memo.get(id(x))
        if done is not None:
            return done[1]
        copier = self._copier(x)
        return x if copier is None else copier(x)

    def _copier(self, x: Any) -> Any:
        """The method that copies x, None for a value that holds nothing of the view."""
        from ._builtins import HashTable
        from ._runtime import Promise
        from ._types import Record, SVector
        if isinstance(x, Pair):
            return self._pair
        if isinstance(x, MString):
            return lambda s: self._keep(s, MString(s.s))
        if isinstance(x, (SVector, image.Vector)):
            return self._vector
        if isinstance(x, (HashTable, image.Table)):
            return self._table
        if isinstance(x, Record):
            return self._record
        if isinstance(x, tuple):
            return self._tuple
        if isinstance(x, ErrorObject):
            return lambda e: ErrorObject(e.message, self._tuple(e.irritants), e.kind)
        if isinstance(x, (_persist.StoredProcedure, Promise)) or callable(x):
            return self._procedure
        if isinstance(x, image.Handle):
            raise SchemeError(f"at: a {type(x).__name__.lower()} of version {self.version} cannot "
                              "leave its view; return data computed from it")
        return None

    def _keep(self, original: Any, copy: Any) -> Any:
        self.memo[id(original)] = (original, copy)
        return copy

    def _pair(self, x: Any) -> Any:
        """Along the cdrs without recursion (a long list), into the cars by copy()."""
        first = last = None
        cell = x
        while isinstance(cell, Pair) and id(cell) not in self.memo:
            new = self._keep(cell, Pair(NIL, NIL))
            if last is None:
                first = new
            else:
                last.cdr = new
            new.car = self.copy(cell.car)
            last, cell = new, cell.cdr
        last.cdr = self.copy(cell)
        return first

    def _vector(self, x: Any) -> Any:
        from ._types import SVector
        new = self._keep(x, SVector())
        new.extend(self.copy(item) for item in x)
        return new

    def _tuple(self, x: tuple) -> tuple:
        items = tuple(self.copy(item) for item in x)
        return Values(items) if type(x) is Values else items

    def _table(self, x: Any) -> Any:
        from ._builtins import PRIMITIVES, HashTable
        if isinstance(x, HashTable):   # made in the view: its equivalence must leave too
            new = HashTable(self.copy(x.equivalence), self.copy(x.hash_function))
        else:
            new = PRIMITIVES["make-hash-table"]()
        self._keep(x, new)
        for key, value in list(x.items()):
            new.set(self.copy(key), self.copy(value))
        return new

    def _record(self, x: Any) -> Any:
        """A transient copy, of the live image's record type of the same name
        and fields when it has one (so the live predicate holds)."""
        from ._types import field_slot
        rtd = type(x).record_type
        for cls in list(self.live._handle_classes.values()):
            live_type = getattr(cls, "record_type", None)
            if live_type is not None and (live_type.name, live_type.fields) == (rtd.name, rtd.fields):
                rtd = live_type
                break
        copy = self._keep(x, rtd.cls.__new__(rtd.cls))
        for field in rtd.fields:
            setattr(copy, field_slot(field), self.copy(getattr(x, field_slot(field))))
        return copy

    def _procedure(self, x: Any) -> Any:
        if self._standard is None:
            from ._builtins import PRIMITIVES
            self._standard = frozenset(id(p) for p in (*PRIMITIVES.values(), *RUNTIME.values()))
        if id(x) in self._standard:
            return x
        raise SchemeError(f"at: a procedure of version {self.version} cannot leave its view "
                          "(procedures cannot leave a view); return data computed from it")


# Values that hold nothing of a view, copied out as they are.
_ATOMS = frozenset((int, float, complex, Fraction, str, bytes, bool, type(None), Symbol, Char))


def _check_blob(who: str, x: Any) -> Any:
    if not isinstance(x, image.Blob):
        raise SchemeError(f"{who}: expected a blob, got", x)
    return x


def _blob_read(b: Any) -> Any:
    from ._types import Bytevector
    return Bytevector(_check_blob("blob-read", b).read())


def condition_text(condition: Any) -> str:
    """A raised object as the REPL prints it: an error's message and irritants."""
    from ._printer import display, write
    if isinstance(condition, ErrorObject):
        parts = [condition.message] + [write(x) for x in condition.irritants]
        kind = {"file": "file error: ", "read": "read error: "}.get(condition.kind, "")
        return kind + " ".join(parts)
    return "raised " + write(condition) if not isinstance(condition, (str, MString)) else display(condition)


def _defined_name(datum: Any) -> str | None:
    """The global a top-level definition names: (define x ...), (define (f ...) ...)."""
    if not (isinstance(datum, Pair) and isinstance(datum.cdr, Pair)):
        return None
    target = datum.cdr.car
    while isinstance(target, Pair):   # (define ((curried a) b) ...)
        target = target.car
    return target.name if isinstance(target, Symbol) else None


def _defined_name_of_text(text: str) -> str | None:
    try:
        return _defined_name(read_all(text, "<replay>")[0])
    except Exception:   # a kept text always reads; anything else names nothing
        return None


def _kept_as_source(value: Any) -> bool:
    """Values whose definitions are kept as source when the image cannot
    hold them: procedures (closures over locals), ports, parameters,
    promises, continuations, record types, and exact rationals and complex
    numbers (which the image cannot hold yet: as a global's value they are
    recomputed from their definition; inside stored data they are an error).
    Other data the image cannot hold is an error."""
    from ._builtins import Parameter, Port
    from ._runtime import Promise
    from ._types import RecordType
    return callable(value) or isinstance(value, (Port, Parameter, Promise, RecordType, Fraction,
                                                  complex))


def _form_text(datum: Any) -> str:
    from ._printer import write
    return write(datum)


def to_python(x: Any) -> Any:
    """A value as the Python API returns it (strings and characters as str)."""
    if isinstance(x, MString):
        return x.s
    if type(x) is Char:
        return chr(x.cp)
    if type(x) is Values:
        return tuple(to_python(v) for v in x)
    return x
