"""Core forms to Python: generated Python text, compiled to code objects.

Input is the core grammar of vm/__init__.py, which the expander guarantees;
a malformed core form is still a SchemeError, never a traceback.  Output of
``compile_toplevel(core, env)`` is a zero-argument Scheme procedure (a
Python function whose ``__globals__`` is ``env.namespace``) that runs the
form; ``compile_lambda(core, env, name)`` gives the procedure a top-level
(define name core) would bind, without binding it (the image rebuilds stored
procedures with it); ``python_source(core, env)`` is the generated text, for
inspection; ``recompile_procedure(fn, env)`` is the environment's, when a
global fn's code baked in changes.

PIPELINE: core form --_Parser--> a small tree of nodes with every variable
resolved (local Var or global Symbol) and analysed (assigned? captured by a
closure? used only as an operator?) --_FnGen--> Python text, one ``def`` per
Scheme lambda --compile()--> code objects, whose placeholder constants are
then replaced by the real objects (``_finish``).

CODE SHAPE (three-address style)

- Locals are Python locals named ``<name>_<n>`` (``loop_12``); closures are
  Python closures over real cells (``nonlocal`` for set!), so the image can
  persist a procedure from ``fn.__code__.co_freevars`` and ``fn.__closure__``.
  Every generated procedure has ``fn.scheme_lambda`` (its core lambda form),
  ``fn.scheme_name`` (or None), ``fn.scheme_baked`` (the globals whose values
  its code baked in), ``fn.scheme_free`` and ``fn.scheme_self`` (what a
  recompilation needs).  They live in one dict per lambda *site*, assigned as
  ``fn.__dict__`` when the closure is made (one store, not five).
- A non-tail call is a statement followed by the inline trampoline check
  ``if R_type(t) is R_TailCall: t = R_resolve(t)`` -- unless the callee is
  known never to return a TailCall (``_callee`` "plain": a standard
  primitive, or generated code whose tail positions never make one, see
  ``_tail_free``); then the call is an expression and has no check.
- A tail call returns ``R_TailCall(f, args)``, except: a self tail call (the
  lambda named by a top-level define, a letrec* binding or named let,
  calling itself with the right number of arguments) assigns the parameters
  and loops (``while True``); a tail call to a "plain" callee or to a Python
  function that is not generated code calls it directly.  A direct call
  cannot build an unbounded chain: a cycle of direct tail calls would need
  each procedure's current code to be compiled before the other's.
- Calls to standard primitives are inlined where it keeps Scheme semantics
  (``_INLINE``): ``(+ a b)`` is ``a + b`` when both are exact integers (a
  ``type(x) is int`` test, so #t, characters, strings and vectors still reach
  the real ``+`` and its error), otherwise the standard procedure; ``car`` is
  ``.car`` on a Pair; ``eq?`` is ``is``; and so on.  Only while the global is
  still bound to its standard procedure, and not in a top-level form that
  itself defines or set!s it.  A parameter's integer test is computed once
  per call (or loop iteration) into a "fact" variable ``_k<n>``; so is that
  of a free variable that keeps its value (no set!, not letrec*-bound, so it
  has its value before the closure exists), and its type tests for the
  data procedures below, once on entry (``_FnGen.type_test``).
- The data procedures of vm/_builtins are inlined the same way (only where
  the standard procedure is _builtins' own): vector-ref, vector-set!,
  vector-length, string-length, string-ref, char->integer, the two-argument
  character comparisons, write-char and write-string to a port (an append
  to an open string port's ``chunks``), hash-table-ref (two arguments) and
  hash-table-ref/default.  An image Vector's length costs as much as a read,
  and a miss in an image Table is a KeyError, so vector-ref and the table
  reads are statements: the read in a ``try`` whose exception calls the
  procedure (which signals the error, or handles what the read could not);
  an index is tested non-negative first (Python would count it from the
  end).  A table key must be a str or an int, which the image takes as it
  is.  cons is one call of native._fastpath.cons, which makes the Pair in C
  (Pair.__init__ was most of the cost of a cons, then HandleBase.__new__
  and two slot stores were; see vm/_types.Pair).
- Measured (bench/bench_vm.py, and bytecode: ``type(x)`` is specialised to
  PRECALL_NO_KW_TYPE_1 in 3.11, ``x.__class__`` is a generic attribute
  lookup): the integer tests were most of what generated fib and tak cost
  above CPython (2.5x and 3.3x); dropping them would let #t and characters
  through ``+``.  So a leaf lambda whose parameters meet integer operations
  gets a second, specialised body (``_FnGen.fast_body``): one test that those
  parameters are exact integers selects it, and in it integer-ness is
  followed forward (literals, results of + - * on integers, let-bound copies,
  and -- an inductive hypothesis checked on the returned values -- its own
  self calls with integer arguments), so those operations run unguarded.  A
  self tail call whose new arguments are proven integers stays in the fast
  loop; otherwise it breaks out to test again.  fib(25) and tak went to about
  1.5x CPython, a counting loop below 1x.
- The entry test, paid again by every recursive call, was then most of
  what fib still cost above CPython (1.43x its instructions, measured with
  callgrind; 1.18x without the test).  So a recursive leaf lambda without
  free variables whose fast body makes integer self calls gets a fast entry
  (``_FnGen.split_fast``): the fast body as a function of its own, which
  those self calls call directly (it reaches itself through a positional
  default ``R_self``, the procedure reaches it through a keyword-only
  default ``R_fast``: no closure cell, no parameter a Scheme caller could
  fill).  fib went to about 1.2x CPython, tak to about 1x.
- Quoted data that has no Python literal (symbols, strings, lists, procedures
  embedded by the expander, infinities) is written as a placeholder string
  ``'K<n>'`` and replaced in ``co_consts`` after compilation, so it is a
  LOAD_CONST.  Placeholders never reach an arithmetic operator or a
  subscript (the inliner calls the real procedure for constant operands),
  because Python's optimiser would fold ``'K1' * 2`` and ``'K1'[0]``.

BAKED GLOBALS AND RECOMPILATION: inlining a primitive, turning a global
self call into a loop, and omitting the trampoline check after (or calling
directly in tail position) a "plain" global all assume a global keeps its
value.  The globals a lambda's code (with its nested lambdas) assumed are
``scheme_baked``; the environment registers each such procedure (top-level
definitions through ``define``, closures that may escape through
``R_track``) and, when one of those globals is rebound,
``recompile_procedure`` compiles the lambda again and swaps ``fn.__code__``
(and ``fn.__kwdefaults__``, its fast entry) in place.  An activation of the
fast entry that is running then goes on recursing into the old definition,
as any running activation finishes with its code (_env's open questions).
A closure that cannot escape (bound by let/letrec*, only ever called,
captured by no other lambda) is not tracked:
it dies with the activation that made it.  Case-lambda clauses bake nothing
(their dispatcher's closure layout is not reproducible), so they never need it.
If a recompiled procedure starts returning TailCalls where it did not, the
globals bound to it are invalidated in turn (their callers omitted checks).

SCOPING HAZARD: a variable bound inside a ``while True`` loop body and
captured by a closure would share one Python cell across iterations, while
Scheme makes a fresh binding each time.  So a lambda whose own variables are
captured by a nested lambda is not turned into a loop (its self tail calls
are ordinary tail calls).

LIMITS: Python's tokenizer allows 100 indentation levels and its compiler
recurses over the syntax tree, so an extremely deeply nested form gives the
SchemeError "compile: form too deeply nested" (cond and nested ifs in tail
position become elif chains, which do not nest).
"""
from __future__ import annotations

import itertools
import re
import types
import warnings
from collections.abc import Callable
from typing import Any

from native._fastpath import cons as make_pair

from ._env import Environment, mangle
from ._persist import StoredProcedure
from ._runtime import ARITY, GENERATED_FILENAME_PREFIX, resolve
from ._types import (
    CHARS,
    NIL,
    VECTOR_TYPES,
    Char,
    ImageTable,
    Pair,
    SchemeError,
    SVector,
    Symbol,
    TailCall,
    intern,
    is_interned,
    to_list,
)

__all__ = ["compile_lambda", "compile_toplevel", "python_source", "recompile_procedure"]

_QUOTE, _IF, _LAMBDA, _CASE_LAMBDA = (intern(n) for n in ("quote", "if", "lambda", "case-lambda"))
_LET, _LETREC, _SET, _DEFINE, _BEGIN = (intern(n) for n in ("let", "letrec*", "set!", "define",
                                                             "begin"))

_local_numbers = itertools.count(1)


# -- the tree ----------------------------------------------------------------------

class Var:
    """A local variable: one binding occurrence and what the parser learned of it."""

    __slots__ = ("sym", "py", "owner", "assigned", "escapes", "captured_by", "lambda_node",
                 "recursive")

    def __init__(self, sym: Symbol, owner: Lambda, py: str | None = None) -> None:
        self.sym = sym
        self.py = py or _local_name(sym)
        self.owner = owner          # the lambda whose Python frame holds it
        self.assigned = False       # target of a set!
        self.recursive = False      # bound by letrec*: may be read before it has a value
        self.escapes = False        # referenced other than as an operator
        self.captured_by: set = set()   # lambdas other than the owner that reference it
        self.lambda_node: Lambda | None = None   # the lambda a let/letrec* binds it to


