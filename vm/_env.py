"""The global environment of a Scheme world: names, values, and the compiled-code cache's dependencies.

An ``Environment`` owns one Python dict, ``namespace``, which every procedure
compiled for it runs with as its ``__globals__``: a Scheme global is one key,
so compiled code reads it with a plain LOAD_GLOBAL.  Writes never go through
STORE_GLOBAL: a top-level ``define`` and a global ``set!`` call
``Environment.define`` / ``Environment.set`` (bound into the namespace as
``R_define`` / ``R_set``), the single door for writes, which a subclass (the
image's persistent environment) overrides to promote the value.

NAMES IN THE NAMESPACE (four disjoint families, so nothing collides)

    family               form                                  example
    -------------------  ------------------------------------  -------------------------
    Scheme global, plain ``[A-Za-z][A-Za-z0-9]*``, not a         fib, tak, loop
                         Python keyword: kept as it is
    Scheme global, other ``_`` + escape(name); escape keeps      list->vector ->
                         ASCII letters and digits and writes    _list_x2d__x3e_vector,
                         any other character c as _x<hex>_      if -> _if
    compiler helper      ``R_`` + letters and _ (no digit)      R_TailCall, R_define
    builtins             ``__builtins__`` is an empty dict      (so an unbound global is a
                                                                NameError, never Python's)

A plain name has no ``_``, so it never starts with ``R_`` or ``_``; an escaped
name starts with ``_`` and decodes uniquely, because every ``_`` it contains
opens or closes an escape.  The compiler's own local names (parameters
``x_12``, temporaries ``_t3``) live in function scopes and are chosen so that
they cannot shadow a global either (see _compile).

INVARIANTS

1. ``namespace[mangle(sym)]`` is the value of global ``sym``; nothing but
   ``define`` and ``set`` writes a Scheme global's key.
2. Every generated procedure whose code bakes in the current value of a
   global (a primitive turned into a Python operator, or a self tail call
   turned into a loop) is registered under that global in ``_dependents``
   (weakly).  When the global is rebound to a different object, each such
   procedure is recompiled from its ``scheme_lambda`` and gets the new code
   object in place (``fn.__code__``), so its identity (eq?) is kept and every
   holder of it sees the new meaning.  Compiled code is a cache: the core
   form is the truth.

OPEN QUESTIONS

- A procedure activation that is already running when a global it baked is
  rebound finishes with the code it started with (Python cannot swap the code
  of a live frame), and so does the rest of the top-level form being run.
- ``inlined_by`` records, per definition name, which globals its value baked
  in; the persistent environment may want to store it with the definition.
"""
from __future__ import annotations

import keyword
import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._runtime import register_procedure_names
from ._types import SchemeError, Symbol, intern

__all__ = ["Environment", "demangle", "mangle", "python_name_to_scheme"]


# -- name mangling -----------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9]*\Z")
_ESCAPE = re.compile(r"_x([0-9a-f]+)_")
_mangled: dict[str, str] = {}


def mangle(name: str) -> str:
    """The namespace key of the Scheme global ``name`` (see the table above)."""
    key = _mangled.get(name)
    if key is None:
        if _PLAIN.match(name) and not keyword.iskeyword(name):
            key = name
        else:
            key = "_" + "".join(c if c.isascii() and c.isalnum() else f"_x{ord(c):x}_"
                                for c in name)
        _mangled[name] = key
    return key


def demangle(key: str) -> str:
    """The Scheme global name a namespace key stands for (inverse of mangle)."""
    if not key.startswith("_"):
        return key
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), key[1:])


_LOCAL = re.compile(r"([A-Za-z][A-Za-z0-9]*)_[0-9]+\Z")


def python_name_to_scheme(pyname: str) -> str:
    """A readable Scheme name for a Python name seen in an error message:
    a compiled local ``loop_12`` is ``loop``, a global key is demangled."""
    local = _LOCAL.match(pyname)
    if local:
        return local.group(1)
    return demangle(pyname)


# -- the environment -----------------------------------------------------------

