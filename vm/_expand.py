"""The expander: R7RS-small syntax (4.1-4.3, 5.2-5.7) in, the core forms of vm/__init__.py out.

WHAT IT OWNS

    expand_toplevel(datum, env, positions)   one datum from the reader -> one core form
    SyntacticEnv                             the global keywords and macros (R7RS 5.3, 5.4)
    register_special_form(env, name, fn)     how the image adds its own forms later; fn gets
                                             (form, SyntaxContext) and returns core
    free_globals(core)                       the globals a core form refers to
    strip_syntax(datum)                      renamed identifiers back to plain symbols

Every syntax check happens here.  The compiler trusts the output, so a malformed form
anywhere (an improper list, a duplicate parameter, a misplaced definition, a macro use no
rule matches, an expansion that never ends) raises SyntaxViolation, a SchemeError whose
message reads "source:line:column: keyword: what is wrong" with the position of the
innermost enclosing form the reader located.

INVARIANTS OF THE OUTPUT (what vm/_compile.py may rely on)

 1. Only the core forms of vm/__init__.py appear, always well formed: (if t c a) has three
    parts, (begin e ...) at least one, lambda/let/letrec* exactly one body expression.
 2. Every local variable is a fresh uninterned Symbol (_types.gensym), bound by exactly one
    lambda, case-lambda clause, let or letrec*; so scope and shadowing never matter.
 3. Every interned Symbol in variable position is a global (possibly not defined yet).
 4. No Alias (a macro-renamed identifier) survives: quoted data is stripped.
 5. The head of a core list is a core keyword only when it is that form: a call of a global
    variable named like a core keyword (say a user's global `define`) is written
    ((begin define) arg ...).
 6. (define sym expr) appears only at top level, possibly inside top-level begins.
 7. Runtime support is reached through constants, ((quote <python callable>) arg ...), so no
    user binding can capture it.

HYGIENE: renaming with syntactic environments (explicit renaming, in the style of Clinger's
"Macros that work" and the "alias" identifiers of Chibi and Picrin)

  * A scope (Scope) maps identifiers to bindings: a Symbol for a variable (the gensym of a
    local), a SpecialForm, or a Macro.  Scopes chain to the global SyntacticEnv, where an
    unbound interned Symbol is a global variable.
  * Each time a syntax-rules template is instantiated, every identifier the template itself
    introduces becomes a fresh Alias(identifier, scope-where-the-macro-was-defined), one per
    distinct identifier per instantiation.  Pieces of the macro use (pattern variables) are
    inserted unchanged.
  * resolve(id, scope) looks id up, by object identity, through scope's chain; if it is not
    bound there and is an Alias, it resolves the wrapped identifier in the alias's own scope.
    So an introduced `if` means the `if` of the macro's definition even where the user bound
    `if` (the user's binding is keyed by the Symbol, not by the Alias), and an introduced
    binder (`tmp` in swap!) binds only that Alias, which no user identifier is.
  * Literals (else, =>, user literals) match by binding (free-identifier=?): the use and the
    literal resolve to the same binding object, or both to the same global symbol.  That is
    why a local variable named `else` is not an else clause.
  * A top-level definition of an introduced identifier defines its plain symbol (the R7RS
    top level is one flat namespace; most REPLs do the same).
  * A top-level macro's scope is None: what its template introduces resolves in the global
    environment being expanded in, so a SyntacticEnv.copy() stands on its own.

DESIGN DECISIONS

  * Derived forms are written in Python straight to core (cond, case, and, or, do, named
    let, guard, quasiquote, ...): each checks its own syntax and names itself in errors, and
    long cond/and/or/let* chains are folded with loops, not Python recursion.
  * Definitions (define, define-values, define-record-type) are parsed once into a list of
    (identifier, right-hand-side form) and then placed by context: at top level as
    (define sym ...), in a body as letrec* bindings.  Right-hand sides that the expander
    writes itself use SpecialForm objects as heads (a keyword no user binding can shadow)
    and raw Python values (callables, tuples, str) as self-evaluating constants.
  * A body (R7RS 5.3.2) is scanned in two passes: the first expands macro uses in head
    position until it sees what each form is, binding definitions as it goes (so later
    forms see them) and splicing begin, include and cond-expand; the second expands the
    right-hand sides and expressions.  Definitions after an expression are an error.
  * delay follows the R7RS 7.3 reference implementation: (delay e) is
    (delay-force (make-promise #t e)), so the runtime sees make_promise(False, thunk) where
    the thunk always returns a promise, and make_promise(True, v) must wrap v as it is
    (even when v is itself a promise).
  * include-ci reads the file in the reader's #!fold-case mode (R7RS 2.1, 4.1.7), so
    identifiers and character names fold exactly as the reader folds them.
  * let-syntax and letrec-syntax bodies are bodies (R7RS 4.3.1): definitions in them are
    local, also at top level (R6RS would splice them).
  * A top-level define of a name bound as syntax makes it a variable from then on
    (SyntacticEnv.forget), as a REPL that redefines `list` or `assert` expects.
  * import of the standard libraries (and only/except of them) is a no-op returning
    (quote None): every standard binding is always present.  prefix and rename, and
    define-library, are reported as unsupported.

OPEN QUESTIONS

  * Deep nesting: expansion recurses once per nested form (five or six Python frames), so
    expand_toplevel raises the recursion limit while it runs (RECURSION_LIMIT) and bounds
    the depth itself (MAX_NESTING).  The limit is process-wide: another thread running
    meanwhile sees the raised limit too.  The long chains of derived forms (cond, case,
    and, or, let*) are folded by loops and do not nest the expander at all.
  * Positions are keyed by id(pair): they stay right while the reader's data is alive.
  * Macros hold Python objects (compiled rules, scopes); persisting them in the image means
    persisting Macro.source and the scope it closed over; only top-level macros (scope None)
    can be rebuilt from their source alone.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from fractions import Fraction
from typing import Any, Callable, Iterator, NoReturn

from vm._types import (
    BYTEVECTOR_TYPES, EOF, NIL, VECTOR_TYPES, Char, Pair, SchemeError, SVector, Symbol, equal, eqv,
    from_iterable, gensym, intern, is_interned, is_string, text, to_list,
)

# -- limits -------------------------------------------------------------------------------

MAX_NESTING = 5_000
"""Nested form expansions in one top-level form.  Real code nests a few dozen levels and
recursive macros (my-let* over k bindings) k levels; a macro that wraps its own use in more
syntax grows without end and stops here."""

RECURSION_LIMIT = 60_000
"""Python frames expansion may use: one level of nesting takes five or six, so MAX_NESTING
levels fit.  expand_toplevel raises sys's recursion limit to this while it runs (if it is
lower).  That is safe because CPython 3.11 calls from Python functions to Python functions
do not use the C stack, and the expander recurses only through such calls."""

MAX_REWRITES = 10_000
"""Macro rewrites in a row of one form.  A recursive macro walking a list of k items takes
k rewrites; a macro that expands into its own use forever stops here, in milliseconds."""

MAX_INCLUDES = 1_000
"""Files read by one top-level form: more means a file includes itself, directly or not."""

SHOW_LIMIT = 72
"""Characters of a datum quoted in an error message (forms can be long, or circular)."""

# -- core vocabulary ----------------------------------------------------------------------

QUOTE = intern("quote")
IF = intern("if")
LAMBDA = intern("lambda")
CASE_LAMBDA = intern("case-lambda")
LET = intern("let")
LETREC_STAR = intern("letrec*")
SET = intern("set!")
DEFINE = intern("define")
BEGIN = intern("begin")
CORE_KEYWORDS = frozenset((QUOTE, IF, LAMBDA, CASE_LAMBDA, LET, LETREC_STAR, SET, DEFINE, BEGIN))

_QUASIQUOTE = intern("quasiquote")
_UNQUOTE = intern("unquote")
_UNQUOTE_SPLICING = intern("unquote-splicing")

# Where a form is being expanded (SyntaxContext.context).
TOPLEVEL = "toplevel"
BODY = "body"
EXPRESSION = "expression"

# What a special form is, for the body scanner (SpecialForm.kind).
KIND_EXPRESSION = "expression"      # expands to an expression
KIND_DEFINITION = "definition"      # parts(form, ctx) -> [(identifier or None, rhs form)]
KIND_SPLICE = "splice"              # parts(form, ctx) -> [form]: begin, include, cond-expand
KIND_SYNTAX = "syntax-definition"   # define-syntax: binds a keyword as a side effect
KIND_AUXILIARY = "auxiliary"        # else, =>, _, ...: only meaningful inside other forms

FEATURES = frozenset(
    ("r7rs", "exact-closed", "exact-complex", "ieee-float", "full-unicode", "ratios", "imago"))
"""cond-expand feature identifiers (R7RS 4.2.1, appendix B)."""

STANDARD_LIBRARIES = frozenset(
    tuple(name.split()) for name in (
        "scheme base", "scheme case-lambda", "scheme char", "scheme complex", "scheme cxr",
        "scheme eval", "scheme file", "scheme inexact", "scheme lazy", "scheme load",
        "scheme process-context", "scheme read", "scheme repl", "scheme time", "scheme write",
        "scheme r5rs", "srfi 69"))
"""Library names import and (library ...) accept, as tuples of name parts."""


# -- errors ---------------------------------------------------------------------------------

class SyntaxViolation(SchemeError):
    """Bad syntax.  The message reads "source:line:column: keyword: what is wrong"; .form is
    the offending datum and .where its (source, line, column), or None when unknown."""

    def __init__(self, message: str, form: Any = None, where: tuple | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message, kind=kind)
        self.form = form
        self.where = where


def _located(where: tuple | None, message: str) -> str:
    if where is None:
        return message
    source, line, column = where
    return f"{source}:{line}:{column}: {message}"


# -- identifiers and scopes -------------------------------------------------------------------

class Alias:
    """An identifier a macro template introduced: `name` (a Symbol, or an Alias when a macro
    defined by a macro introduces it) as seen from `scope`, the scope of the macro's
    definition (None: the global environment).  Compared by identity, like Symbols."""

    __slots__ = ("name", "scope")

    def __init__(self, name: Symbol | Alias, scope: Scope | None) -> None:
        self.name = name
        self.scope = scope

    @property
    def symbol(self) -> Symbol:
        """The plain symbol under all the renamings."""
        name = self.name
        while type(name) is Alias:
            name = name.name
        return name

    def __repr__(self) -> str:
        return f"Alias({self.symbol.name!r})"


def is_identifier(x: Any) -> bool:
    """A Symbol or an Alias (R7RS 2.1 identifiers, possibly renamed by a macro)."""
    return type(x) is Symbol or type(x) is Alias    # Symbols are interned, never subclassed


def identifier_symbol(x: Symbol | Alias) -> Symbol:
    return x.symbol if type(x) is Alias else x


def _fresh_identifier(name: str) -> Alias:
    """An identifier equal to no other: for binders the expander itself writes."""
    return Alias(intern(name), None)


class Scope:
    """One contour of local bindings: identifier -> gensym Symbol (a variable), SpecialForm
    or Macro.  parent None means the global SyntacticEnv comes next."""

    __slots__ = ("bindings", "parent")

    def __init__(self, parent: Scope | None, bindings: dict | None = None) -> None:
        self.parent = parent
        self.bindings = {} if bindings is None else bindings


class SpecialForm:
    """A keyword implemented in Python.  expand(form, ctx: SyntaxContext) returns core;
    kind and parts tell the body scanner what the form is (see KIND_*)."""

    __slots__ = ("name", "expand", "kind", "parts")

    def __init__(self, name: str, expand: Callable[[Pair, SyntaxContext], Any],
                 kind: str = KIND_EXPRESSION, parts: Callable | None = None) -> None:
        self.name = name
        self.expand = expand
        self.kind = kind
        self.parts = parts

    def __repr__(self) -> str:
        return f"#<syntax {self.name}>"


class SyntacticEnv:
    """The global syntactic environment: interned Symbol -> SpecialForm or Macro.  A symbol
    with no entry is a (global) variable."""

    __slots__ = ("_table", "version")

    def __init__(self, table: dict | None = None) -> None:
        self._table: dict[Symbol, SpecialForm | Macro] = dict(table or {})
        self.version = 0   # counts define_syntax and forget: a form that moved it defined syntax

    @classmethod
    def standard(cls) -> SyntacticEnv:
        """Every R7RS-small keyword and standard macro."""
        return cls({intern(name): form for name, form in STANDARD_FORMS.items()})

    def lookup(self, sym: Symbol) -> SpecialForm | Macro | None:
        return self._table.get(sym)

    def define_syntax(self, sym: Symbol, transformer: SpecialForm | Macro) -> None:
        if not isinstance(transformer, (SpecialForm, Macro)):
            raise TypeError(f"not a transformer: {transformer!r}")
        self.version += 1
        self._table[sym] = transformer

    def forget(self, sym: Symbol) -> None:
        """Make sym a variable again (a top-level define of a former keyword does this)."""
        if sym in self._table:
            self.version += 1
        self._table.pop(sym, None)

    def copy(self) -> SyntacticEnv:
        return SyntacticEnv(self._table)

    def names(self) -> list[Symbol]:
        return list(self._table)


def register_special_form(env: SyntacticEnv, name: str,
                          expander_fn: Callable[[Pair, SyntaxContext], Any]) -> SpecialForm:
    """Bind `name` in env to a keyword implemented by expander_fn(form, ctx) -> core form.

    form is the whole use, (name arg ...), not yet checked; ctx is a SyntaxContext:
    ctx.arguments(form, low, high, usage) checks the shape and returns the args,
    ctx.expand(x) expands an expression, ctx.expand_body(forms, form) a body with internal
    definitions, ctx.error(form, detail) reports bad syntax.  The result must be core, or
    a form built for ctx.expand with SpecialForm heads (ctx.keyword("lambda")) and raw Python
    constants.  For example the image's (transaction body ...):

        def transaction(form, ctx):
            body = ctx.arguments(form, 1, None, "(transaction body ...)")
            thunk = ctx.expand(from_iterable([ctx.keyword("lambda"), NIL, *body]))
            return from_iterable([from_iterable([QUOTE, run_in_transaction]), thunk])
    """
    form = SpecialForm(name, expander_fn)
    env.define_syntax(intern(name), form)
    return form


class SyntaxContext:
    """What a special form's expander gets besides the form: where it is (scope, and
    context: TOPLEVEL, BODY or EXPRESSION) and how to expand its parts."""

    __slots__ = ("expander", "scope", "context", "who")

    def __init__(self, expander: _Expander, scope: Scope | None, context: str, who: str) -> None:
        self.expander = expander
        self.scope = scope
        self.context = context
        self.who = who

    @property
    def is_toplevel(self) -> bool:
        return self.context is TOPLEVEL

    def expand(self, form: Any) -> Any:
        """The core of an expression in this scope."""
        return self.expander.expand(form, self.scope)

    def expand_body(self, forms: list, form: Any) -> Any:
        """The core of a <body> (R7RS 5.3.2): definitions first, then at least one expression."""
        return self.expander.expand_body(forms, self.scope, form, self.who)

    def within(self, scope: Scope | None) -> SyntaxContext:
        return SyntaxContext(self.expander, scope, EXPRESSION, self.who)

    def bind_formals(self, formals: Any, form: Any) -> tuple[SyntaxContext, Any]:
        """A context where the identifiers of formals are bound, and the core formals."""
        scope, core = self.expander.bind_formals(formals, self.scope, self.who, form)
        return self.within(scope), core

    def resolve(self, identifier: Any) -> Any:
        return self.expander.resolve(identifier, self.scope)

    def is_keyword(self, x: Any, keyword: SpecialForm) -> bool:
        """x is an identifier meaning `keyword` here (free-identifier=?)."""
        return is_identifier(x) and self.expander.resolve(x, self.scope) is keyword

    def keyword(self, name: str) -> SpecialForm:
        """A standard keyword as an object: put it at the head of a form to mean that
        keyword whatever the user has bound."""
        return STANDARD_FORMS[name]

    def error(self, form: Any, detail: str, kind: str | None = None) -> NoReturn:
        self.expander.error(form, f"{self.who}: {detail}", kind)

    def items(self, x: Any, form: Any, what: str) -> list:
        """The elements of x, a proper list, or an error naming it as `what`."""
        try:
            return to_list(x)
        except ValueError:
            self.error(form if not isinstance(x, Pair) else x, f"bad {what} {show(x)}")

    def arguments(self, form: Any, low: int, high: int | None = None,
                  usage: str | None = None) -> list:
        """The operands of form, (keyword operand ...), between low and high of them."""
        try:
            operands = to_list(form)[1:]
        except ValueError:
            self.error(form, f"bad syntax {show(form)}: not a proper list")
        if len(operands) < low or (high is not None and len(operands) > high):
            expected = f", expected {usage}" if usage else ""
            self.error(form, f"bad syntax {show(form)}{expected}")
        return operands


# -- the expander proper ------------------------------------------------------------------------

class _Expander:
    """The state of one expand_toplevel call: the environment, the reader's positions, the
    position errors are reported at (origin) and the nesting depth."""

    __slots__ = ("env", "table", "positions", "origin", "nesting", "includes")

    def __init__(self, env: SyntacticEnv, positions: dict) -> None:
        self.env = env
        self.table = env._table
        self.positions = positions
        self.origin: tuple | None = None
        self.nesting = 0
        self.includes = 0

    def error(self, form: Any, message: str, kind: str | None = None) -> NoReturn:
        where = self.positions.get(id(form)) if isinstance(form, Pair) else None
        if where is None:
            where = self.origin
        raise SyntaxViolation(_located(where, message), form, where, kind)

    def where(self, form: Any, default: tuple | None) -> tuple | None:
        where = self.positions.get(id(form)) if isinstance(form, Pair) else None
        return default if where is None else where

    def resolve(self, ident: Any, scope: Scope | None) -> Any:
        """The binding of ident in scope: a Symbol (variable), SpecialForm or Macro."""
        while True:
            s = scope
            while s is not None:
                binding = s.bindings.get(ident)
                if binding is not None:
                    return binding
                s = s.parent
            if type(ident) is not Alias:
                binding = self.table.get(ident)
                return ident if binding is None else binding
            scope = ident.scope
            ident = ident.name

    def same_binding(self, a: Any, scope_a: Scope | None, b: Any, scope_b: Scope | None) -> bool:
        """free-identifier=? (R7RS 4.3.2 literals)."""
        return self.resolve(a, scope_a) is self.resolve(b, scope_b)

    # -- expressions

    def toplevel(self, x: Any) -> Any:
        return self._expand(x, None, TOPLEVEL)

    def expand(self, x: Any, scope: Scope | None) -> Any:
        return self._expand(x, scope, EXPRESSION)

    def _expand(self, x: Any, scope: Scope | None, context: str) -> Any:
        if isinstance(x, Pair):
            return self._expand_pair(x, scope, context)
        if is_identifier(x):
            return self._variable(x, scope)
        if x is NIL:
            self.error(x, "() is not an expression (a procedure call needs an operator)")
        return _quote(strip_syntax(x))    # R7RS 4.1.2: every other datum evaluates to itself

    def _expand_pair(self, x: Pair, scope: Scope | None, context: str) -> Any:
        saved = self.origin
        where = self.positions.get(id(x))
        if where is not None:
            self.origin = where
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                self.error(x, f"expansion nested more than {MAX_NESTING} levels deep "
                              "(a macro that expands into itself?)")
            x, binding, head = self.head_expand(x, scope)
            if not isinstance(x, Pair):
                return self._expand(x, scope, context)
            if type(binding) is SpecialForm:
                return binding.expand(x, SyntaxContext(self, scope, context, _who(head, binding)))
            return self._application(x, scope, binding)
        finally:
            self.nesting -= 1
            self.origin = saved

    def head_expand(self, x: Any, scope: Scope | None) -> tuple[Any, Any, Any]:
        """Rewrite macro uses at the head of x until it is something else; returns the form,
        the binding of its head (SpecialForm, variable Symbol, or None) and the head."""
        rewrites = 0
        while isinstance(x, Pair):
            head = x.car
            if is_identifier(head):
                binding = self.resolve(head, scope)
            elif type(head) is SpecialForm:
                binding = head
            else:
                return x, None, head
            if type(binding) is not Macro:
                return x, binding, head
            rewrites += 1
            if rewrites > MAX_REWRITES:
                self.error(x, f"{binding.name}: expansion does not terminate "
                              f"(more than {MAX_REWRITES} rewrites of one form)")
            x = binding.transcribe(x, scope, self)
        return x, None, None

    def _variable(self, x: Any, scope: Scope | None) -> Symbol:
        binding = self.resolve(x, scope)
        if type(binding) is Symbol:
            return binding
        name = identifier_symbol(x).name
        if getattr(binding, "kind", None) == KIND_AUXILIARY:
            self.error(x, f"{name}: auxiliary syntax used out of place")
        self.error(x, f"{name}: syntax keyword used as a variable")

    def _application(self, x: Pair, scope: Scope | None, head_binding: Any) -> Any:
        try:
            items = to_list(x)
        except ValueError:
            self.error(x, f"bad procedure call {show(x)}: not a proper list")
        if isinstance(head_binding, Symbol):
            operator = head_binding
        else:
            operator = self.expand(items[0], scope)
        return _call_core(operator, *[self.expand(arg, scope) for arg in items[1:]])

    # -- binding

    def bind(self, scope: Scope, ident: Any) -> Symbol:
        local = gensym(identifier_symbol(ident).name)
        scope.bindings[ident] = local
        return local

    def parse_formals(self, formals: Any, who: str, form: Any) -> tuple[list, Any]:
        """The identifiers of lambda formals (R7RS 4.1.4) and the rest identifier or None.
        A circular list repeats its identifiers, so the duplicate check ends it."""
        ids: list = []
        seen: set = set()
        x = formals
        while isinstance(x, Pair):
            self._check_parameter(x.car, seen, formals, who, form)
            ids.append(x.car)
            x = x.cdr
        if x is NIL:
            return ids, None
        self._check_parameter(x, seen, formals, who, form)
        return ids, x

    def _check_parameter(self, p: Any, seen: set, formals: Any, who: str, form: Any) -> None:
        if not is_identifier(p):
            self.error(form, f"{who}: parameter {show(p)} is not an identifier in {show(formals)}")
        if p in seen:
            self.error(form, f"{who}: duplicate parameter {identifier_symbol(p).name} "
                             f"in {show(formals)}")
        seen.add(p)

    def bind_formals(self, formals: Any, scope: Scope | None, who: str,
                     form: Any) -> tuple[Scope, Any]:
        ids, rest = self.parse_formals(formals, who, form)
        inner = Scope(scope)
        locals_ = [self.bind(inner, i) for i in ids]
        return inner, from_iterable(locals_, NIL if rest is None else self.bind(inner, rest))

    # -- bodies (R7RS 5.3.2, 5.4)

    def expand_body(self, forms: list, scope: Scope | None, form: Any, who: str) -> Any:
        body = Scope(scope)
        definitions: list[tuple[Symbol, Any, tuple | None]] = []
        expressions: list[tuple[Any, tuple | None]] = []
        saved = self.origin
        try:
            self._scan_body(forms, body, definitions, expressions)
            if not expressions:
                self.origin = saved
                self.error(form, f"{who}: body has no expression in {show(form)}")
            bindings = []
            for local, rhs, origin in definitions:
                self.origin = origin
                bindings.append(_list(local, self.expand(rhs, body)))
            cores = []
            for expression, origin in expressions:
                self.origin = origin
                cores.append(self.expand(expression, body))
        finally:
            self.origin = saved
        result = _begin(cores)
        if not bindings:
            return result
        return _list(LETREC_STAR, from_iterable(bindings), result)

    def _scan_body(self, forms: list, body: Scope, definitions: list, expressions: list) -> None:
        """Pass one: find the definitions, splice begin/include/cond-expand, keep the rest."""
        pending = [(f, self.origin) for f in reversed(forms)]
        while pending:
            f, origin = pending.pop()
            self.origin = self.where(f, origin)
            f, binding, head = self.head_expand(f, body)
            kind = binding.kind if type(binding) is SpecialForm else KIND_EXPRESSION
            if kind == KIND_EXPRESSION or kind == KIND_AUXILIARY:
                expressions.append((f, self.origin))
                continue
            ctx = SyntaxContext(self, body, BODY, _who(head, binding))
            if kind == KIND_SPLICE:
                pending.extend((sub, self.origin) for sub in reversed(binding.parts(f, ctx)))
                continue
            if expressions:
                ctx.error(f, "definition after an expression in a body "
                             "(definitions come first, R7RS 5.3.2)")
            if kind == KIND_SYNTAX:
                binding.expand(f, ctx)
                continue
            for ident, rhs in binding.parts(f, ctx):
                self._define_local(body, ident, rhs, f, ctx, definitions)

    def _define_local(self, body: Scope, ident: Any, rhs: Any, form: Any, ctx: SyntaxContext,
                      definitions: list) -> None:
        if ident is None:
            definitions.append((gensym("_"), rhs, self.origin))
            return
        if ident in body.bindings:
            ctx.error(form, f"duplicate definition of {identifier_symbol(ident).name} in a body")
        definitions.append((self.bind(body, ident), rhs, self.origin))

    # -- top level (R7RS 5.2, 5.3.1)

    def toplevel_sequence(self, forms: list) -> Any:
        cores = [self.toplevel(f) for f in forms]
        return _begin(cores) if cores else _unspecified()

    def toplevel_definitions(self, specs: list) -> Any:
        cores = []
        for ident, rhs in specs:
            if ident is None:
                cores.append(self.expand(rhs, None))
                continue
            sym = identifier_symbol(ident)
            self.env.forget(sym)    # a former keyword is a variable from now on
            cores.append(_list(DEFINE, sym, self.expand(rhs, None)))
        return _begin(cores)


def _who(head: Any, binding: Any) -> str:
    """The keyword as the user wrote it, for messages."""
    return identifier_symbol(head).name if is_identifier(head) else binding.name


# -- core builders --------------------------------------------------------------------------------

def _list(*items: Any) -> Any:
    return from_iterable(items)


def _quote(value: Any) -> Pair:
    return Pair(QUOTE, Pair(value, NIL))


def _unspecified() -> Pair:
    return _quote(None)


def _begin(cores: list) -> Any:
    return cores[0] if len(cores) == 1 else Pair(BEGIN, from_iterable(cores))


def _lambda(formals: Any, body: Any) -> Pair:
    return _list(LAMBDA, formals, body)


def _let1(local: Symbol, init: Any, body: Any) -> Pair:
    return _list(LET, _list(_list(local, init)), body)


def _call_core(operator: Any, *args: Any) -> Pair:
    """An application; a global named like a core keyword is written (begin name)."""
    if operator in CORE_KEYWORDS:
        operator = _list(BEGIN, operator)
    return Pair(operator, from_iterable(args))


def _call_constant(procedure: Callable, *args: Any) -> Pair:
    return Pair(_quote(procedure), from_iterable(args))


def _runtime(name: str) -> Callable:
    """A procedure of vm/_runtime.py, imported when first needed (it imports this module)."""
    from vm import _runtime as runtime
    return getattr(runtime, name)


# -- runtime helpers the expansions embed as constants ------------------------------------------

def quasi_cons_star(*items: Any) -> Any:
    """(x1 ... xn . tail) for quasiquote: the last argument is the tail."""
    result = items[-1]
    for item in reversed(items[:-1]):
        result = Pair(item, result)
    return result


def quasi_append(spliced: Any, tail: Any) -> Any:
    """The elements of spliced (,@ in quasiquote) in front of tail; spliced is copied."""
    try:
        return from_iterable(to_list(spliced), tail)
    except ValueError:
        raise SchemeError("unquote-splicing: not a proper list", spliced) from None


def quasi_vector(items: Any) -> SVector:
    """A vector of the elements of a list, for a quasiquoted vector with unquotes."""
    return SVector(to_list(items))


def case_memv(key: Any, data: tuple) -> bool:
    """case (R7RS 4.2.1): is key eqv? to one of the data?"""
    for datum in data:
        if eqv(key, datum):
            return True
    return False


def parameter_list(*items: Any) -> list:
    """The Python list of parameters or values with_parameters takes."""
    return list(items)


# -- macros: syntax-rules (R7RS 4.3.2) ------------------------------------------------------------

class _Many(tuple):
    """The matches of a pattern variable under an ellipsis, one per repetition."""

    __slots__ = ()


class Macro:
    """A syntax-rules transformer: its rules, compiled when defined, and the scope it was
    defined in (None: the top level).  source is the (syntax-rules ...) form."""

    __slots__ = ("name", "rules", "scope", "source")

    def __init__(self, name: str, rules: list, scope: Scope | None, source: Any) -> None:
        self.name = name
        self.rules = rules
        self.scope = scope
        self.source = source

    def __repr__(self) -> str:
        return f"#<macro {self.name}>"

    def transcribe(self, form: Pair, use_scope: Scope | None, expander: _Expander) -> Any:
        """The expansion of one use: the template of the first rule whose pattern matches."""
        match = _Match(expander, use_scope, self.scope)
        try:
            for pattern, template in self.rules:
                bindings: dict = {}
                if pattern.match(form.cdr, bindings, match):
                    return template.expand(bindings, _Transcription(self, expander, form))
        except ValueError:   # a circular list where a pattern has an ellipsis
            expander.error(form, f"{self.name}: circular list in {show(form)}")
        expander.error(form, f"{self.name}: no syntax-rules pattern matches {show(form)}")


class _Match:
    __slots__ = ("expander", "use_scope", "macro_scope")

    def __init__(self, expander: _Expander, use_scope: Scope | None,
                 macro_scope: Scope | None) -> None:
        self.expander = expander
        self.use_scope = use_scope
        self.macro_scope = macro_scope


class _Transcription:
    """One instantiation of a template: its renames (fresh Aliases) and where to complain."""

    __slots__ = ("macro", "expander", "form", "renames")

    def __init__(self, macro: Macro, expander: _Expander, form: Pair) -> None:
        self.macro = macro
        self.expander = expander
        self.form = form
        self.renames: dict = {}

    def rename(self, ident: Any) -> Alias:
        alias = self.renames.get(ident)
        if alias is None:
            alias = self.renames[ident] = Alias(ident, self.macro.scope)
        return alias

    def error(self, detail: str) -> NoReturn:
        self.expander.error(self.form, f"{self.macro.name}: {detail}")


# Patterns.  match(x, bindings, m) -> bool fills bindings: pattern variable -> datum,
# or a _Many per enclosing ellipsis.

class _PVar:
    __slots__ = ("ident",)

    def __init__(self, ident: Any) -> None:
        self.ident = ident

    def match(self, x: Any, bindings: dict, m: _Match) -> bool:
        bindings[self.ident] = x
        return True


class _PAny:
    __slots__ = ()

    def match(self, x: Any, bindings: dict, m: _Match) -> bool:
        return True


class _PLiteral:
    __slots__ = ("ident",)

    def __init__(self, ident: Any) -> None:
        self.ident = ident

    def match(self, x: Any, bindings: dict, m: _Match) -> bool:
        return is_identifier(x) and m.expander.same_binding(
            x, m.use_scope, self.ident, m.macro_scope)


class _PConst:
    __slots__ = ("datum",)

    def __init__(self, datum: Any) -> None:
        self.datum = datum

    def match(self, x: Any, bindings: dict, m: _Match) -> bool:
        return equal(self.datum, x)


class _PList:
    """(before ... [repeated <ellipsis>] after ... . tail); tail None means ()."""

    __slots__ = ("before", "repeated", "repeated_vars", "after", "tail")

    def __init__(self, before: list, repeated: Any, repeated_vars: list, after: list,
                 tail: Any) -> None:
        self.before = before
        self.repeated = repeated
        self.repeated_vars = repeated_vars
        self.after = after
        self.tail = tail

    def match(self, x: Any, bindings: dict, m: _Match) -> bool:
        if self.repeated is None:
            for node in self.before:
                if not isinstance(x, Pair) or not node.match(x.car, bindings, m):
                    return False
                x = x.cdr
            return x is NIL if self.tail is None else self.tail.match(x, bindings, m)
        items, end = _split_list(x)
        n_repeated = len(items) - len(self.before) - len(self.after)
        if n_repeated < 0:
            return False
        if self.tail is None and end is not NIL:
            return False
        for node, item in zip(self.before, items):
            if not node.match(item, bindings, m):
                return False
        start = len(self.before)
        if not self._match_repeated(items[start:start + n_repeated], bindings, m):
            return False
        for node, item in zip(self.after, items[start + n_repeated:]):
            if not node.match(item, bindings, m):
                return False
        return self.tail is None or self.tail.match(end, bindings, m)

    def _match_repeated(self, items: list, bindings: dict, m: _Match) -> bool:
        matches = []
        for item in items:
            sub: dict = {}
            if not self.repeated.match(item, sub, m):
                return False
            matches.append(sub)
        for var in self.repeated_vars:
            bindings[var] = _Many(sub[var] for sub in matches)
        return True


class _PVector:
    __slots__ = ("elements",)

    def __init__(self, elements: _PList) -> None:
        self.elements = elements

    def match(self, x: Any, bindings: dict, m: _Match) -> bool:
        return isinstance(x, VECTOR_TYPES) and self.elements.match(from_iterable(x), bindings, m)


# Templates.  expand(bindings, transcription) -> datum.  vars maps the pattern variables
# occurring in the template to their ellipsis depth in the pattern.

_NO_VARS: dict = {}


class _TVar:
    __slots__ = ("ident", "vars")

    def __init__(self, ident: Any, depth: int) -> None:
        self.ident = ident
        self.vars = {ident: depth}

    def expand(self, bindings: dict, tx: _Transcription) -> Any:
        return bindings[self.ident]


class _TIdent:
    __slots__ = ("ident",)
    vars = _NO_VARS

    def __init__(self, ident: Any) -> None:
        self.ident = ident

    def expand(self, bindings: dict, tx: _Transcription) -> Any:
        return tx.rename(self.ident)


class _TConst:
    __slots__ = ("datum",)
    vars = _NO_VARS

    def __init__(self, datum: Any) -> None:
        self.datum = datum

    def expand(self, bindings: dict, tx: _Transcription) -> Any:
        return self.datum


class _TList:
    """Elements (template, number of ellipses after it) and a tail template (None: ())."""

    __slots__ = ("elements", "tail", "vars")

    def __init__(self, elements: list, tail: Any) -> None:
        self.elements = elements
        self.tail = tail
        self.vars: dict = {}
        for node, _ in elements:
            self.vars.update(node.vars)
        if tail is not None:
            self.vars.update(tail.vars)

    def expand(self, bindings: dict, tx: _Transcription) -> Any:
        out: list = []
        for node, ellipses in self.elements:
            if ellipses:
                _repeat(node, ellipses, bindings, tx, out)
            else:
                out.append(node.expand(bindings, tx))
        tail = NIL if self.tail is None else self.tail.expand(bindings, tx)
        return from_iterable(out, tail)


def _repeat(node: Any, ellipses: int, bindings: dict, tx: _Transcription, out: list) -> None:
    """Append the expansions of node followed by `ellipses` ellipses: one per match of the
    pattern variables still under an ellipsis (all must have matched as many times)."""
    driving = [v for v in node.vars if type(bindings[v]) is _Many]
    if not driving:
        tx.error("a template ellipsis follows no pattern variable matched under an ellipsis")
    count = len(bindings[driving[0]])
    for var in driving[1:]:
        if len(bindings[var]) != count:
            tx.error(f"pattern variables {identifier_symbol(driving[0]).name} and "
                     f"{identifier_symbol(var).name} repeat {count} and "
                     f"{len(bindings[var])} times under one ellipsis")
    for i in range(count):
        inner = {v: bindings[v] for v in node.vars}
        for var in driving:
            inner[var] = bindings[var][i]
        if ellipses == 1:
            out.append(node.expand(inner, tx))
        else:
            _repeat(node, ellipses - 1, inner, tx, out)


class _TVector:
    __slots__ = ("elements", "vars")

    def __init__(self, elements: _TList) -> None:
        self.elements = elements
        self.vars = elements.vars

    def expand(self, bindings: dict, tx: _Transcription) -> Any:
        return SVector(to_list(self.elements.expand(bindings, tx)))


class _RuleCompiler:
    """Compiles the rules of one syntax-rules form, checking them (R7RS 4.3.2)."""

    def __init__(self, expander: _Expander, scope: Scope | None, ellipsis: Any,
                 literals: list, ctx: SyntaxContext, spec: Any) -> None:
        self.expander = expander
        self.scope = scope
        self.custom_ellipsis = ellipsis
        self.literals = set(literals)
        self.ctx = ctx
        self.spec = spec
        self.vars: dict = {}

    def fail(self, detail: str, rule: Any) -> NoReturn:
        self.ctx.error(rule, f"{detail} in {show(rule)}")

    def is_ellipsis(self, x: Any) -> bool:
        if not is_identifier(x) or x in self.literals:
            return False
        if self.custom_ellipsis is not None:
            return x is self.custom_ellipsis
        return self.expander.resolve(x, self.scope) is STANDARD_FORMS["..."]

    def is_underscore(self, x: Any) -> bool:
        return x not in self.literals and self.expander.resolve(x, self.scope) is STANDARD_FORMS["_"]

    def rule(self, rule: Any) -> tuple:
        try:
            parts = to_list(rule)
        except ValueError:
            parts = ()
        if len(parts) != 2:
            self.fail("a rule must be (pattern template)", rule)
        pattern, template = parts
        if not isinstance(pattern, Pair):
            self.fail("a pattern must be a list starting with the keyword", rule)
        self.vars = {}
        compiled_pattern = self.pattern(pattern.cdr, 0, rule)
        return compiled_pattern, self.template(template, 0, False, rule)

    def pattern(self, p: Any, depth: int, rule: Any) -> Any:
        if is_identifier(p):
            return self._pattern_identifier(p, depth, rule)
        if isinstance(p, Pair):
            items, tail = self._split(p, rule)
            if tail is not NIL and self.is_ellipsis(tail):
                self.fail("an ellipsis cannot be the tail of a pattern", rule)
            node = self._pattern_sequence(items, depth, rule)
            node.tail = None if tail is NIL else self.pattern(tail, depth, rule)
            return node
        if isinstance(p, VECTOR_TYPES):
            return _PVector(self._pattern_sequence(list(p), depth, rule))
        return _PConst(p)

    def _pattern_identifier(self, p: Any, depth: int, rule: Any) -> Any:
        if p in self.literals:
            return _PLiteral(p)
        if self.is_underscore(p):
            return _PAny()
        if self.is_ellipsis(p):
            self.fail("misplaced ellipsis in pattern", rule)
        if p in self.vars:
            self.fail(f"pattern variable {identifier_symbol(p).name} appears twice", rule)
        self.vars[p] = depth
        return _PVar(p)

    def _pattern_sequence(self, items: list, depth: int, rule: Any) -> _PList:
        marks = [i for i, item in enumerate(items) if self.is_ellipsis(item)]
        if len(marks) > 1:
            self.fail("more than one ellipsis in one list pattern", rule)
        if not marks:
            return _PList([self.pattern(i, depth, rule) for i in items], None, [], [], None)
        k = marks[0]
        if k == 0:
            self.fail("an ellipsis must follow a subpattern", rule)
        before = [self.pattern(i, depth, rule) for i in items[:k - 1]]
        known = set(self.vars)
        repeated = self.pattern(items[k - 1], depth + 1, rule)
        repeated_vars = [v for v in self.vars if v not in known]
        after = [self.pattern(i, depth, rule) for i in items[k + 1:]]
        return _PList(before, repeated, repeated_vars, after, None)

    def template(self, t: Any, depth: int, escaped: bool, rule: Any) -> Any:
        if is_identifier(t):
            if t in self.vars:
                if depth < self.vars[t]:
                    self.fail(f"pattern variable {identifier_symbol(t).name} needs "
                              f"{self.vars[t]} ellipses after it in the template", rule)
                return _TVar(t, self.vars[t])
            if not escaped and self.is_ellipsis(t):
                self.fail("misplaced ellipsis in template", rule)
            return _TIdent(t)
        if isinstance(t, Pair):
            if not escaped and self.is_ellipsis(t.car):
                return self._escape(t, depth, rule)
            items, tail = self._split(t, rule)
            if tail is not NIL and not escaped and self.is_ellipsis(tail):
                self.fail("an ellipsis cannot be the tail of a template", rule)
            elements = self._template_sequence(items, depth, escaped, rule)
            node = _TList(elements, None if tail is NIL else self.template(tail, depth, escaped, rule))
            return _TConst(t) if _constant_template(node) else node
        if isinstance(t, VECTOR_TYPES):
            node = _TList(self._template_sequence(list(t), depth, escaped, rule), None)
            return _TConst(t) if _constant_template(node) else _TVector(node)
        return _TConst(t)

    def _escape(self, t: Pair, depth: int, rule: Any) -> Any:
        """(... template): template with ellipses as plain identifiers (R7RS 4.3.2)."""
        if not (isinstance(t.cdr, Pair) and t.cdr.cdr is NIL):
            self.fail("an ellipsis escape is (... template)", rule)
        return self.template(t.cdr.car, depth, True, rule)

    def _template_sequence(self, items: list, depth: int, escaped: bool, rule: Any) -> list:
        elements = []
        i = 0
        while i < len(items):
            ellipses = 0
            while not escaped and i + 1 + ellipses < len(items) \
                    and self.is_ellipsis(items[i + 1 + ellipses]):
                ellipses += 1
            node = self.template(items[i], depth + ellipses, escaped, rule)
            if ellipses and max((d - depth for d in node.vars.values()), default=0) < ellipses:
                self.fail(f"{show(items[i])} is followed by {ellipses} ellipses but has no "
                          f"pattern variable matched under as many", rule)
            elements.append((node, ellipses))
            i += 1 + ellipses
        return elements

    def _split(self, x: Any, rule: Any) -> tuple[list, Any]:
        try:
            return _split_list(x)
        except ValueError:
            self.fail("circular list", rule)


def _constant_template(node: _TList) -> bool:
    """No pattern variable, identifier or ellipsis inside: the datum can be reused as is."""
    parts = [n for n, _ in node.elements] + ([node.tail] if node.tail is not None else [])
    return all(type(n) is _TConst for n in parts) and not any(e for _, e in node.elements)


def _split_list(x: Any) -> tuple[list, Any]:
    """The elements of a list, proper or not, and its final cdr; ValueError if circular."""
    items = []
    slow = x
    while isinstance(x, Pair):
        items.append(x.car)
        x = x.cdr
        if not len(items) % 2:
            slow = slow.cdr
            if slow is x and isinstance(x, Pair):
                raise ValueError("circular list")
    return items, x


def _make_transformer(spec: Any, scope: Scope | None, ctx: SyntaxContext) -> Macro | SpecialForm:
    """The transformer a <transformer spec> denotes: (syntax-rules ...), a macro use that
    expands to one, or the name of another keyword (an alias of it)."""
    x = ctx.expander
    spec, binding, _ = x.head_expand(spec, scope)
    if is_identifier(spec):
        binding = x.resolve(spec, scope)
        if isinstance(binding, (Macro, SpecialForm)):
            return binding
        ctx.error(spec, f"{show(spec)} is not a syntax keyword")
    if isinstance(spec, Pair) and binding is STANDARD_FORMS["syntax-rules"]:
        return _compile_syntax_rules(spec, scope, ctx)
    ctx.error(spec, f"expected a (syntax-rules ...) transformer, got {show(spec)}")


def _compile_syntax_rules(spec: Pair, scope: Scope | None, ctx: SyntaxContext) -> Macro:
    args = ctx.items(spec, spec, "syntax-rules form")[1:]
    ellipsis = None
    if args and is_identifier(args[0]):
        ellipsis, args = args[0], args[1:]
    if not args:
        ctx.error(spec, f"syntax-rules needs a literals list: {show(spec)}")
    literals = ctx.items(args[0], spec, "syntax-rules literals")
    for literal in literals:
        if not is_identifier(literal):
            ctx.error(spec, f"syntax-rules literal {show(literal)} is not an identifier")
    compiler = _RuleCompiler(ctx.expander, scope, ellipsis, literals, ctx, spec)
    rules = [compiler.rule(rule) for rule in args[1:]]
    return Macro(ctx.who, rules, scope, spec)


# -- the standard special forms -------------------------------------------------------------------
# One function per keyword, each with its R7RS syntax in the docstring.

def _sf_quote(form: Pair, ctx: SyntaxContext) -> Any:
    """(quote datum), R7RS 4.1.2."""
    (datum,) = ctx.arguments(form, 1, 1, "(quote datum)")
    return _quote(strip_syntax(datum))


def _sf_if(form: Pair, ctx: SyntaxContext) -> Any:
    """(if test consequent [alternate]), R7RS 4.1.5."""
    args = ctx.arguments(form, 2, 3, "(if test consequent [alternate])")
    alternate = ctx.expand(args[2]) if len(args) == 3 else _unspecified()
    return _list(IF, ctx.expand(args[0]), ctx.expand(args[1]), alternate)


def _sf_lambda(form: Pair, ctx: SyntaxContext) -> Any:
    """(lambda formals body ...), R7RS 4.1.4."""
    args = ctx.arguments(form, 2, None, "(lambda formals body ...)")
    inner, formals = ctx.bind_formals(args[0], form)
    return _lambda(formals, inner.expand_body(args[1:], form))


def _sf_case_lambda(form: Pair, ctx: SyntaxContext) -> Any:
    """(case-lambda (formals body ...) ...), R7RS 4.2.9."""
    clauses = []
    for clause in ctx.arguments(form, 0, None, "(case-lambda (formals body ...) ...)"):
        items = ctx.items(clause, form, "case-lambda clause")
        if len(items) < 2:
            ctx.error(clause, f"bad clause {show(clause)}, expected (formals body ...)")
        inner, formals = ctx.bind_formals(items[0], clause)
        clauses.append(_list(formals, inner.expand_body(items[1:], clause)))
    return Pair(CASE_LAMBDA, from_iterable(clauses))


def _sf_set(form: Pair, ctx: SyntaxContext) -> Any:
    """(set! variable expression), R7RS 4.1.6."""
    target, value = ctx.arguments(form, 2, 2, "(set! variable expression)")
    if not is_identifier(target):
        ctx.error(form, f"{show(target)} is not a variable")
    binding = ctx.resolve(target)
    if not isinstance(binding, Symbol):
        ctx.error(form, f"cannot assign to the syntax keyword {identifier_symbol(target).name}")
    return _list(SET, binding, ctx.expand(value))


def _begin_parts(form: Pair, ctx: SyntaxContext) -> list:
    """(begin form ...), R7RS 4.2.3 and 5.6.1 (at top level and in bodies it splices)."""
    forms = ctx.arguments(form, 0)
    if not forms and ctx.context is EXPRESSION:
        ctx.error(form, "(begin) with no expression is not an expression")
    return forms


def _splicing(parts: Callable[[Pair, SyntaxContext], list]) -> Callable:
    """The expander of a splicing form outside bodies: at top level each part is a top-level
    form; in an expression the parts are a sequence (none: unspecified)."""
    def expand(form: Pair, ctx: SyntaxContext) -> Any:
        forms = parts(form, ctx)
        if ctx.is_toplevel:
            return ctx.expander.toplevel_sequence(forms)
        if not forms:
            return _unspecified()
        return _begin([ctx.expand(f) for f in forms])
    return expand


def _definition(parts: Callable[[Pair, SyntaxContext], list]) -> Callable:
    """The expander of a definition outside bodies: top-level defines, else an error."""
    def expand(form: Pair, ctx: SyntaxContext) -> Any:
        if not ctx.is_toplevel:
            ctx.error(form, "definition in an expression context "
                            "(definitions go at top level or at the start of a body)")
        return ctx.expander.toplevel_definitions(parts(form, ctx))
    return expand


def _define_parts(form: Pair, ctx: SyntaxContext) -> list:
    """(define variable expression) | (define (variable . formals) body ...), R7RS 5.3."""
    usage = "(define name expression) or (define (name . formals) body ...)"
    args = ctx.arguments(form, 2, None, usage)
    target = args[0]
    if is_identifier(target):
        if len(args) != 2:
            ctx.error(form, f"bad syntax {show(form)}, expected {usage}")
        return [(target, args[1])]
    if isinstance(target, Pair) and is_identifier(target.car):
        ctx.expander.parse_formals(target.cdr, ctx.who, form)
        return [(target.car, Pair(STANDARD_FORMS["lambda"], Pair(target.cdr, from_iterable(args[1:]))))]
    ctx.error(form, f"cannot define {show(target)}, expected {usage}")


def _define_values_parts(form: Pair, ctx: SyntaxContext) -> list:
    """(define-values formals expression), R7RS 5.3.3: each variable is first defined
    unspecified, then set from the values (as in the R7RS reference definition)."""
    formals, expression = ctx.arguments(form, 2, 2, "(define-values formals expression)")
    ids, rest = ctx.expander.parse_formals(formals, ctx.who, form)
    temps = [_fresh_identifier(identifier_symbol(i).name) for i in ids]
    rest_temp = None if rest is None else _fresh_identifier(identifier_symbol(rest).name)
    set_, lambda_, quote_ = (STANDARD_FORMS[name] for name in ("set!", "lambda", "quote"))
    assignments = [_list(set_, i, t) for i, t in zip(ids, temps)]
    if rest is not None:
        assignments.append(_list(set_, rest, rest_temp))
    consumer = Pair(lambda_, Pair(from_iterable(temps, rest_temp or NIL),
                                  from_iterable(assignments or [_unspecified()])))
    store = _list(_runtime("call_with_values"), _list(lambda_, NIL, expression), consumer)
    variables = ids + ([] if rest is None else [rest])
    return [(v, _list(quote_, None)) for v in variables] + [(None, store)]


def _record_parts(form: Pair, ctx: SyntaxContext) -> list:
    """(define-record-type name constructor predicate field ...), R7RS 5.5.
    constructor: (make field ...) | make (all fields in order) | #f;  predicate: name | #f;
    field: (field accessor) | (field accessor modifier)."""
    args = ctx.arguments(form, 3, None, "(define-record-type name constructor predicate field ...)")
    type_name, constructor, predicate, *field_specs = args
    if not is_identifier(type_name):
        ctx.error(form, f"the record type name {show(type_name)} is not an identifier")
    fields, procedures = _record_fields(field_specs, ctx, form)
    parts = [(type_name, _list(_runtime("make_record_type"),
                               identifier_symbol(type_name).name, tuple(fields)))]
    if constructor is not False:
        make, make_fields = _record_constructor(constructor, fields, ctx, form)
        parts.append((make, _list(_runtime("record_constructor"), type_name, make_fields)))
    if predicate is not False:
        if not is_identifier(predicate):
            ctx.error(form, f"the predicate name {show(predicate)} is not an identifier")
        parts.append((predicate, _list(_runtime("record_predicate"), type_name)))
    for ident, maker, field in procedures:
        parts.append((ident, _list(_runtime(maker), type_name, field)))
    return parts


def _record_fields(specs: list, ctx: SyntaxContext, form: Pair) -> tuple[list, list]:
    fields: list[str] = []
    procedures = []
    for spec in specs:
        items = ctx.items(spec, form, "field spec")
        if not 2 <= len(items) <= 3 or not all(is_identifier(i) for i in items):
            ctx.error(spec, f"bad field spec {show(spec)}, expected (field accessor [modifier])")
        name = identifier_symbol(items[0]).name
        if name in fields:
            ctx.error(spec, f"duplicate field {name}")
        fields.append(name)
        procedures.append((items[1], "record_accessor", name))
        if len(items) == 3:
            procedures.append((items[2], "record_modifier", name))
    return fields, procedures


def _record_constructor(spec: Any, fields: list, ctx: SyntaxContext, form: Pair) -> tuple:
    if is_identifier(spec):
        return spec, tuple(fields)
    items = ctx.items(spec, form, "constructor spec")
    if not items or not all(is_identifier(i) for i in items):
        ctx.error(spec, f"bad constructor spec {show(spec)}, expected (name field ...)")
    names = [identifier_symbol(i).name for i in items[1:]]
    for name in names:
        if name not in fields:
            ctx.error(spec, f"constructor field {name} is not a field of the record type")
        if names.count(name) > 1:
            ctx.error(spec, f"constructor field {name} appears twice")
    return items[0], tuple(names)


def _sf_define_syntax(form: Pair, ctx: SyntaxContext) -> Any:
    """(define-syntax keyword transformer), R7RS 5.4."""
    name, spec = ctx.arguments(form, 2, 2, "(define-syntax keyword transformer)")
    if not is_identifier(name):
        ctx.error(form, f"{show(name)} is not an identifier")
    if ctx.context is EXPRESSION:
        ctx.error(form, "definition in an expression context "
                        "(definitions go at top level or at the start of a body)")
    if ctx.context is BODY and name in ctx.scope.bindings:
        ctx.error(form, f"duplicate definition of {identifier_symbol(name).name} in a body")
    named = SyntaxContext(ctx.expander, ctx.scope, ctx.context, identifier_symbol(name).name)
    transformer = _make_transformer(spec, ctx.scope, named)
    if ctx.is_toplevel:
        ctx.expander.env.define_syntax(identifier_symbol(name), transformer)
    else:
        ctx.scope.bindings[name] = transformer
    return _unspecified()


def _syntax_bindings(form: Pair, ctx: SyntaxContext, recursive: bool) -> Any:
    """(let-syntax ((keyword transformer) ...) body ...) and letrec-syntax, R7RS 4.3.1."""
    args = ctx.arguments(form, 2, None, f"({ctx.who} ((keyword transformer) ...) body ...)")
    inner = Scope(ctx.scope)
    for keyword, spec in _variable_bindings(args[0], ctx, form, unique=True):
        named = SyntaxContext(ctx.expander, inner, ctx.context, identifier_symbol(keyword).name)
        inner.bindings[keyword] = _make_transformer(spec, inner if recursive else ctx.scope, named)
    return ctx.expander.expand_body(args[1:], inner, form, ctx.who)


def _sf_let_syntax(form: Pair, ctx: SyntaxContext) -> Any:
    return _syntax_bindings(form, ctx, recursive=False)


def _sf_letrec_syntax(form: Pair, ctx: SyntaxContext) -> Any:
    return _syntax_bindings(form, ctx, recursive=True)


def _sf_syntax_rules(form: Pair, ctx: SyntaxContext) -> NoReturn:
    ctx.error(form, "only valid as the transformer of define-syntax, let-syntax or letrec-syntax")


def _sf_syntax_error(form: Pair, ctx: SyntaxContext) -> NoReturn:
    """(syntax-error message args ...), R7RS 4.3.3: reported when expanded."""
    args = ctx.arguments(form, 1, None, "(syntax-error message args ...)")
    if not is_string(args[0]):
        ctx.error(form, f"the message {show(args[0])} is not a string")
    ctx.expander.error(form, " ".join([text(args[0])] + [show(a) for a in args[1:]]))


def _sf_auxiliary(form: Pair, ctx: SyntaxContext) -> NoReturn:
    ctx.error(form, f"auxiliary syntax used out of place in {show(form)}")


def _binding_pairs(spec: Any, ctx: SyntaxContext, form: Pair, identifiers: bool) -> list:
    """((name value) ...) as [(name, value)], each name an identifier if asked."""
    pairs = []
    for binding in ctx.items(spec, form, "binding list"):
        try:
            items = to_list(binding)
        except ValueError:
            items = ()
        if len(items) != 2 or (identifiers and not is_identifier(items[0])):
            ctx.error(binding if isinstance(binding, Pair) else form, f"bad binding {show(binding)}")
        pairs.append((items[0], items[1]))
    return pairs


def _variable_bindings(spec: Any, ctx: SyntaxContext, form: Pair, unique: bool) -> list:
    pairs = _binding_pairs(spec, ctx, form, identifiers=True)
    if unique:
        seen: set = set()
        for name, _ in pairs:
            if name in seen:
                ctx.error(form, f"duplicate variable {identifier_symbol(name).name}")
            seen.add(name)
    return pairs


def _sf_let(form: Pair, ctx: SyntaxContext) -> Any:
    """(let ((variable init) ...) body ...) and named let, R7RS 4.2.2 and 4.2.4."""
    args = ctx.arguments(form, 2, None, "(let [name] ((variable init) ...) body ...)")
    if is_identifier(args[0]):
        return _named_let(form, args, ctx)
    bindings = _variable_bindings(args[0], ctx, form, unique=True)
    inits = [ctx.expand(init) for _, init in bindings]
    inner = Scope(ctx.scope)
    locals_ = [ctx.expander.bind(inner, name) for name, _ in bindings]
    body = ctx.expander.expand_body(args[1:], inner, form, ctx.who)
    if not bindings:
        return body
    return _list(LET, from_iterable(_list(v, i) for v, i in zip(locals_, inits)), body)


def _named_let(form: Pair, args: list, ctx: SyntaxContext) -> Any:
    if len(args) < 3:
        ctx.error(form, f"bad syntax {show(form)}, expected (let name ((variable init) ...) body ...)")
    bindings = _variable_bindings(args[1], ctx, form, unique=True)
    inits = [ctx.expand(init) for _, init in bindings]
    x = ctx.expander
    outer = Scope(ctx.scope)
    loop = x.bind(outer, args[0])
    inner = Scope(outer)
    locals_ = [x.bind(inner, name) for name, _ in bindings]
    procedure = _lambda(from_iterable(locals_), x.expand_body(args[2:], inner, form, ctx.who))
    return _list(LETREC_STAR, _list(_list(loop, procedure)), Pair(loop, from_iterable(inits)))


def _sf_let_star(form: Pair, ctx: SyntaxContext) -> Any:
    """(let* ((variable init) ...) body ...), R7RS 4.2.2."""
    args = ctx.arguments(form, 2, None, "(let* ((variable init) ...) body ...)")
    scope = ctx.scope
    steps = []
    for name, init in _variable_bindings(args[0], ctx, form, unique=False):
        init_core = ctx.expander.expand(init, scope)
        scope = Scope(scope)
        steps.append((ctx.expander.bind(scope, name), init_core))
    result = ctx.expander.expand_body(args[1:], scope, form, ctx.who)
    for local, init in reversed(steps):
        result = _let1(local, init, result)
    return result


def _sf_letrec(form: Pair, ctx: SyntaxContext) -> Any:
    """(letrec ((variable init) ...) body ...) and letrec*, R7RS 4.2.2 (both as letrec*)."""
    args = ctx.arguments(form, 2, None, f"({ctx.who} ((variable init) ...) body ...)")
    bindings = _variable_bindings(args[0], ctx, form, unique=True)
    inner = Scope(ctx.scope)
    locals_ = [ctx.expander.bind(inner, name) for name, _ in bindings]
    inits = [ctx.expander.expand(init, inner) for _, init in bindings]
    body = ctx.expander.expand_body(args[1:], inner, form, ctx.who)
    if not bindings:
        return body
    return _list(LETREC_STAR, from_iterable(_list(v, i) for v, i in zip(locals_, inits)), body)


def _values_bindings(form: Pair, ctx: SyntaxContext) -> tuple[list, list]:
    args = ctx.arguments(form, 2, None, f"({ctx.who} ((formals init) ...) body ...)")
    return _binding_pairs(args[0], ctx, form, identifiers=False), args[1:]


def _receive(init: Any, formals: Any, body: Any) -> Pair:
    return _call_constant(_runtime("call_with_values"), _lambda(NIL, init), _lambda(formals, body))


def _sf_let_values(form: Pair, ctx: SyntaxContext) -> Any:
    """(let-values ((formals init) ...) body ...), R7RS 4.2.2: inits see the outer scope."""
    bindings, body = _values_bindings(form, ctx)
    x = ctx.expander
    inner = Scope(ctx.scope)
    seen: set = set()
    steps = []
    for formals, init in bindings:
        ids, rest = x.parse_formals(formals, ctx.who, form)
        for i in ids + ([] if rest is None else [rest]):
            if i in seen:
                ctx.error(form, f"duplicate variable {identifier_symbol(i).name}")
            seen.add(i)
        locals_ = [x.bind(inner, i) for i in ids]
        core_formals = from_iterable(locals_, NIL if rest is None else x.bind(inner, rest))
        steps.append((core_formals, ctx.expand(init)))
    result = x.expand_body(body, inner, form, ctx.who)
    for core_formals, init in reversed(steps):
        result = _receive(init, core_formals, result)
    return result


def _sf_let_star_values(form: Pair, ctx: SyntaxContext) -> Any:
    """(let*-values ((formals init) ...) body ...), R7RS 4.2.2: each init sees the previous."""
    bindings, body = _values_bindings(form, ctx)
    x = ctx.expander
    scope = ctx.scope
    steps = []
    for formals, init in bindings:
        init_core = x.expand(init, scope)
        scope, core_formals = x.bind_formals(formals, scope, ctx.who, form)
        steps.append((core_formals, init_core))
    result = x.expand_body(body, scope, form, ctx.who)
    for core_formals, init in reversed(steps):
        result = _receive(init, core_formals, result)
    return result


def _sf_and(form: Pair, ctx: SyntaxContext) -> Any:
    """(and test ...), R7RS 4.2.1."""
    tests = [ctx.expand(t) for t in ctx.arguments(form, 0)]
    if not tests:
        return _quote(True)
    result = tests[-1]
    for test in reversed(tests[:-1]):
        result = _list(IF, test, result, _quote(False))
    return result


def _sf_or(form: Pair, ctx: SyntaxContext) -> Any:
    """(or test ...), R7RS 4.2.1."""
    tests = [ctx.expand(t) for t in ctx.arguments(form, 0)]
    if not tests:
        return _quote(False)
    result = tests[-1]
    for test in reversed(tests[:-1]):
        value = gensym("or")
        result = _let1(value, test, _list(IF, value, value, result))
    return result


def _sf_when(form: Pair, ctx: SyntaxContext) -> Any:
    """(when test expression ...), R7RS 4.2.1."""
    args = ctx.arguments(form, 2, None, "(when test expression ...)")
    body = _begin([ctx.expand(e) for e in args[1:]])
    return _list(IF, ctx.expand(args[0]), body, _unspecified())


def _sf_unless(form: Pair, ctx: SyntaxContext) -> Any:
    """(unless test expression ...), R7RS 4.2.1."""
    args = ctx.arguments(form, 2, None, "(unless test expression ...)")
    body = _begin([ctx.expand(e) for e in args[1:]])
    return _list(IF, ctx.expand(args[0]), _unspecified(), body)


def _sf_cond(form: Pair, ctx: SyntaxContext) -> Any:
    """(cond clause ...), R7RS 4.2.1; clause: (test expr ...) | (test => receiver) | (test)
    | (else expr ...) as the last one."""
    clauses = ctx.arguments(form, 1, None, "(cond clause ...)")
    return _cond_chain(clauses, ctx, form, _unspecified())


def _cond_chain(clauses: list, ctx: SyntaxContext, form: Pair, fallback: Any) -> Any:
    """The core of cond clauses, or fallback when no clause applies (guard re-raises)."""
    steps = []
    for index, clause in enumerate(clauses):
        items = ctx.items(clause, form, "cond clause")
        if not items:
            ctx.error(clause if isinstance(clause, Pair) else form, f"bad clause {show(clause)}")
        if ctx.is_keyword(items[0], STANDARD_FORMS["else"]):
            if index != len(clauses) - 1:
                ctx.error(clause, "else clause must be the last clause")
            if len(items) < 2:
                ctx.error(clause, "else clause has no expression")
            fallback = _begin([ctx.expand(e) for e in items[1:]])
            break
        test = ctx.expand(items[0])
        if len(items) > 1 and ctx.is_keyword(items[1], STANDARD_FORMS["=>"]):
            if len(items) != 3:
                ctx.error(clause, f"bad clause {show(clause)}, expected (test => receiver)")
            steps.append(("=>", test, ctx.expand(items[2])))
        elif len(items) == 1:
            steps.append(("value", test, None))
        else:
            steps.append(("body", test, _begin([ctx.expand(e) for e in items[1:]])))
    result = fallback
    for kind, test, then in reversed(steps):
        if kind == "body":
            result = _list(IF, test, then, result)
            continue
        value = gensym("test")
        then = value if kind == "value" else _call_core(then, value)
        result = _let1(value, test, _list(IF, value, then, result))
    return result


def _sf_case(form: Pair, ctx: SyntaxContext) -> Any:
    """(case key clause ...), R7RS 4.2.1; clause: ((datum ...) expr ...) | ((datum ...) =>
    receiver) | (else expr ...) | (else => receiver).  Data compare with eqv?."""
    args = ctx.arguments(form, 2, None, "(case key clause ...)")
    key = gensym("key")
    steps = []
    result = _unspecified()
    for index, clause in enumerate(args[1:]):
        items = ctx.items(clause, form, "case clause")
        if len(items) < 2:
            ctx.error(clause if isinstance(clause, Pair) else form, f"bad clause {show(clause)}")
        action = _case_action(items, key, clause, ctx)
        if ctx.is_keyword(items[0], STANDARD_FORMS["else"]):
            if index != len(args) - 2:
                ctx.error(clause, "else clause must be the last clause")
            result = action
            break
        data = tuple(strip_syntax(d) for d in ctx.items(items[0], clause, "case data"))
        steps.append((_case_test(key, data), action))
    for test, action in reversed(steps):
        result = _list(IF, test, action, result)
    return _let1(key, ctx.expand(args[0]), result)


def _case_action(items: list, key: Symbol, clause: Any, ctx: SyntaxContext) -> Any:
    if ctx.is_keyword(items[1], STANDARD_FORMS["=>"]):
        if len(items) != 3:
            ctx.error(clause, f"bad clause {show(clause)}, expected (data => receiver)")
        return _call_core(ctx.expand(items[2]), key)
    return _begin([ctx.expand(e) for e in items[1:]])


def _case_test(key: Symbol, data: tuple) -> Any:
    if len(data) == 1:
        return _call_constant(eqv, key, _quote(data[0]))
    if not data:
        return _quote(False)
    return _call_constant(case_memv, key, _quote(data))


def _sf_do(form: Pair, ctx: SyntaxContext) -> Any:
    """(do ((variable init [step]) ...) (test expr ...) command ...), R7RS 4.2.4."""
    args = ctx.arguments(form, 2, None, "(do ((variable init [step]) ...) (test expr ...) command ...)")
    specs = _do_specs(args[0], ctx, form)
    exit_clause = ctx.items(args[1], form, "do exit clause")
    if not exit_clause:
        ctx.error(form, "the exit clause needs a test: (test expr ...)")
    x = ctx.expander
    inits = [ctx.expand(init) for _, init, _ in specs]
    inner = Scope(ctx.scope)
    locals_ = [x.bind(inner, name) for name, _, _ in specs]
    here = ctx.within(inner)
    steps = [local if step is None else here.expand(step)
             for local, (_, _, step) in zip(locals_, specs)]
    loop = gensym("do")
    done = _begin([here.expand(e) for e in exit_clause[1:]]) if len(exit_clause) > 1 \
        else _unspecified()
    again = _begin([here.expand(c) for c in args[2:]] + [Pair(loop, from_iterable(steps))])
    procedure = _lambda(from_iterable(locals_), _list(IF, here.expand(exit_clause[0]), done, again))
    return _list(LETREC_STAR, _list(_list(loop, procedure)), Pair(loop, from_iterable(inits)))


def _do_specs(spec: Any, ctx: SyntaxContext, form: Pair) -> list:
    specs = []
    seen: set = set()
    for binding in ctx.items(spec, form, "do bindings"):
        try:
            items = to_list(binding)
        except ValueError:
            items = ()
        if len(items) not in (2, 3) or not is_identifier(items[0]):
            ctx.error(binding if isinstance(binding, Pair) else form,
                      f"bad binding {show(binding)}, expected (variable init [step])")
        if items[0] in seen:
            ctx.error(form, f"duplicate variable {identifier_symbol(items[0]).name}")
        seen.add(items[0])
        specs.append((items[0], items[1], items[2] if len(items) == 3 else None))
    return specs


def _sf_delay(form: Pair, ctx: SyntaxContext) -> Any:
    """(delay expression), R7RS 4.2.5: (delay-force (make-promise #t expression))."""
    (expression,) = ctx.arguments(form, 1, 1, "(delay expression)")
    make_promise = _runtime("make_promise")
    value = _call_constant(make_promise, _quote(True), ctx.expand(expression))
    return _call_constant(make_promise, _quote(False), _lambda(NIL, value))


def _sf_delay_force(form: Pair, ctx: SyntaxContext) -> Any:
    """(delay-force expression), R7RS 4.2.5: the expression yields a promise."""
    (expression,) = ctx.arguments(form, 1, 1, "(delay-force expression)")
    thunk = _lambda(NIL, ctx.expand(expression))
    return _call_constant(_runtime("make_promise"), _quote(False), thunk)


def _sf_parameterize(form: Pair, ctx: SyntaxContext) -> Any:
    """(parameterize ((parameter value) ...) body ...), R7RS 4.2.6."""
    args = ctx.arguments(form, 2, None, "(parameterize ((parameter value) ...) body ...)")
    pairs = _binding_pairs(args[0], ctx, form, identifiers=False)
    parameters = _call_constant(parameter_list, *[ctx.expand(p) for p, _ in pairs])
    values = _call_constant(parameter_list, *[ctx.expand(v) for _, v in pairs])
    body = _lambda(NIL, ctx.expand_body(args[1:], form))
    return _call_constant(_runtime("with_parameters"), parameters, values, body)


def _sf_guard(form: Pair, ctx: SyntaxContext) -> Any:
    """(guard (variable clause ...) body ...), R7RS 4.2.7: the clauses are cond clauses
    with variable bound to the condition; with no clause applying it is re-raised."""
    args = ctx.arguments(form, 2, None, "(guard (variable clause ...) body ...)")
    spec = ctx.items(args[0], form, "guard clause list")
    if not spec or not is_identifier(spec[0]):
        ctx.error(form, f"bad syntax {show(args[0])}, expected (variable clause ...)")
    if len(spec) < 2:
        ctx.error(form, "no clause after the variable")
    thunk = _lambda(NIL, ctx.expand_body(args[1:], form))
    handler_scope = Scope(ctx.scope)
    condition = ctx.expander.bind(handler_scope, spec[0])
    reraise = _call_constant(_runtime("reraise"), condition)
    dispatch = _cond_chain(spec[1:], ctx.within(handler_scope), form, reraise)
    return _call_constant(_runtime("guard"), thunk, _lambda(_list(condition), dispatch))


# -- quasiquote (R7RS 4.2.8) ----------------------------------------------------------------------
# _qq returns (True, datum) for a constant part, (False, core) for a part computed at run time.

def _sf_quasiquote(form: Pair, ctx: SyntaxContext) -> Any:
    """(quasiquote template), R7RS 4.2.8: nested levels, unquote-splicing, vectors, tails."""
    (template,) = ctx.arguments(form, 1, 1, "(quasiquote template)")
    constant, value = _qq(template, 1, ctx)
    return _quote(strip_syntax(value)) if constant else value


def _qq(x: Any, depth: int, ctx: SyntaxContext) -> tuple[bool, Any]:
    if isinstance(x, Pair):
        return _qq_pair(x, depth, ctx)
    if isinstance(x, VECTOR_TYPES):
        elements = [_qq_element(item, depth, ctx) for item in x]
        constant, value = _qq_fold(x, elements, (True, NIL))
        return (True, x) if constant else (False, _call_constant(quasi_vector, value))
    return True, x


def _qq_keyword(x: Pair, ctx: SyntaxContext) -> Symbol | None:
    """quasiquote, unquote or unquote-splicing if x is a use of one of them."""
    if not is_identifier(x.car):
        return None
    binding = ctx.resolve(x.car)
    for name in ("quasiquote", "unquote", "unquote-splicing"):
        if binding is STANDARD_FORMS[name]:
            return intern(name)
    return None


def _qq_operand(x: Pair, keyword: Symbol, ctx: SyntaxContext) -> Any:
    if not (isinstance(x.cdr, Pair) and x.cdr.cdr is NIL):
        ctx.error(x, f"bad syntax {show(x)}, expected ({keyword.name} expression)")
    return x.cdr.car


def _qq_pair(x: Pair, depth: int, ctx: SyntaxContext) -> tuple[bool, Any]:
    keyword = _qq_keyword(x, ctx)
    if keyword is not None:
        operand = _qq_operand(x, keyword, ctx)
        if keyword is _UNQUOTE and depth == 1:
            return False, ctx.expand(operand)
        if keyword is _UNQUOTE_SPLICING and depth == 1:
            ctx.error(x, f"unquote-splicing not directly inside a list or vector: {show(x)}")
        inner = depth + 1 if keyword is _QUASIQUOTE else depth - 1
        return _qq_fold(x, [(False, True, keyword), (False, *_qq(operand, inner, ctx))], (True, NIL))
    elements = []
    rest = x
    while isinstance(rest, Pair):
        if elements and _qq_keyword(rest, ctx) is not None:
            break     # (a . ,b) is (a unquote b): the tail is the unquote
        elements.append(_qq_element(rest.car, depth, ctx))
        rest = rest.cdr
    return _qq_fold(x, elements, _qq(rest, depth, ctx))


def _qq_element(item: Any, depth: int, ctx: SyntaxContext) -> tuple[bool, bool, Any]:
    """(spliced?, constant?, value) of one element of a list or vector template."""
    if depth == 1 and isinstance(item, Pair) and _qq_keyword(item, ctx) is _UNQUOTE_SPLICING:
        return True, False, ctx.expand(_qq_operand(item, _UNQUOTE_SPLICING, ctx))
    return (False, *_qq(item, depth, ctx))


def _qq_fold(original: Pair, elements: list, tail: tuple[bool, Any]) -> tuple[bool, Any]:
    """Elements and a tail as one constant (the original datum when all of it is constant)
    or as code building the list; constant elements in front of a constant tail stay data."""
    if tail[0] and all(constant for _, constant, _ in elements):
        return True, original
    result = tail
    run: list = []      # element cores, last first, waiting to be consed onto result
    for spliced, constant, value in reversed(elements):
        if not spliced:
            if constant and result[0] and not run:
                result = (True, Pair(value, result[1]))
            else:
                run.append(_qq_core((constant, value)))
            continue
        result = _qq_flush(run, result)
        result = (False, _call_constant(quasi_append, value, _qq_core(result)))
    return _qq_flush(run, result)


def _qq_flush(run: list, result: tuple[bool, Any]) -> tuple[bool, Any]:
    if not run:
        return result
    core = _call_constant(quasi_cons_star, *reversed(run), _qq_core(result))
    run.clear()
    return False, core


def _qq_core(part: tuple[bool, Any]) -> Any:
    constant, value = part
    return _quote(strip_syntax(value)) if constant else value


# -- include, cond-expand, import (R7RS 4.1.7, 4.2.1, 5.2, 5.6) --------------------------------------

def read_source(contents: str, source: str, positions: dict, fold_case: bool = False) -> list:
    """The data of a source text, read by vm._reader (helper A's Reader), their positions
    added to `positions`.  Module-level so that tests can put another reader in."""
    from vm._reader import Reader
    reader = Reader(contents, source, positions=positions, fold_case=fold_case)
    data = []
    while (datum := reader.read()) is not EOF:
        data.append(datum)
    return data


def _include_parts(form: Pair, ctx: SyntaxContext, fold_case: bool) -> list:
    """(include "file" ...) and include-ci, R7RS 4.1.7: the files' forms, spliced.  A
    relative name is taken from the directory of the file the include is in."""
    names = ctx.arguments(form, 1, None, f'({ctx.who} "file" ...)')
    x = ctx.expander
    where = x.where(form, x.origin)
    directory = os.path.dirname(where[0]) if where and not str(where[0]).startswith("<") else ""
    forms: list = []
    for name in names:
        if not is_string(name):
            ctx.error(form, f"the file name {show(name)} is not a string")
        x.includes += 1
        if x.includes > MAX_INCLUDES:
            ctx.error(form, f"more than {MAX_INCLUDES} files included (does a file include itself?)")
        path = os.path.join(directory, text(name))
        try:
            with open(path, encoding="utf-8") as f:
                contents = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            ctx.error(form, f'cannot read "{path}": {reason}', kind="file")
        forms.extend(_read_included(contents, path, fold_case, ctx, form))
    return forms


def _read_included(contents: str, path: str, fold_case: bool, ctx: SyntaxContext,
                   form: Pair) -> list:
    try:
        return read_source(contents, path, ctx.expander.positions, fold_case)
    except ModuleNotFoundError as exc:
        if exc.name != "vm._reader":
            raise
        ctx.error(form, "cannot read files: the reader (vm._reader) is not available")


def _include_parts_plain(form: Pair, ctx: SyntaxContext) -> list:
    return _include_parts(form, ctx, fold_case=False)


def _include_parts_folded(form: Pair, ctx: SyntaxContext) -> list:
    return _include_parts(form, ctx, fold_case=True)


def _cond_expand_parts(form: Pair, ctx: SyntaxContext) -> list:
    """(cond-expand (requirement form ...) ... [(else form ...)]), R7RS 4.2.1: the forms of
    the first clause whose requirement holds (none: nothing)."""
    clauses = ctx.arguments(form, 1, None, "(cond-expand (requirement form ...) ...)")
    for index, clause in enumerate(clauses):
        items = ctx.items(clause, form, "cond-expand clause")
        if not items:
            ctx.error(form, f"bad clause {show(clause)}")
        if is_identifier(items[0]) and identifier_symbol(items[0]).name == "else":
            if index != len(clauses) - 1:
                ctx.error(clause, "else clause must be the last clause")
            return items[1:]
        if _requirement_holds(items[0], ctx, clause):
            return items[1:]
    return []


def _requirement_holds(requirement: Any, ctx: SyntaxContext, clause: Any) -> bool:
    if is_identifier(requirement):
        return identifier_symbol(requirement).name in FEATURES
    items = ctx.items(requirement, clause, "feature requirement")
    operator = identifier_symbol(items[0]).name if items and is_identifier(items[0]) else None
    operands = items[1:]
    if operator == "and":
        return all(_requirement_holds(r, ctx, clause) for r in operands)
    if operator == "or":
        return any(_requirement_holds(r, ctx, clause) for r in operands)
    if operator == "not" and len(operands) == 1:
        return not _requirement_holds(operands[0], ctx, clause)
    if operator == "library" and len(operands) == 1:
        return _library_name(operands[0], ctx, clause) in STANDARD_LIBRARIES
    ctx.error(clause, f"bad feature requirement {show(requirement)}")


def _library_name(name: Any, ctx: SyntaxContext, form: Any) -> tuple:
    """A library name (R7RS 5.6.1): identifiers and exact non-negative integers."""
    try:
        parts = to_list(name)
    except ValueError:
        parts = []
    ok = bool(parts) and all(is_identifier(p) or (type(p) is int and p >= 0) for p in parts)
    if not ok:
        ctx.error(form, f"bad library name {show(name)}")
    return tuple(identifier_symbol(p).name if is_identifier(p) else str(p) for p in parts)


def _sf_import(form: Pair, ctx: SyntaxContext) -> Any:
    """(import import-set ...), R7RS 5.2: standard libraries only, all always present."""
    if not ctx.is_toplevel:
        ctx.error(form, "only allowed at top level")
    for import_set in ctx.arguments(form, 1, None, "(import import-set ...)"):
        _check_import_set(import_set, ctx, form)
    return _unspecified()


def _check_import_set(import_set: Any, ctx: SyntaxContext, form: Pair) -> None:
    items = ctx.items(import_set, form, "import set")
    operator = identifier_symbol(items[0]).name if items and is_identifier(items[0]) else None
    if operator in ("only", "except") and len(items) >= 2:
        for name in items[2:]:
            if not is_identifier(name):
                ctx.error(form, f"bad identifier {show(name)} in {show(import_set)}")
        _check_import_set(items[1], ctx, form)
        return
    if operator in ("prefix", "rename"):
        ctx.error(form, f"{operator} is not supported in {show(import_set)} "
                        "(every standard binding is always present under its own name)")
    name = _library_name(import_set, ctx, form)
    if name not in STANDARD_LIBRARIES:
        ctx.error(form, f"unknown library {show(import_set)}")


def _sf_define_library(form: Pair, ctx: SyntaxContext) -> NoReturn:
    ctx.error(form, "not supported (the standard libraries are always present; "
                    "define procedures and macros at top level instead)")


# -- the table ---------------------------------------------------------------------------------------

def _standard_forms() -> dict[str, SpecialForm]:
    forms: dict[str, SpecialForm] = {}

    def add(name: str, expand: Callable, kind: str = KIND_EXPRESSION, parts: Callable | None = None):
        forms[name] = SpecialForm(name, expand, kind, parts)

    for name, expand in (
            ("quote", _sf_quote), ("if", _sf_if), ("lambda", _sf_lambda), ("set!", _sf_set),
            ("case-lambda", _sf_case_lambda), ("let", _sf_let), ("let*", _sf_let_star),
            ("letrec", _sf_letrec), ("letrec*", _sf_letrec), ("let-values", _sf_let_values),
            ("let*-values", _sf_let_star_values), ("and", _sf_and), ("or", _sf_or),
            ("when", _sf_when), ("unless", _sf_unless), ("cond", _sf_cond), ("case", _sf_case),
            ("do", _sf_do), ("delay", _sf_delay), ("delay-force", _sf_delay_force),
            ("parameterize", _sf_parameterize), ("guard", _sf_guard),
            ("quasiquote", _sf_quasiquote), ("let-syntax", _sf_let_syntax),
            ("letrec-syntax", _sf_letrec_syntax), ("syntax-rules", _sf_syntax_rules),
            ("syntax-error", _sf_syntax_error), ("import", _sf_import),
            ("define-library", _sf_define_library)):
        add(name, expand)
    for name, parts in (("define", _define_parts), ("define-values", _define_values_parts),
                        ("define-record-type", _record_parts)):
        add(name, _definition(parts), KIND_DEFINITION, parts)
    for name, parts in (("begin", _begin_parts), ("include", _include_parts_plain),
                        ("include-ci", _include_parts_folded), ("cond-expand", _cond_expand_parts)):
        add(name, _splicing(parts), KIND_SPLICE, parts)
    add("define-syntax", _sf_define_syntax, KIND_SYNTAX)
    for name in ("else", "=>", "_", "...", "unquote", "unquote-splicing"):
        add(name, _sf_auxiliary, KIND_AUXILIARY)
    return forms


STANDARD_FORMS: dict[str, SpecialForm] = _standard_forms()
"""Every standard keyword by name; the objects are shared by every SyntacticEnv."""


# -- entry points ------------------------------------------------------------------------------------

def expand_toplevel(datum: Any, env: SyntacticEnv, positions: dict | None = None) -> Any:
    """The core form of one top-level datum (R7RS 5.1).  define-syntax and import update or
    check env and yield (quote None); begin splices; errors are SyntaxViolation."""
    expander = _Expander(env, {} if positions is None else positions)
    try:
        with _recursion_room():
            return expander.toplevel(datum)
    except RecursionError:    # only when someone set the limit lower while we ran
        raise SyntaxViolation(_located(expander.where(datum, None),
                                       "form nested too deeply to expand"), datum) from None


@contextmanager
def _recursion_room() -> Iterator[None]:
    """sys's recursion limit at least RECURSION_LIMIT for the duration (see there)."""
    old = sys.getrecursionlimit()
    if old >= RECURSION_LIMIT:
        yield
        return
    sys.setrecursionlimit(RECURSION_LIMIT)
    try:
        yield
    finally:
        if sys.getrecursionlimit() == RECURSION_LIMIT:   # unless another thread changed it
            sys.setrecursionlimit(old)


def strip_syntax(datum: Any) -> Any:
    """datum with every Alias replaced by its plain symbol (for quote and for printing).
    Returns datum itself when it holds no Alias; copies keep sharing and cycles."""
    if type(datum) is Alias:
        return datum.symbol
    if not isinstance(datum, (Pair, SVector)) or not _contains_alias(datum):
        return datum
    return _copy_stripped(datum, {})


def _contains_alias(datum: Any) -> bool:
    stack = [datum]
    seen: dict[int, Any] = {}     # id -> the object, held so that its id stays its own
    while stack:
        x = stack.pop()
        while isinstance(x, Pair):
            if id(x) in seen:
                break
            seen[id(x)] = x
            stack.append(x.car)
            x = x.cdr
        if type(x) is Alias:
            return True
        if isinstance(x, SVector) and id(x) not in seen:
            seen[id(x)] = x
            stack.extend(x)
    return False


def _copy_stripped(x: Any, memo: dict) -> Any:
    if type(x) is Alias:
        return x.symbol
    if isinstance(x, SVector):
        if id(x) not in memo:
            copy = memo[id(x)] = SVector()
            copy.extend([_copy_stripped(item, memo) for item in x])
        return memo[id(x)]
    if not isinstance(x, Pair):
        return x
    if id(x) in memo:
        return memo[id(x)]
    head = cell = memo[id(x)] = Pair(None, NIL)
    cell.car = _copy_stripped(x.car, memo)
    x = x.cdr
    while isinstance(x, Pair):
        if id(x) in memo:
            cell.cdr = memo[id(x)]
            return head
        cell.cdr = cell = memo[id(x)] = Pair(None, NIL)
        cell.car = _copy_stripped(x.car, memo)
        x = x.cdr
    cell.cdr = _copy_stripped(x, memo)
    return head


def free_globals(core: Any) -> set[Symbol]:
    """The globals a core form refers to or assigns (not the ones it only defines)."""
    found: set[Symbol] = set()
    stack = [core]
    while stack:
        x = stack.pop()
        if isinstance(x, Symbol):
            if is_interned(x):
                found.add(x)
            continue
        if not isinstance(x, Pair):
            continue
        head, rest = x.car, x.cdr
        if head is QUOTE:
            continue
        if head is LAMBDA:
            stack.append(rest.cdr.car)
        elif head is CASE_LAMBDA:
            stack.extend(clause.cdr.car for clause in to_list(rest))
        elif head is LET or head is LETREC_STAR:
            stack.extend(binding.cdr.car for binding in to_list(rest.car))
            stack.append(rest.cdr.car)
        elif head is DEFINE:
            stack.append(rest.cdr.car)
        elif head is IF or head is BEGIN or head is SET:
            stack.extend(to_list(rest))
        else:
            stack.extend(to_list(x))
    return found


# -- messages ----------------------------------------------------------------------------------------

_CHAR_NAMES = {" ": "space", "\n": "newline", "\t": "tab", "\r": "return", "\0": "null",
               "\a": "alarm", "\b": "backspace", "\x7f": "delete", "\x1b": "escape"}


class _Truncated(Exception):
    pass


def show(x: Any, limit: int = SHOW_LIMIT) -> str:
    """x written as Scheme, cut at about `limit` characters (safe on cycles)."""
    out: list[str] = []
    try:
        _show_into(x, out, [limit])
    except _Truncated:
        out.append(" ...")
    return "".join(out)


def _emit(text: str, out: list, budget: list) -> None:
    budget[0] -= len(text)
    out.append(text)
    if budget[0] < 0:
        raise _Truncated


def _show_into(x: Any, out: list, budget: list) -> None:
    if isinstance(x, Pair):
        _emit("(", out, budget)
        _show_into(x.car, out, budget)
        x = x.cdr
        while isinstance(x, Pair):
            _emit(" ", out, budget)
            _show_into(x.car, out, budget)
            x = x.cdr
        if x is not NIL:
            _emit(" . ", out, budget)
            _show_into(x, out, budget)
        _emit(")", out, budget)
    elif isinstance(x, VECTOR_TYPES):
        _emit("#(", out, budget)
        for i, item in enumerate(x):
            if i:
                _emit(" ", out, budget)
            _show_into(item, out, budget)
        _emit(")", out, budget)
    else:
        _emit(_show_atom(x), out, budget)


def _show_atom(x: Any) -> str:
    if x is True or x is False:
        return "#t" if x else "#f"
    if x is NIL:
        return "()"
    if x is None:
        return "#<unspecified>"
    if type(x) is Alias:
        return x.symbol.name
    if isinstance(x, Symbol):
        return x.name
    if isinstance(x, Char):
        return "#\\" + _CHAR_NAMES.get(str(x), str(x))
    if is_string(x):
        return '"' + text(x).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if type(x) is float:
        if x != x:
            return "+nan.0"
        if x in (float("inf"), float("-inf")):
            return "+inf.0" if x > 0 else "-inf.0"
        return repr(x)
    if type(x) in (int, Fraction):
        return str(x)
    if isinstance(x, BYTEVECTOR_TYPES):
        return "#u8(" + " ".join(str(b) for b in x) + ")"
    if isinstance(x, (SpecialForm, Macro)):
        return x.name
    if callable(x):
        return f"#<procedure {getattr(x, '__name__', '?')}>"
    return repr(x)


__all__ = [
    "Alias", "CORE_KEYWORDS", "FEATURES", "MAX_NESTING", "MAX_REWRITES", "Macro",
    "STANDARD_FORMS", "STANDARD_LIBRARIES", "Scope", "SpecialForm", "SyntacticEnv",
    "SyntaxContext", "SyntaxViolation", "case_memv", "expand_toplevel", "free_globals",
    "identifier_symbol", "is_identifier", "parameter_list", "quasi_append", "quasi_cons_star",
    "quasi_vector", "read_source", "register_special_form", "show", "strip_syntax",
]