def _display_name(sym: Symbol) -> str:
    """A gensym'd local 'loop.12' is shown as 'loop'."""
    if is_interned(sym):
        return sym.name
    return re.sub(r"\.\d+\Z", "", sym.name)


def _local_name(sym: Symbol) -> str:
    base = "".join(c for c in _display_name(sym) if c.isascii() and c.isalnum())
    if not base or not base[0].isalpha():
        base = "v" + base
    return f"{base}_{next(_local_numbers)}"


class Const:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class LocalRef:
    __slots__ = ("var",)

    def __init__(self, var: Var) -> None:
        self.var = var


class GlobalRef:
    __slots__ = ("sym",)

    def __init__(self, sym: Symbol) -> None:
        self.sym = sym


class If:
    __slots__ = ("test", "then", "otherwise")

    def __init__(self, test: Any, then: Any, otherwise: Any) -> None:
        self.test, self.then, self.otherwise = test, then, otherwise


class Lambda:
    """A lambda (or the top-level form's own function, ``is_unit``)."""

    __slots__ = ("core", "name", "parent", "params", "rest", "body", "owned", "free",
                 "self_var", "self_global", "binding_var", "is_define_value", "no_bake",
                 "rest_as_list", "is_unit", "tail_free", "contains_lambda")

    def __init__(self, core: Any, name: str | None, parent: Lambda | None) -> None:
        self.core = core
        self.name = name
        self.parent = parent
        self.params: list[Var] = []
        self.rest: Var | None = None
        self.body: Any = None
        self.owned: list[Var] = []
        self.free: dict[Var, None] = {}
        self.self_var: Var | None = None        # letrec*-bound name, for self loops
        self.self_global: Symbol | None = None  # top-level define name, for self loops
        self.binding_var: Var | None = None
        self.is_define_value = False
        self.no_bake = parent is not None and parent.no_bake
        self.rest_as_list = False
        self.is_unit = False
        self.tail_free: bool | None = None      # memo of _tail_free
        self.contains_lambda = False            # a lambda is written inside its body

    def loop_ok(self) -> bool:
        """May self tail calls become a while loop?  (module docstring)"""
        if self.rest is not None or self.no_bake or self.is_unit:
            return False
        return not any(v.captured_by for v in self.owned)


class CaseLambda:
    __slots__ = ("core", "name", "clauses", "binding_var")

    def __init__(self, core: Any, name: str | None) -> None:
        self.core, self.name, self.clauses = core, name, []
        self.binding_var: Var | None = None


class Let:
    __slots__ = ("bindings", "body", "recursive")

    def __init__(self, bindings: list, body: Any, recursive: bool) -> None:
        self.bindings, self.body, self.recursive = bindings, body, recursive


class SetLocal:
    __slots__ = ("var", "value")

    def __init__(self, var: Var, value: Any) -> None:
        self.var, self.value = var, value


class SetGlobal:
    __slots__ = ("sym", "value", "define")

    def __init__(self, sym: Symbol, value: Any, define: bool) -> None:
        self.sym, self.value, self.define = sym, value, define


class Begin:
    __slots__ = ("body",)

    def __init__(self, body: list) -> None:
        self.body = body


class Call:
    __slots__ = ("fn", "args")

    def __init__(self, fn: Any, args: list) -> None:
        self.fn, self.args = fn, args


# -- parsing core forms into the tree --------------------------------------------------

def _malformed(what: str, form: Any) -> SchemeError:
    return SchemeError(f"compile: malformed {what} form", form)


def _items(form: Any, what: str) -> list:
    try:
        return to_list(form)
    except ValueError:
        raise _malformed(what, form) from None


class _Parser:
    """Resolves variables and records what the code generator needs to know."""

    def __init__(self) -> None:
        self.written: set[Symbol] = set()   # globals this top-level form defines or set!s

    def parse(self, x: Any, scope: dict, fn: Lambda) -> Any:
        if isinstance(x, Symbol):
            return self.reference(x, scope, fn, operator=False)
        if not isinstance(x, Pair):
            if x is NIL:
                raise SchemeError("compile: empty combination ()")
            return Const(x)             # self-evaluating (the expander normally quotes)
        head = x.car
        if isinstance(head, Symbol) and head not in scope:
            special = _SPECIAL.get(head)
            if special is not None:
                return special(self, x, scope, fn)
        return self.call(x, scope, fn)

    def reference(self, sym: Symbol, scope: dict, fn: Lambda, operator: bool) -> Any:
        var = scope.get(sym)
        if var is None:
            return GlobalRef(sym)
        if not operator:
            var.escapes = True
        self.note_use(var, fn)
        return LocalRef(var)

    @staticmethod
    def note_use(var: Var, fn: Lambda) -> None:
        """A use of var from inside fn: closures between them capture it."""
        if var.owner is fn:
            return
        var.captured_by.add(fn)
        f: Lambda | None = fn
        while f is not None and f is not var.owner:
            f.free[var] = None
            f = f.parent

    def call(self, x: Any, scope: dict, fn: Lambda) -> Call:
        items = _items(x, "application")
        head = items[0]
        if isinstance(head, Symbol):
            operator = self.reference(head, scope, fn, operator=True)
        else:
            operator = self.parse(head, scope, fn)
        return Call(operator, [self.parse(a, scope, fn) for a in items[1:]])

    def p_quote(self, x: Any, scope: dict, fn: Lambda) -> Const:
        items = _items(x, "quote")
        if len(items) != 2:
            raise _malformed("quote", x)
        return Const(items[1])

    def p_if(self, x: Any, scope: dict, fn: Lambda) -> If:
        items = _items(x, "if")
        if len(items) not in (3, 4):
            raise _malformed("if", x)
        otherwise = self.parse(items[3], scope, fn) if len(items) == 4 else Const(None)
        return If(self.parse(items[1], scope, fn), self.parse(items[2], scope, fn), otherwise)

    def p_lambda(self, x: Any, scope: dict, fn: Lambda, name: str | None = None) -> Lambda:
        items = _items(x, "lambda")
        if len(items) < 3:
            raise _malformed("lambda", x)
        return self.lambda_node(x, items[1], items[2:], scope, fn, name)

    def lambda_node(self, core: Any, formals: Any, body: list, scope: dict, fn: Lambda,
                    name: str | None, clause: bool = False) -> Lambda:
        lam = Lambda(core, name, fn)
        fn.contains_lambda = True
        if clause:      # a case-lambda clause: bakes nothing, takes its rest as a list
            lam.no_bake = lam.rest_as_list = True
        inner = dict(scope)
        seen: set[Symbol] = set()
        while isinstance(formals, Pair):
            lam.params.append(self.bind(formals.car, lam, inner, seen, core))
            formals = formals.cdr
        if formals is not NIL:
            lam.rest = self.bind(formals, lam, inner, seen, core)
        lam.body = self.body(body, inner, lam)
        return lam

    @staticmethod
    def bind(sym: Any, owner: Lambda, scope: dict, seen: set, form: Any) -> Var:
        if not isinstance(sym, Symbol) or sym in seen:
            raise _malformed("binding", form)
        seen.add(sym)
        var = scope[sym] = Var(sym, owner)
        owner.owned.append(var)
        return var

    def body(self, exprs: list, scope: dict, fn: Lambda) -> Any:
        if len(exprs) == 1:
            return self.parse(exprs[0], scope, fn)
        return Begin([self.parse(e, scope, fn) for e in exprs])

    def p_case_lambda(self, x: Any, scope: dict, fn: Lambda, name: str | None = None) -> Any:
        node = CaseLambda(x, name)
        for clause in _items(x, "case-lambda")[1:]:
            parts = _items(clause, "case-lambda clause")
            if len(parts) < 2:
                raise _malformed("case-lambda clause", clause)
            node.clauses.append(self.lambda_node(clause, parts[0], parts[1:], scope, fn, name,
                                                 clause=True))
        return node

    def p_let(self, x: Any, scope: dict, fn: Lambda) -> Let:
        return self.let(x, scope, fn, recursive=False)

    def p_letrec(self, x: Any, scope: dict, fn: Lambda) -> Let:
        return self.let(x, scope, fn, recursive=True)

    def let(self, x: Any, scope: dict, fn: Lambda, recursive: bool) -> Let:
        items = _items(x, "let")
        if len(items) < 3:
            raise _malformed("let", x)
        pairs = []
        for binding in _items(items[1], "let bindings"):
            parts = _items(binding, "let binding")
            if len(parts) != 2:
                raise _malformed("let binding", binding)
            pairs.append(parts)
        inner = dict(scope)
        seen: set[Symbol] = set()
        variables = [self.bind(sym, fn, inner, seen, x) for sym, _ in pairs]
        for var in variables:
            var.recursive = recursive
        init_scope = inner if recursive else scope
        bindings = []
        for var, (_, init) in zip(variables, pairs):
            bindings.append((var, self.init(init, init_scope, fn, var, recursive)))
        return Let(bindings, self.body(items[2:], inner, fn), recursive)

    def init(self, init: Any, scope: dict, fn: Lambda, var: Var, recursive: bool) -> Any:
        """A binding's value; a lambda learns its name (and, in letrec*, itself)."""
        kind = init.car if isinstance(init, Pair) else None
        if kind is _LAMBDA and _LAMBDA not in scope:
            node = self.p_lambda(init, scope, fn, _display_name(var.sym))
            node.binding_var = var
            var.lambda_node = node
            if recursive:
                node.self_var = var
            return node
        if kind is _CASE_LAMBDA and _CASE_LAMBDA not in scope:
            node = self.p_case_lambda(init, scope, fn, _display_name(var.sym))
            node.binding_var = var
            return node
        return self.parse(init, scope, fn)

    def p_set(self, x: Any, scope: dict, fn: Lambda) -> Any:
        items = _items(x, "set!")
        if len(items) != 3 or not isinstance(items[1], Symbol):
            raise _malformed("set!", x)
        value = self.parse(items[2], scope, fn)
        var = scope.get(items[1])
        if var is None:
            self.written.add(items[1])
            return SetGlobal(items[1], value, define=False)
        var.assigned = True
        self.note_use(var, fn)
        return SetLocal(var, value)

    def p_define(self, x: Any, scope: dict, fn: Lambda) -> SetGlobal:
        items = _items(x, "define")
        if len(items) != 3 or not isinstance(items[1], Symbol):
            raise _malformed("define", x)
        sym = items[1]
        self.written.add(sym)
        init = items[2]
        kind = init.car if isinstance(init, Pair) else None
        if kind is _LAMBDA and _LAMBDA not in scope:
            value = self.p_lambda(init, scope, fn, sym.name)
            value.self_global = sym
            value.is_define_value = True
        elif kind is _CASE_LAMBDA and _CASE_LAMBDA not in scope:
            value = self.p_case_lambda(init, scope, fn, sym.name)
        else:
            value = self.parse(init, scope, fn)
        return SetGlobal(sym, value, define=True)

    def p_begin(self, x: Any, scope: dict, fn: Lambda) -> Any:
        exprs = _items(x, "begin")[1:]
        if not exprs:
            return Const(None)
        return self.body(exprs, scope, fn)