class Environment:
    """The globals of one Scheme world (see the module docstring)."""

    def __init__(self, primitives: Mapping[str, Callable] | None = None,
                 syntax: Any = None) -> None:
        self.namespace: dict[str, Any] = {"__builtins__": {}}
        self.syntax = syntax
        # The value each standard name had when the environment was made: the
        # compiler inlines a primitive only while its global is still that value.
        self._standard: dict[Symbol, Any] = {}
        self._names: dict[str, Symbol] = {}
        self._dependents: dict[Symbol, weakref.WeakSet] = {}
        self.inlined_by: dict[Symbol, frozenset[Symbol]] = {}
        primitives = dict(primitives or {})
        register_procedure_names(primitives)
        for name, value in primitives.items():
            sym = intern(name)
            self._standard[sym] = value
            self._bind(sym, value)
        self.namespace["R_define"] = self.define
        self.namespace["R_set"] = self.set
        self.namespace["R_track"] = self.track

        def interaction_environment() -> Environment:
            return self
        interaction_environment.scheme_name = "interaction-environment"
        self._bind(intern("interaction-environment"), interaction_environment)

    @classmethod
    def standard(cls) -> Environment:
        """Every R7RS-small procedure (the data primitives of _builtins and the
        control procedures of _runtime) and the standard syntax of _expand,
        as far as those modules exist."""
        from ._runtime import RUNTIME
        procedures: dict[str, Callable] = {}
        try:
            from ._builtins import PRIMITIVES
            procedures.update(PRIMITIVES)
        except ImportError:
            pass
        procedures.update(RUNTIME)
        try:
            from ._expand import SyntacticEnv
            syntax = SyntacticEnv.standard()
        except ImportError:
            syntax = None
        return cls(procedures, syntax)

    # -- reads -------------------------------------------------------------------

    def lookup(self, sym: Symbol) -> Any:
        """The value of global ``sym``; SchemeError if it is unbound."""
        try:
            return self.namespace[mangle(sym.name)]
        except KeyError:
            raise SchemeError(f"unbound variable: {sym.name}") from None

    def is_bound(self, sym: Symbol) -> bool:
        return mangle(sym.name) in self.namespace

    def names(self) -> list[Symbol]:
        """Every bound global, in the order they were first bound."""
        return [sym for key, sym in self._names.items() if key in self.namespace]

    def standard_value(self, sym: Symbol) -> Any:
        """The procedure the name was bound to when the environment was made (or None)."""
        return self._standard.get(sym)

    def is_standard(self, sym: Symbol) -> bool:
        """True while ``sym`` is still bound to its standard procedure."""
        standard = self._standard.get(sym)
        return standard is not None and self.namespace.get(mangle(sym.name)) is standard

    # -- writes: the single door -------------------------------------------------

    def define(self, sym: Symbol, value: Any) -> None:
        """(define sym value) at top level: bind or rebind."""
        self._bind(sym, value)

    def set(self, sym: Symbol, value: Any) -> None:
        """(set! sym value) on a global: it must be bound already."""
        if mangle(sym.name) not in self.namespace:
            raise SchemeError(f"set!: unbound variable {sym.name}")
        self._bind(sym, value)

    def _bind(self, sym: Symbol, value: Any) -> None:
        key = mangle(sym.name)
        old = self.namespace.get(key, _UNBOUND)
        self.namespace[key] = value
        self._names.setdefault(key, sym)
        if old is not value:
            self._invalidate(sym)
        baked = getattr(value, "scheme_baked", None)
        if baked:
            self.depends(sym, baked)
            self.track(value)

    # -- dependencies of compiled code ---------------------------------------------

    def depends(self, definition: Symbol, inlined_globals: Iterable[Symbol]) -> None:
        """Records that the value of ``definition`` baked in these globals."""
        self.inlined_by[definition] = frozenset(inlined_globals)

    def track(self, procedure: Callable) -> Callable:
        """Registers a generated procedure under every global its code baked in,
        so that rebinding one of them recompiles it (compiled code calls this
        for closures that may outlive their maker).  Returns the procedure."""
        for sym in procedure.scheme_baked:
            deps = self._dependents.get(sym)
            if deps is None:
                deps = self._dependents[sym] = weakref.WeakSet()
            deps.add(procedure)
        return procedure

    def dependents(self, sym: Symbol) -> list[Callable]:
        """The live generated procedures whose code baked in global ``sym``."""
        return list(self._dependents.get(sym, ()))

    def invalidate(self, sym: Symbol) -> None:
        """Recompiles every procedure whose code baked in the value of global sym."""
        self._invalidate(sym)

    def _invalidate(self, sym: Symbol) -> None:
        deps = self._dependents.pop(sym, None)
        if not deps:
            return
        from ._compile import recompile_procedure
        for procedure in list(deps):
            recompile_procedure(procedure, self)

    def __repr__(self) -> str:
        return f"#<environment {len(self._names)} names>"


_UNBOUND = object()