_SPECIAL: dict[Symbol, Callable] = {
    _QUOTE: _Parser.p_quote, _IF: _Parser.p_if, _LAMBDA: _Parser.p_lambda,
    _CASE_LAMBDA: _Parser.p_case_lambda, _LET: _Parser.p_let, _LETREC: _Parser.p_letrec,
    _SET: _Parser.p_set, _DEFINE: _Parser.p_define, _BEGIN: _Parser.p_begin,
}


# -- compiled expressions -------------------------------------------------------------------

class _E:
    """A compiled expression: Python text and what kind of text it is.
    kind: 'name' (a variable), 'int' (an integer literal), 'const' (another
    literal or a placeholder) or 'expr' (a parenthesised expression that is
    evaluated where it is used, possibly after statements emitted later:
    see ``_FnGen.arguments`` for the order this gives).  has_call: it calls a
    procedure that may have effects (not just a primitive's fallback), or
    has one itself (an inlined write-char).  value: the constant itself, for
    the 'int' and 'const' kinds made by ``_Unit.constant``."""

    __slots__ = ("code", "kind", "boolean", "has_call", "int_known", "value")

    def __init__(self, code: str, kind: str, boolean: bool = False,
                 has_call: bool = False, int_known: bool = False, value: Any = None) -> None:
        self.code, self.kind, self.boolean, self.has_call = code, kind, boolean, has_call
        self.int_known = int_known or kind == "int"   # proven an exact integer
        self.value = value          # the value of a constant ('const' and 'int' kinds)

    @property
    def atomic(self) -> bool:
        return self.kind != "expr"


_NONE = _E("None", "const")


# -- inlined primitives -----------------------------------------------------------------------

def _int_checks(gen: _FnGen, args: list[_E]) -> list[str]:
    """The tests still needed to know that every arg is an exact integer."""
    return [gen.int_check(a) for a in args if not a.int_known]


def _has_other_constant(args: list[_E]) -> bool:
    return any(a.kind == "const" for a in args)


def _binary_int_op(op: str, boolean: bool) -> Callable:
    def build(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
        # Where each operand is used once, it stays an expression (no temporary).
        has_call = any(x.has_call for x in args)
        if _has_other_constant(args):
            return _E(_call_text(fallback, args), "expr", boolean, has_call)
        if all(x.int_known for x in args):      # proven integers: the Python operator alone
            a, b = args
            return _E(f"({a.code} {op} {b.code})", "expr", boolean, has_call,
                      int_known=not boolean)
        a, b = (gen.atom(x) for x in args)
        checks = _int_checks(gen, [a, b])
        return _E(f"({a.code} {op} {b.code} if {' and '.join(checks)} else "
                  f"{_call_text(fallback, [a, b])})", "expr", boolean)
    return build


def _negate(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
    a = gen.atom(args[0])
    if a.int_known:
        return _E(f"(-{a.code})", "expr", int_known=True)
    if a.kind == "const":
        return _E(f"{fallback}({a.code})", "expr")
    return _E(f"(-{a.code} if {gen.int_check(a)} else {fallback}({a.code}))", "expr")


def _is_zero(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
    a = gen.atom(args[0])
    if a.kind == "name":
        return _E(f"({a.code} == 0 if {gen.int_check(a)} else {fallback}({a.code}))", "expr",
                  True)
    return _E(f"{fallback}({a.code})", "expr", True)


def _pair_field(field: str) -> Callable:
    def build(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
        a = gen.atom(args[0])
        if a.kind != "name":
            return _E(f"{fallback}({a.code})", "expr")
        return _E(f"({a.code}.{field} if R_type({a.code}) is R_Pair else {fallback}({a.code}))",
                  "expr")
    return build


def _is_pair(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
    a = gen.atom(args[0])
    return _E(f"(R_type({a.code}) is R_Pair or {fallback}({a.code}))", "expr", True)


def _is_eqv(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
    a, b = (gen.atom(x) for x in args)
    return _E(f"({a.code} is {b.code} or {fallback}({a.code}, {b.code}))", "expr", True)


def _template(text: str, boolean: bool) -> Callable:
    """An operation that uses each argument once, so it needs no temporaries."""
    def build(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
        return _E("(" + text.format(*(a.code for a in args)) + ")", "expr", boolean,
                  any(a.has_call for a in args))
    return build


def _negation(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
    """not: Python's not when the operand is known to be a boolean."""
    a = args[0]
    text = f"(not {a.code})" if a.boolean else f"({a.code} is False)"
    return _E(text, "expr", True, a.has_call)


def _cons(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
    """native._fastpath.cons: one C call makes the Pair (it calls nothing
    of Scheme's, so the expression has a call only if an argument has)."""
    car, cdr = args
    return _E(f"R_make_pair({car.code}, {cdr.code})", "expr", False,
              car.has_call or cdr.has_call)


# -- inlined data procedures (vm/_builtins) ----------------------------------------------------
#
# Each tests the exact Python types of its operands and then does the work in
# Python's own terms (an index, a slot, a list append); any other operand goes
# to the standard procedure, which handles the other kinds (image handles of
# other classes, MStrings) and signals the errors.  A placeholder constant
# never meets a subscript (Python's optimiser folds 'K1'[0]): a call with a
# constant where the fast path would subscript it calls the procedure.

def _call_text(fallback: str, args: list[_E]) -> str:
    return f"{fallback}({', '.join(a.code for a in args)})"


def _is_literal(e: _E) -> bool:
    return e.kind == "const" or e.kind == "int"


def _is_char_constant(e: _E) -> bool:
    return e.kind == "const" and e.value.__class__ is Char


def _guarded(fast: str, tests: list[str], fallback_call: str, **flags: Any) -> _E:
    """The fast expression where every test holds, else the procedure call."""
    if not tests:
        return _E(f"({fast})", "expr", **flags)
    return _E(f"({fast} if {' and '.join(tests)} else {fallback_call})", "expr", **flags)


def _index_tests(gen: _FnGen, k: _E, sized: str) -> list[str]:
    """The tests that k is an index into the sequence named sized."""
    tests = [] if k.int_known else [gen.int_check(k)]
    low = "" if k.kind == "int" and k.value >= 0 else "0 <= "
    tests.append(f"{low}{k.code} < R_len({sized})")
    return tests


def _vector_ref(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
    """v[k] in a try: an image Vector's length costs as much as the read
    itself, so an index past the end is found by the IndexError."""
    v, k = (gen.atom(a) for a in args)
    call = _call_text(fallback, [v, k])
    if v.kind == "const" or k.kind == "const":
        return _E(call, "expr")
    tests = [gen.type_test(v, "R_type({}) in R_vectors")]
    if not k.int_known:
        tests.append(gen.int_check(k))
    if not (k.kind == "int" and k.value >= 0):
        tests.append(f"{k.code} >= 0")      # Python would count a negative one from the end
    return _try_statement(gen, " and ".join(tests), f"{v.code}[{k.code}]", call)


def _try_statement(gen: _FnGen, test: str, fast: str, fallback_call: str,
                   missing: str | None = None) -> _E:
    """Where test holds, fast in a try whose exception calls the procedure
    (which signals the error, or handles what fast could not); else the
    procedure.  missing: the value when fast raises KeyError instead.  An
    item read from the image that is a stored procedure is the procedure
    (vm/_persist.read_back), as the procedure's own fast path gives it."""
    temp = gen.unit.fresh("t")
    gen.emit(f"if {test}:")
    gen.emit("    try:")
    gen.emit(f"        {temp} = {fast}")
    gen.emit(f"        if R_type({temp}) is R_StoredProcedure:")
    gen.emit(f"            {temp} = {temp}._known()")
    if missing is not None:
        gen.emit("    except R_KeyError:")
        gen.emit(f"        {temp} = {missing}")
    gen.emit("    except R_Exception:")
    gen.emit(f"        {temp} = {fallback_call}")
    gen.emit("else:")
    gen.emit(f"    {temp} = {fallback_call}")
    return _E(temp, "name")


def _vector_set(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
    """Transient vectors only: a write into an image Vector is a transaction."""
    v, k, x = (gen.atom(a) for a in args)
    call = _call_text(fallback, [v, k, x])
    if _is_literal(v) or k.kind == "const":
        return _E(call, "expr", has_call=True)
    tests = [gen.type_test(v, "R_type({}) is R_SVector")] + _index_tests(gen, k, v.code)
    return _guarded(f"R_list_set({v.code}, {k.code}, {x.code})", tests, call, has_call=True)


def _length_of(type_test: str) -> Callable:
    """vector-length, string-length: an exact integer whichever path runs."""
    def build(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
        x = gen.atom(args[0])
        call = _call_text(fallback, [x])
        if _is_literal(x):
            return _E(call, "expr", int_known=True)
        return _guarded(f"R_len({x.code})", [gen.type_test(x, type_test)], call, int_known=True)
    return build


def _string_ref(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
    s, k = (gen.atom(a) for a in args)
    call = _call_text(fallback, [s, k])
    if _is_literal(s) or k.kind == "const":
        return _E(call, "expr")
    tests = [gen.type_test(s, "R_type({}) is R_str")] + _index_tests(gen, k, s.code)
    return _guarded(f"R_chars[R_ord({s.code}[{k.code}])]", tests, call)


def _char_to_integer(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
    c = gen.atom(args[0])
    if _is_char_constant(c):
        return _E(str(c.value.cp), "int", value=c.value.cp)
    call = _call_text(fallback, [c])
    if _is_literal(c):
        return _E(call, "expr", int_known=True)
    return _guarded(f"{c.code}.cp", [gen.type_test(c, "R_type({}) is R_Char")], call,
                    int_known=True)


def _char_comparison(op: str) -> Callable:
    """char=? char<? ...: code points compared, for two characters."""
    def build(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
        a, b = (gen.atom(x) for x in args)
        call = _call_text(fallback, [a, b])
        operands, tests = [], []
        for e in (a, b):
            if _is_char_constant(e):
                operands.append(str(e.value.cp))
            elif _is_literal(e):
                return _E(call, "expr", True)
            else:
                operands.append(f"{e.code}.cp")
                tests.append(gen.type_test(e, "R_type({}) is R_Char"))
        return _guarded(f"{operands[0]} {op} {operands[1]}", tests, call, boolean=True)
    return build


def _write_to_string_port(kind: str) -> Callable:
    """write-char, write-string with a port argument: an append to the
    chunks of an open string port (vm/_builtins.StringOutputPort)."""
    def build(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
        x, port = (gen.atom(a) for a in args)
        call = _call_text(fallback, [x, port])
        if _is_literal(port):
            return _E(call, "expr", has_call=True)
        tests = [gen.type_test(port, "R_type({}) is R_StringPort"), f"not {port.code}.closed"]
        if kind == "char" and _is_char_constant(x):
            text = repr(chr(x.value.cp))
        elif kind == "string" and x.kind == "const" and x.value.__class__ is str:
            text = x.code
        elif _is_literal(x):
            return _E(call, "expr", has_call=True)
        elif kind == "char":
            tests.insert(0, gen.type_test(x, "R_type({}) is R_Char"))
            text = f"R_chr({x.code}.cp)"
        else:
            tests.insert(0, gen.type_test(x, "R_type({}) is R_str"))
            text = x.code
        return _guarded(f"{port.code}.chunks.append({text})", tests, call, has_call=True)
    return build


def _plain_key_test(gen: _FnGen, key: _E) -> str | None:
    """The test that key is one an image Table takes as it is (vm/_builtins
    IMAGE_PLAIN_KEYS), as ' and ...'; None if it is a constant of another kind."""
    if key.kind == "int" or key.kind == "const" and key.value.__class__ is str:
        return ""
    if key.kind == "const":
        return None
    return " and " + gen.type_test(key, "R_type({}) in R_plain_keys")


def _table_ref(gen: _FnGen, fallback: str, args: list[_E]) -> _E:
    """hash-table-ref (no thunks) and hash-table-ref/default on an image Table:
    the Table's own lookup, in a try (statements: a miss is an exception)."""
    table, key, *default = (gen.atom(a) for a in args)
    call = _call_text(fallback, [table, key, *default])
    key_test = _plain_key_test(gen, key)
    if _is_literal(table) or key_test is None:
        return _E(call, "expr")
    return _try_statement(gen, gen.type_test(table, "R_type({}) is R_Table") + key_test,
                          f"{table.code}[{key.code}]", call, default[0].code if default else None)


# (Scheme name, argument count) -> (fallback helper, builder, from _builtins).
# The fallback is the standard procedure itself, which signals the Scheme
# error or handles the other types.  An entry marked "from _builtins" is used
# only where the standard procedure is vm/_builtins' own (the builder relies
# on its semantics and its types).  Chosen by measurement (bench/bench_vm.py):
# these operations dominate the inner loops of numeric, list, string, vector,
# port and image code.
_INLINE: dict[tuple[str, int], tuple[str, Callable, bool]] = {
    ("+", 2): ("R_add", _binary_int_op("+", False), False),
    ("-", 2): ("R_sub", _binary_int_op("-", False), False),
    ("*", 2): ("R_mul", _binary_int_op("*", False), False),
    ("-", 1): ("R_neg", _negate, False),
    ("=", 2): ("R_numeq", _binary_int_op("==", True), False),
    ("<", 2): ("R_lt", _binary_int_op("<", True), False),
    (">", 2): ("R_gt", _binary_int_op(">", True), False),
    ("<=", 2): ("R_le", _binary_int_op("<=", True), False),
    (">=", 2): ("R_ge", _binary_int_op(">=", True), False),
    ("zero?", 1): ("R_zero", _is_zero, False),
    ("car", 1): ("R_car", _pair_field("car"), False),
    ("cdr", 1): ("R_cdr", _pair_field("cdr"), False),
    ("pair?", 1): ("R_pairp", _is_pair, False),
    ("eqv?", 2): ("R_eqv", _is_eqv, False),
    ("cons", 2): ("R_cons", _cons, False),
    ("eq?", 2): ("R_eq", _template("{} is {}", True), False),
    ("not", 1): ("R_not", _negation, False),
    ("null?", 1): ("R_nullp", _template("{} is R_NIL", True), False),
    ("vector-ref", 2): ("R_vector_ref", _vector_ref, True),
    ("vector-set!", 3): ("R_vector_set", _vector_set, True),
    ("vector-length", 1): ("R_vector_length", _length_of("R_type({}) in R_vectors"), True),
    ("string-length", 1): ("R_string_length", _length_of("R_type({}) is R_str"), True),
    ("string-ref", 2): ("R_string_ref", _string_ref, True),
    ("char->integer", 1): ("R_char_to_integer", _char_to_integer, True),
    ("char=?", 2): ("R_char_eq", _char_comparison("=="), True),
    ("char<?", 2): ("R_char_lt", _char_comparison("<"), True),
    ("char>?", 2): ("R_char_gt", _char_comparison(">"), True),
    ("char<=?", 2): ("R_char_le", _char_comparison("<="), True),
    ("char>=?", 2): ("R_char_ge", _char_comparison(">="), True),
    ("write-char", 2): ("R_write_char", _write_to_string_port("char"), True),
    ("write-string", 2): ("R_write_string", _write_to_string_port("string"), True),
    ("hash-table-ref", 2): ("R_hash_table_ref", _table_ref, True),
    ("hash-table-ref/default", 3): ("R_hash_table_ref_default", _table_ref, True),
}


# -- code generation ------------------------------------------------------------------------------

# Larger integers become placeholders: their decimal text could pass Python's
# int/str conversion limit (4,300 digits), and they are rare in code.
_LITERAL_INT_BITS = 1024


class _Unit:
    """What one generated text shares: constants, names, the environment."""

    def __init__(self, env: Environment, written: set[Symbol]) -> None:
        self.env = env
        self.written = written
        self.constants: dict[str, Any] = {}     # placeholder -> object
        self._by_id: dict[int, str] = {}
        self.display_names: dict[str, str] = {}  # def name -> Scheme name, for co_name
        self.counter = itertools.count(1)
        self.untracked: Lambda | None = None     # the lambda being recompiled

    def constant(self, value: Any) -> _E:
        """A Python literal for value, or a placeholder replaced after compile()."""
        cls = value.__class__
        if cls is int and value.bit_length() <= _LITERAL_INT_BITS:
            return _E(f"({value})" if value < 0 else repr(value), "int", value=value)
        if value is None or cls is bool:
            return _E(repr(value), "const", value=value)
        if cls is float and value == value and value not in (float("inf"), float("-inf")):
            return _E(f"({value!r})" if value < 0 or repr(value).startswith("-") else repr(value),
                      "const", value=value)
        if cls is str and len(value) == 1:
            return _E(repr(value), "const", value=value)
        key = self._by_id.get(id(value))
        if key is None:
            key = self._by_id[id(value)] = f"K{len(self.constants) + 1}"
            self.constants[key] = value
        return _E(repr(key), "const", value=value)

    def fresh(self, prefix: str) -> str:
        return f"_{prefix}{next(self.counter)}"


class _FnGen:
    """Generates the body of one Python function (a Scheme lambda or the unit)."""

    def __init__(self, unit: _Unit, lam: Lambda) -> None:
        self.unit = unit
        self.lam = lam
        self.lines: list[str] = []
        self.depth = 1
        self.nonlocals: dict[str, None] = {}
        self.baked: set[Symbol] = set()
        self.looped = False
        # Parameters no set! changes, and free variables no set! changes that
        # have their value before the lambda exists (not letrec*'s): their
        # integer test can be computed once per call.
        self.param_vars = {v.py: v for v in lam.params if not v.assigned}
        constant_free = [v.py for v in lam.free if not (v.assigned or v.recursive)]
        self.param_vars.update((v.py, v) for v in lam.free if v.py in constant_free)
        # Those free variables keep one value for the whole call (a loop's
        # iterations included): a type test of one is made once, on entry.
        self.constant_free = frozenset(constant_free)
        self.type_facts: dict[str, str] = {}    # test text -> its variable
        self.facts: dict[str, str] = {}     # parameter -> its fact variable
        self.facts_enabled = True
        # Python names proven to hold exact integers where they are used.
        self.known_int: set[str] = set()
        # Generating the fast body (see specialise): the facts are true, and
        # maybe_int_self tells whether a self call with integer arguments may
        # be assumed to return an integer (the hypothesis being verified).
        self.fast = False
        self.assume_int_self = False
        self.fast_exits = False          # a self tail call left the fast loop
        self.returns_int = True          # every value the fast body returns is an integer
        # The fast body's non-tail self calls with integer arguments: how many,
        # and the name they call when they go to the fast entry (split_fast).
        self.int_self_calls = 0
        self.fast_entry: str | None = None

    # -- output --

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def atom(self, e: _E) -> _E:
        """e as a name or literal (a temporary for an expression)."""
        if e.atomic:
            return e
        temp = self.unit.fresh("t")
        self.emit(f"{temp} = {e.code}")
        if e.int_known:
            self.known_int.add(temp)
        return _E(temp, "name", e.boolean, int_known=e.int_known)

    # -- one function --

    def function(self, pyname: str) -> list[str]:
        """The complete ``def`` of self.lam, indented at depth 0 (preceded by
        the def of its fast entry, if it gets one: see split_fast)."""
        lam = self.lam
        params = [v.py for v in lam.params]
        if lam.rest is not None:
            params.append(lam.rest.py if lam.rest_as_list else "*" + lam.rest.py)
        prologue = []
        if lam.rest is not None and not lam.rest_as_list:
            prologue.append(f"    {lam.rest.py} = R_list({lam.rest.py})")
        before: list[str] = []
        self.tail(lam.body)
        generic, loops = self.lines, self.looped
        if self.facts and not (lam.is_unit or lam.no_bake or lam.contains_lambda):
            # One short-circuit test selects the fast body; the generic body,
            # taken only when some fact fails, tests inline instead.  Only
            # for leaf lambdas: the body is written twice, and nested ones
            # would double again at every level.
            fast, fast_loops, exits = self.fast_body()
            if self.int_self_calls and not exits and not lam.free and lam.rest is None:
                entry, before, fast, fast_loops = self.split_fast(params)
                params = params + ["*", f"R_fast={entry}"]
            test = " and ".join(f"R_type({py}) is R_int" for py in self.facts)
            self.facts_enabled = False
            self.lines, self.looped = [], False
            self.tail(lam.body)
            generic, loops = self.lines, self.looped
            if fast_loops:
                fast = ["    while True:"] + _indent(fast)
            body = [f"    if {test}:"] + _indent(fast) + ["    else:"] + _indent(generic)
            loops = loops or exits
        else:
            body = [f"    {fact} = R_type({py}) is R_int" for py, fact in self.facts.items()]
            body += generic
        if loops:
            body = ["    while True:"] + _indent(body)
        prologue += [f"    {fact} = {test}" for test, fact in self.type_facts.items()]
        if self.nonlocals:
            prologue.insert(0, f"    nonlocal {', '.join(self.nonlocals)}")
        return before + [f"def {pyname}({', '.join(params)}):"] + prologue + body

    def split_fast(self, params: list[str]) -> tuple[str, list[str], list[str], bool]:
        """A recursive leaf lambda's fast entry: the fast body as a function of
        its own, which its integer self calls call directly, so that the
        recursion skips the entry test (module docstring).  It reaches itself
        through a positional default
        (R_self, which no caller passes) and the procedure reaches it through
        a keyword-only default (R_fast): no closure cell, so the procedure
        is still stored in the image from its source alone, and a
        recompilation swaps __kwdefaults__ with __code__.  Only for lambdas
        without free variables (a recompiled closure keeps its own cells,
        which a fresh fast entry would not share) and whose fast body never
        leaves for the generic one.  The price: Python 3.11 does not
        specialise calls of a function with a keyword-only parameter, so a
        call from outside costs a little more (the calls below it do not).  Returns
        its name, the lines of its def,
        and the procedure's fast body calling it (lines, loops)."""
        name = self.unit.fresh("s")
        self.unit.display_names[name] = self.lam.name or "lambda"
        self.fast_entry = "R_self"
        own, own_loops, _ = self.fast_body()
        self.fast_entry = "R_fast"
        fast, fast_loops, _ = self.fast_body()
        self.fast_entry = None
        if own_loops:
            own = ["    while True:"] + _indent(own)
        lines = [f"def {name}({', '.join(params + ['R_self=None'])}):"] + own
        lines.append(f"{name}.__defaults__ = ({name},)")
        return name, lines, fast, fast_loops

    def fast_body(self) -> tuple[list[str], bool, bool]:
        """The body specialised for its fact parameters being exact integers:
        (lines, loops, may leave the fast loop).  First generated under the
        hypothesis that a self call with integer fact arguments returns an
        integer; kept only if every value the fast body returns is then a
        proven integer and no self tail call leaves it (so the hypothesis
        holds by induction), else generated again without it."""
        for hypothesis in (True, False):
            saved = (self.lines, self.looped, self.known_int)
            self.lines, self.looped, self.known_int = [], False, set(self.facts)
            self.fast, self.assume_int_self = True, hypothesis
            self.fast_exits, self.returns_int = False, True
            self.tail(self.lam.body)
            result = (self.lines, self.looped, self.fast_exits)
            verified = self.returns_int and not self.fast_exits
            self.lines, self.looped, self.known_int = saved
            self.fast = self.assume_int_self = False
            if verified or not hypothesis:
                return result
        raise AssertionError("unreachable")

    # -- expressions in the three modes: value, tail, effect --

    def value(self, node: Any) -> _E:
        kind = node.__class__
        if kind is Const:
            return self.unit.constant(node.value)
        if kind is LocalRef:
            py = node.var.py
            return _E(py, "name", int_known=py in self.known_int)
        if kind is GlobalRef:
            return _E(mangle(node.sym.name), "name")
        if kind is Call:
            return self.call_value(node)
        if kind is If:
            return self.if_value(node)
        if kind is Lambda:
            return _E(self.define_lambda(node, self.unit.fresh("f")), "name")
        if kind is CaseLambda:
            return _E(self.define_case_lambda(node, self.unit.fresh("f")), "name")
        if kind is Begin:
            for e in node.body[:-1]:
                self.effect(e)
            return self.value(node.body[-1])
        if kind is Let:
            self.bind(node)
            return self.value(node.body)
        self.effect(node)       # set!, define: unspecified value
        return _NONE

    def tail(self, node: Any) -> None:
        kind = node.__class__
        if kind is Call:
            self.tail_call(node)
        elif kind is If:
            self.emit_if(node, self.tail)
        elif kind is Begin:
            for e in node.body[:-1]:
                self.effect(e)
            self.tail(node.body[-1])
        elif kind is Let:
            self.bind(node)
            self.tail(node.body)
        else:
            self.emit_return(self.value(node))

    def emit_return(self, e: _E) -> None:
        if not e.int_known:
            self.returns_int = False
        self.emit(f"return {e.code}")

    def effect(self, node: Any) -> None:
        kind = node.__class__
        if kind is Const or kind is LocalRef or kind is Lambda or kind is CaseLambda:
            return
        if kind is GlobalRef:
            self.emit(mangle(node.sym.name))     # an unbound variable is still an error
        elif kind is Call:
            e = self.call_value(node)
            if not e.atomic:
                self.emit(e.code)
        elif kind is If:
            self.emit_if(node, self.effect)
        elif kind is Begin:
            for e in node.body:
                self.effect(e)
        elif kind is Let:
            self.bind(node)
            self.effect(node.body)
        elif kind is SetLocal:
            self.set_local(node)
        elif kind is SetGlobal:
            self.set_global(node)
        else:
            raise SchemeError(f"compile: unknown node {kind.__name__}")

    # -- if --

    def test(self, node: Any) -> str:
        return self.test_value(node).code

    def test_value(self, node: Any) -> _E:
        """node as a Python truth value: only #f is false."""
        e = self.value(node)
        return e if e.boolean else _E(f"{e.code} is not False", "expr", True, e.has_call)

    def emit_if(self, node: If, branch: Callable) -> None:
        """An if statement, with else-ifs flattened into elif while their tests
        need no statements of their own."""
        keyword = "if"
        while True:
            if node.test.__class__ is Const:
                chosen = node.otherwise if node.test.value is False else node.then
                if keyword == "if":
                    branch(chosen)
                else:
                    self.block("else:", chosen, branch)
                return
            mark = len(self.lines)
            test = self.test(node.test)
            if keyword == "elif" and len(self.lines) != mark:
                # The test needed statements: they cannot sit between if and elif.
                pending = self.lines[mark:]
                del self.lines[mark:]
                self.emit("else:")
                self.lines.extend("    " + line for line in pending)
                self.depth += 1
                self.emit(f"if {test}:")
                self.block(None, node.then, branch)
                self.block("else:", node.otherwise, branch)
                self.depth -= 1
                return
            self.block(f"{keyword} {test}:", node.then, branch)
            if node.otherwise.__class__ is If:
                node = node.otherwise
                keyword = "elif"
                continue
            self.block("else:", node.otherwise, branch)
            return

    def block(self, header: str | None, node: Any, branch: Callable) -> None:
        if header:
            self.emit(header)
        self.depth += 1
        mark = len(self.lines)
        branch(node)
        if len(self.lines) == mark:
            self.emit("pass")
        self.depth -= 1

    def if_value(self, node: If) -> _E:
        if node.test.__class__ is Const:
            return self.value(node.otherwise if node.test.value is False else node.then)
        test_value = self.test_value(node.test)
        test = test_value.code
        saved, self.lines = self.lines, []
        self.depth += 1
        then = self.value(node.then)
        then_lines, self.lines = self.lines, []
        otherwise = self.value(node.otherwise)
        else_lines = self.lines
        self.lines = saved
        self.depth -= 1
        both_int = then.int_known and otherwise.int_known
        if not then_lines and not else_lines:
            return _E(f"({then.code} if {test} else {otherwise.code})", "expr",
                      then.boolean and otherwise.boolean,
                      test_value.has_call or then.has_call or otherwise.has_call, both_int)
        temp = self.unit.fresh("t")
        self.emit(f"if {test}:")
        self.lines.extend(then_lines)
        self.lines.append("    " * (self.depth + 1) + f"{temp} = {then.code}")
        self.emit("else:")
        self.lines.extend(else_lines)
        self.lines.append("    " * (self.depth + 1) + f"{temp} = {otherwise.code}")
        if both_int:
            self.known_int.add(temp)
        return _E(temp, "name", then.boolean and otherwise.boolean, int_known=both_int)

    # -- calls --

    def inline(self, node: Call) -> _E | None:
        entry = _inline_entry(self.unit, self.lam, node)
        if entry is None:
            return None
        fallback, build, _ = entry
        env = self.unit.env
        standard = env.standard_value(node.fn.sym)
        if env.namespace.get(fallback) is not standard:
            env.namespace[fallback] = standard
        self.baked.add(node.fn.sym)
        return build(self, fallback, self.arguments(node.args))

    def call_value(self, node: Call) -> _E:
        inlined = self.inline(node)
        if inlined is not None:
            return inlined
        kind, bake = _callee(self.unit, self.lam, node.fn)
        fn, *values = self.arguments([node.fn] + node.args)
        args = ", ".join(v.code for v in values)
        if self.assume_int_self and self.int_self_call(node, values):
            if node.fn.__class__ is GlobalRef:
                self.baked.add(node.fn.sym)
            self.int_self_calls += 1
            callee = self.fast_entry or fn.code
            return _E(f"{callee}({args})", "expr", has_call=True, int_known=True)
        if kind == "plain" or kind == "self" and _tail_free(self.unit, self.lam):
            if bake is not None:
                self.baked.add(bake)
            # Never a TailCall: no check needed.
            return _E(f"{fn.code}({args})", "expr", has_call=True)
        temp = self.unit.fresh("t")
        self.emit(f"{temp} = {fn.code}({args})")
        self.emit(f"if R_type({temp}) is R_TailCall: {temp} = R_resolve({temp})")
        return _E(temp, "name")

    def tail_call(self, node: Call) -> None:
        if _is_self_call(self.lam, node):
            self.self_call(node)
            return
        inlined = self.inline(node)
        if inlined is not None:
            self.emit_return(inlined)
            return
        self.returns_int = False
        kind, bake = _callee(self.unit, self.lam, node.fn)
        fn, *values = self.arguments([node.fn] + node.args)
        fn = fn.code
        args = [v.code for v in values]
        if kind == "plain" or kind == "direct":
            if bake is not None:
                self.baked.add(bake)
            self.emit(f"return {fn}({', '.join(args)})")
        else:
            packed = "(" + "".join(a + ", " for a in args).rstrip(" ") + ")"
            self.emit(f"return R_TailCall({fn}, {packed})")

    def self_call(self, node: Call) -> None:
        values = self.arguments(node.args)
        params = [v.py for v in self.lam.params]
        if params:
            self.emit(f"{', '.join(params)} = {', '.join(v.code for v in values)}")
        if self.fast and not self.facts_hold(values):
            self.emit("break")          # to the generic loop, which tests the facts again
            self.fast_exits = True
        else:
            self.emit("continue")
        self.looped = True
        if node.fn.__class__ is GlobalRef:
            self.baked.add(node.fn.sym)

    def facts_hold(self, args: list[_E]) -> bool:
        """Are the arguments for the fact parameters proven integers?"""
        return all(args[i].int_known for i, v in enumerate(self.lam.params)
                   if v.py in self.facts)

    def int_self_call(self, node: Call, args: list[_E]) -> bool:
        """A call of this lambda itself whose fact parameters get integers."""
        lam, fn = self.lam, node.fn
        is_self = (fn.__class__ is GlobalRef and fn.sym is lam.self_global) or \
            (fn.__class__ is LocalRef and fn.var is lam.self_var and not fn.var.assigned)
        return is_self and len(args) == len(lam.params) and lam.rest is None \
            and self.facts_hold(args)

    def arguments(self, nodes: list) -> list[_E]:
        """The operands of a call, evaluated so that the calls among them
        happen left to right: an operand whose expression calls a procedure
        is put in a temporary before any later operand's statements run.
        Variable references and inlined primitive operations may still be
        evaluated after later operands (R7RS leaves the order unspecified)."""
        results: list[_E] = []
        spans: list[tuple[int, int]] = []
        for node in nodes:
            start = len(self.lines)
            results.append(self.value(node))
            spans.append((start, len(self.lines)))
        later_statements = False
        for i in range(len(nodes) - 1, -1, -1):
            start, end = spans[i]
            e = results[i]
            if later_statements and e.has_call and not e.atomic:
                temp = self.unit.fresh("t")
                self.lines.insert(end, "    " * self.depth + f"{temp} = {e.code}")
                results[i] = _E(temp, "name", e.boolean)
            later_statements = later_statements or end > start
        return results

    def type_test(self, atom: _E, test: str) -> str:
        """test (a format of one name) applied to atom; for a free variable
        that keeps its value (constant_free), a fact variable set on entry."""
        text = test.format(atom.code)
        if atom.code not in self.constant_free:
            return text
        fact = self.type_facts.get(text)
        if fact is None:
            fact = self.type_facts[text] = self.unit.fresh("k")
        return fact

    def int_check(self, atom: _E) -> str:
        """The test that atom is an exact integer: a parameter's is computed
        once per call (or loop iteration) into a fact variable."""
        var = self.param_vars.get(atom.code)
        if var is None or not self.facts_enabled:
            return f"R_type({atom.code}) is R_int"
        if self.fast and var.py in self.facts:
            return "True"       # not reached: fact parameters are known_int there
        fact = self.facts.get(var.py)
        if fact is None:
            fact = self.facts[var.py] = self.unit.fresh("k")
        return fact

    # -- binding forms --

    def bind(self, node: Let) -> None:
        for var, init in node.bindings:
            if init.__class__ is Lambda:
                self.define_lambda(init, var.py)
            elif init.__class__ is CaseLambda:
                self.define_case_lambda(init, var.py)
            else:
                e = self.value(init)
                self.emit(f"{var.py} = {e.code}")
                if e.int_known and not var.assigned:
                    self.known_int.add(var.py)

    def set_local(self, node: SetLocal) -> None:
        var = node.var
        if var.owner is not self.lam:
            self.nonlocals[var.py] = None
        self.emit(f"{var.py} = {self.value(node.value).code}")

    def set_global(self, node: SetGlobal) -> None:
        door = "R_define" if node.define else "R_set"
        symbol = self.unit.constant(node.sym).code
        value = node.value
        if value.__class__ is Lambda:
            name = self.define_lambda(value, self.unit.fresh("f"))
        elif value.__class__ is CaseLambda:
            name = self.define_case_lambda(value, self.unit.fresh("f"))
        else:
            name = self.value(value).code
        self.emit(f"{door}({symbol}, {name})")

    # -- lambdas --

    def define_lambda(self, lam: Lambda, pyname: str) -> str:
        """Emits the def of lam (and its site dict); returns its Python name."""
        gen = _FnGen(self.unit, lam)
        lines = gen.function(pyname)
        self.baked |= gen.baked
        self.lines.extend("    " * self.depth + line for line in lines)
        display = lam.name or "lambda"
        self.unit.display_names[pyname] = display
        if lam.params:
            ARITY[(display, lam.params[-1].py)] = (len(lam.params), lam.rest is not None)
        self.attach_site(lam, pyname, gen.baked)
        return pyname

    def attach_site(self, lam: Lambda, pyname: str, baked: set) -> None:
        self_info = None
        if lam.self_global is not None:
            self_info = ("global", lam.self_global)
        elif lam.self_var is not None:
            self_info = ("local", lam.self_var.sym)
        site = {
            "scheme_lambda": lam.core,
            "scheme_name": lam.name,
            "scheme_baked": frozenset(baked),
            "scheme_free": tuple((v.sym, v.py) for v in lam.free),
            "scheme_self": self_info,
            "scheme_tail": not _tail_free(self.unit, lam),
        }
        self.emit(f"{pyname}.__dict__ = {self.unit.constant(site).code}")
        if baked and self.may_escape(lam):
            self.emit(f"R_track({pyname})")

    def may_escape(self, lam: Lambda) -> bool:
        """Could this closure outlive the activation that makes it?"""
        if lam.is_define_value or lam is self.unit.untracked:
            return False       # define registers it; a recompiled one is tracked by its owner
        var = lam.binding_var
        if var is None or var.escapes or var.assigned:
            return True
        return bool(var.captured_by - {lam})

    def define_case_lambda(self, node: CaseLambda, pyname: str) -> str:
        clause_names = []
        for clause in node.clauses:
            clause.tail_free = False      # the dispatcher returns what the clause returns
            clause_name = self.unit.fresh("c")
            gen = _FnGen(self.unit, clause)
            self.lines.extend("    " * self.depth + line for line in gen.function(clause_name))
            self.unit.display_names[clause_name] = node.name or "case-lambda"
            clause_names.append(clause_name)
        display = node.name or "case-lambda"
        # The clauses travel as a keyword-only default, not as closure cells:
        # a case-lambda over globals only has an empty __closure__, like a
        # lambda (the image stores such procedures from their source).
        clauses = "".join(name + ", " for name in clause_names)
        self.emit(f"def {pyname}(*args, R_clauses=({clauses})):")
        self.emit("    n = R_len(args)")
        for index, clause in enumerate(node.clauses):
            fixed = len(clause.params)
            spread = [f"args[{i}]" for i in range(fixed)]
            call = f"R_clauses[{index}]"
            if clause.rest is None:
                self.emit(f"    if n == {fixed}: return {call}({', '.join(spread)})")
            else:
                spread.append(f"R_list(args[{fixed}:])")
                self.emit(f"    if n >= {fixed}: return {call}({', '.join(spread)})")
        self.emit(f"    raise R_no_clause({self.unit.constant(display).code}, n)")
        self.unit.display_names[pyname] = display
        lam = Lambda(node.core, node.name, self.lam)
        lam.tail_free = False               # it returns whatever its clause returns
        self.attach_site(lam, pyname, set())
        return pyname


# -- call analysis: what the generator may assume about a call ------------------------------------

def _inline_entry(unit: _Unit, lam: Lambda, node: Call) -> tuple | None:
    """The _INLINE entry for this call, if the global is still the standard procedure."""
    fn = node.fn
    if fn.__class__ is not GlobalRef or lam.no_bake or fn.sym in unit.written:
        return None
    entry = _INLINE.get((fn.sym.name, len(node.args)))
    if entry is None or not unit.env.is_standard(fn.sym):
        return None
    if entry[2] and unit.env.standard_value(fn.sym) is not _builtin_primitive(fn.sym.name):
        return None
    return entry


def _builtin_primitive(name: str) -> Callable | None:
    """vm/_builtins' procedure of that name (imported on first use: the
    compiler itself works without the data procedures)."""
    try:
        from ._builtins import PRIMITIVES
    except ImportError:
        return None
    return PRIMITIVES.get(name)


def _is_self_call(lam: Lambda, node: Call) -> bool:
    """A call of lam by its own name, which a loop can replace (in tail position)."""
    if len(node.args) != len(lam.params) or not lam.loop_ok():
        return False
    fn = node.fn
    if fn.__class__ is LocalRef:
        return fn.var is lam.self_var and not fn.var.assigned
    return fn.__class__ is GlobalRef and fn.sym is lam.self_global


def _callee(unit: _Unit, lam: Lambda, fn: Any) -> tuple[str, Symbol | None]:
    """What is known of the procedure a call's operator evaluates to, and the
    global whose current value that knowledge comes from (to bake):

      "self"    lam itself, by the global name its define gives it;
      "plain"   it never returns a TailCall (a standard primitive, generated
                code whose tail positions never make one, a local lambda
                likewise): no trampoline check after a call;
      "direct"  a Python function that is not generated code: a tail call may
                call it directly (module docstring);
      "unknown" anything else."""
    if lam.no_bake:
        return "unknown", None
    kind = fn.__class__
    if kind is GlobalRef:
        sym = fn.sym
        if sym is lam.self_global:
            return "self", sym
        if sym in unit.written:
            return "unknown", None
        value = unit.env.namespace.get(mangle(sym.name))
        if hasattr(value, "scheme_lambda"):
            return ("unknown", None) if value.scheme_tail else ("plain", sym)
        if isinstance(value, _PLAIN_FUNCTIONS):
            if unit.env.is_standard(sym) and not getattr(value, "returns_tailcall", False):
                return "plain", sym
            return "direct", sym
        return "unknown", None
    if kind is LocalRef:
        node = fn.var.lambda_node
        if node is not None and not fn.var.assigned and _tail_free(unit, node):
            return "plain", None
        return "unknown", None
    if kind is Const and isinstance(fn.value, _PLAIN_FUNCTIONS) \
            and not hasattr(fn.value, "scheme_lambda"):
        return ("direct", None) if getattr(fn.value, "returns_tailcall", False) else ("plain", None)
    return "unknown", None


def _tail_free(unit: _Unit, lam: Lambda) -> bool:
    """Does lam's code never return a TailCall?  Every tail position must be a
    value, an inlined primitive, a self loop or a call of a "plain" callee.
    Pessimistic while being computed, so mutually recursive lambdas are not."""
    if lam.tail_free is None:
        lam.tail_free = False
        lam.tail_free = not lam.no_bake and _tail_free_node(unit, lam, lam.body)
    return lam.tail_free


def _tail_free_node(unit: _Unit, lam: Lambda, node: Any) -> bool:
    kind = node.__class__
    if kind is Call:
        if _is_self_call(lam, node) or _inline_entry(unit, lam, node) is not None:
            return True
        return _callee(unit, lam, node.fn)[0] == "plain"
    if kind is If:
        return _tail_free_node(unit, lam, node.then) and \
            _tail_free_node(unit, lam, node.otherwise)
    if kind is Begin:
        return _tail_free_node(unit, lam, node.body[-1])
    if kind is Let:
        return _tail_free_node(unit, lam, node.body)
    return True


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


# -- runtime helpers the generated code names ------------------------------------------------------

# Procedures a tail call may call directly when they are not generated code:
# Python functions and builtins (the primitives).  Other callables (parameter
# objects, continuations, the image's procedure handles) get a TailCall.
_PLAIN_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def _list_of(items: tuple) -> Any:
    """A Scheme list of a tuple's items (rest arguments)."""
    result = NIL
    for item in reversed(items):
        result = Pair(item, result)
    return result


def _no_clause(name: str, count: int) -> SchemeError:
    return SchemeError(f"{name}: no case-lambda clause takes {count} arguments")


def _install_helpers(env: Environment) -> None:
    namespace = env.namespace
    if "R_TailCall" in namespace:
        return
    namespace.update(R_TailCall=TailCall, R_resolve=resolve, R_int=int, R_Pair=Pair, R_NIL=NIL,
                     R_type=type, R_list=_list_of, R_len=len, R_no_clause=_no_clause,
                     R_make_pair=make_pair, R_str=str, R_Char=Char, R_chars=CHARS,
                     R_chr=chr, R_ord=ord, R_SVector=SVector, R_list_set=list.__setitem__,
                     R_vectors=frozenset(VECTOR_TYPES), R_Table=ImageTable,
                     R_KeyError=KeyError, R_Exception=Exception, R_StoredProcedure=StoredProcedure)
    try:
        from ._builtins import IMAGE_PLAIN_KEYS, StringOutputPort
    except ImportError:     # no data procedures: nothing inlines them
        return
    namespace.update(R_StringPort=StringOutputPort, R_plain_keys=IMAGE_PLAIN_KEYS)


# -- from text to procedures ------------------------------------------------------------------------

def _generate_unit(core: Any, env: Environment, name: str | None) -> tuple[str, _Unit]:
    parser = _Parser()
    root = Lambda(core, name or "toplevel", None)
    root.is_unit = True
    try:
        root.body = parser.parse(core, {}, root)
        unit = _Unit(env, parser.written)
        gen = _FnGen(unit, root)
        lines = gen.function("R_unit")
    except RecursionError as exc:
        raise SchemeError("compile: form too deeply nested (RecursionError)") from exc
    unit.display_names["R_unit"] = root.name
    return "\n".join(lines) + "\n", unit


def compile_toplevel(core: Any, env: Environment, name: str | None = None) -> Callable:
    """A zero-argument procedure that evaluates the core form in env (it may
    return a TailCall, like any procedure: resolve it, or use _runtime.run)."""
    _install_helpers(env)
    text, unit = _generate_unit(core, env, name)
    code = _compile_text(text, unit, name or "toplevel")
    return types.FunctionType(code, env.namespace, unit.display_names["R_unit"])


def compile_lambda(core: Any, env: Environment, name: str | None = None) -> Callable:
    """The procedure a core (lambda ...) or (case-lambda ...) form evaluates to
    at top level, compiled as the value of global ``name`` would be by
    ``(define name core)`` (its scheme_name; self tail calls through that
    global become a loop), but not bound: the caller binds it with
    ``env.define`` -- or, if it writes ``env.namespace`` itself, must call
    ``env.track(procedure)`` so that rebinding a global it baked in
    recompiles it."""
    _install_helpers(env)
    kind = core.car if isinstance(core, Pair) else None
    if kind not in (_LAMBDA, _CASE_LAMBDA):
        raise SchemeError("compile: expected a lambda or case-lambda form", core)
    parser = _Parser()
    root = Lambda(core, name or "toplevel", None)
    root.is_unit = True
    if kind is _LAMBDA:
        node = parser.p_lambda(core, {}, root, name)
        if name is not None:
            node.self_global = intern(name)
        node.is_define_value = True
    else:
        node = parser.p_case_lambda(core, {}, root, name)
    root.body = node
    unit = _Unit(env, parser.written)
    gen = _FnGen(unit, root)
    try:
        pyname = (gen.define_lambda(node, unit.fresh("f")) if kind is _LAMBDA
                  else gen.define_case_lambda(node, unit.fresh("f")))
    except RecursionError as exc:
        raise SchemeError("compile: form too deeply nested (RecursionError)") from exc
    gen.emit(f"return {pyname}")
    unit.display_names["R_unit"] = "factory"
    code = _compile_text("def R_unit():\n" + "\n".join(gen.lines) + "\n", unit, name or "lambda")
    return types.FunctionType(code, env.namespace, "factory")()


def python_source(core: Any, env: Environment, name: str | None = None) -> str:
    """The Python text compile_toplevel generates for core, with its constants
    listed in comments (for debugging and tests)."""
    text, unit = _generate_unit(core, env, name)
    notes = [f"# {key} = {_describe(value)}" for key, value in unit.constants.items()]
    return "\n".join(notes + [text])


def _describe(value: Any) -> str:
    if isinstance(value, dict) and "scheme_lambda" in value:
        return f"<site of {value['scheme_name'] or 'lambda'}>"
    try:
        from ._printer import write
        return write(value)
    except Exception:   # the printer is optional here, and must not hide the source
        return repr(value)


def _compile_text(text: str, unit: _Unit, name: str) -> types.CodeType:
    try:
        with warnings.catch_warnings():
            # Placeholder constants make Python warn about `is` with a literal
            # and about calling a str; both are replaced before running.
            warnings.simplefilter("ignore")
            module = compile(text, f"{GENERATED_FILENAME_PREFIX}{name}>", "exec")
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise SchemeError(f"compile: form too deeply nested ({exc.__class__.__name__})") from exc
    code = next(c for c in module.co_consts if isinstance(c, types.CodeType))
    return _finish(code, unit)


def _finish(code: types.CodeType, unit: _Unit) -> types.CodeType:
    """The code object with placeholders replaced by their objects and Scheme names."""
    changes: dict[str, Any] = {"co_consts": tuple(_finish_constant(c, unit)
                                                  for c in code.co_consts)}
    display = unit.display_names.get(code.co_name)
    if display is not None:
        changes["co_name"] = changes["co_qualname"] = display
    return code.replace(**changes)


def _finish_constant(value: Any, unit: _Unit) -> Any:
    if isinstance(value, types.CodeType):
        return _finish(value, unit)
    if value.__class__ is str and value in unit.constants:
        return unit.constants[value]
    if value.__class__ is tuple:
        return tuple(_finish_constant(v, unit) for v in value)
    return value


# -- recompilation when a baked global changes ------------------------------------------------------

def recompile_procedure(procedure: Callable, env: Environment) -> None:
    """Gives a generated procedure new code compiled against the globals'
    current values, keeping the function object (and its closure cells)."""
    site = procedure.__dict__
    core = site["scheme_lambda"]
    factory = Lambda(core, "factory", None)
    factory.is_unit = True
    scope = {}
    for sym, py in site["scheme_free"]:
        var = Var(sym, factory, py)
        factory.owned.append(var)
        scope[sym] = var
    # Only lambdas bake globals: case-lambda clauses never do (module docstring).
    items = _items(core, "lambda")
    node = _Parser().lambda_node(core, items[1], items[2:], scope, factory, site["scheme_name"])
    _restore_self(node, site["scheme_self"], scope, procedure, env)
    factory.body = node
    unit = _Unit(env, set())
    unit.untracked = node
    gen = _FnGen(unit, factory)
    pyname = gen.define_lambda(node, unit.fresh("f"))
    gen.emit(f"return {pyname}")
    names = ", ".join(py for _, py in site["scheme_free"])
    header = ["def R_unit():"] + ([f"    {names} = {', '.join(['None'] * len(site['scheme_free']))}"]
                                  if names else [])
    text = "\n".join(header + gen.lines) + "\n"
    unit.display_names["R_unit"] = "factory"
    code = _compile_text(text, unit, f"recompile {site['scheme_name'] or 'lambda'}")
    fresh = types.FunctionType(code, env.namespace, "factory")()
    if fresh.__code__.co_freevars != procedure.__code__.co_freevars:
        raise SchemeError(f"compile: cannot recompile {site['scheme_name'] or 'a lambda'} in place")
    was_tail_free = not site.get("scheme_tail", True)
    procedure.__code__ = fresh.__code__
    procedure.__kwdefaults__ = fresh.__kwdefaults__     # its fast entry, if any
    procedure.__dict__ = fresh.__dict__
    if procedure.scheme_baked:
        env.track(procedure)
    if was_tail_free and procedure.scheme_tail:
        # Callers that skipped the trampoline check after calling it must change too.
        for sym in env.names():
            if env.namespace.get(mangle(sym.name)) is procedure:
                env.invalidate(sym)


def _restore_self(node: Lambda, self_info: tuple | None, scope: dict, procedure: Callable,
                  env: Environment) -> None:
    """A recompiled lambda loops on itself only while that is still true."""
    if self_info is None:
        return
    kind, sym = self_info
    if kind == "local" and sym in scope:
        node.self_var = scope[sym]
    elif kind == "global" and env.namespace.get(mangle(sym.name)) is procedure:
        node.self_global = sym

