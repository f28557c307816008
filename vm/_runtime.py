"""The control procedures of R7RS-small as Python functions, and ``run``.

What this module owns (R7RS sections): procedure?, apply, values and
call-with-values (6.10), call/cc with escaping continuations (6.10),
dynamic-wind (6.10), the exception system (6.11: with-exception-handler,
raise, raise-continuable, error and the error-object accessors), parameter
objects (4.2.6), promises (4.2.5, 7.3), the record-type procedures behind
define-record-type (5.5), eval and environments (6.12), exit (6.14); plus the
runtime entry points the expander embeds as constants (``dynamic_wind``,
``call_with_values``, ``values``, ``with_parameters``, ``guard``,
``reraise``, ``make_promise``, ``make_record_type``, ``record_constructor``,
``record_predicate``, ``record_accessor``, ``record_modifier``) and
``run(thunk)``, which evaluates on a thread with a large stack.

``RUNTIME`` maps each Scheme name to its procedure.

CALLING CONVENTION (from _types): a procedure may return a TailCall.  Every
procedure here that calls a Scheme procedure *inside* a dynamic extent
(dynamic-wind, parameterize, guard, with-exception-handler, call/cc) resolves
that call before it leaves the extent; the others (apply, call-with-values,
eval, and guard's handler call) return a TailCall, so they stay in constant
stack in tail position, and carry ``returns_tailcall = True``: the compiler
takes any standard procedure without that mark to return its value.

THE DYNAMIC ENVIRONMENT

The current exception-handler stack is a linked list of pairs
``(handler, rest)`` in a thread-local; a ``_GuardFrame`` in it stands for a
``guard`` expression.  Every function that changes it restores it in a
``finally``, so an escape (continuation, guard, Python exception) leaves it
as it was.  Parameter objects keep their current value in ``.value``;
parameterize sets it and restores it in a ``finally``.

EXCEPTIONS (R7RS 6.11) AND WHERE WE DEVIATE

- ``raise obj`` calls the innermost handler in place, with the handler stack
  minus that handler; if the handler returns, a secondary error is raised in
  that same (outer) handler environment.  ``raise-continuable`` returns the
  handler's value.  A guard on top of the stack unwinds to the guard
  (``_GuardUnwind``), whose clauses run in the guard's dynamic environment.
- Errors signalled by primitives are Python exceptions (TypeError,
  ZeroDivisionError, SchemeError raised from Python, NameError for an
  unbound global ...).  They reach the handler of the nearest
  with-exception-handler, guard or handler call as error objects
  (``condition_of``), but only AFTER unwinding to it: dynamic-wind "after"
  thunks in between have already run when the handler sees the condition,
  and a handler that returns cannot resume the primitive (it gets the
  secondary error, as for ``raise``).
- Once a Python exception has been handed to the handlers and none of them
  escaped, it carries ``scheme_delivered = True`` and is not handed to them
  again while it propagates.
- guard's re-raise (no clause matched) is ``raise-continuable`` from the
  guard's dynamic environment, not from the original raise's (which we cannot
  re-enter): if an outer handler returns a value, the guard expression returns
  it instead of resuming the body.

CONTINUATIONS: escaping only, one shot upward.  A continuation can be invoked
while the call/cc that made it is still running (from any depth below it,
including from handlers and dynamic-wind thunks); it unwinds with a
``ContinuationInvoked`` (a BaseException, so no ``except Exception`` in a
primitive swallows it), running dynamic-wind "after" thunks on the way, and
call/cc returns the values passed.  Invoking it after that call/cc returned
(re-entry: generators, coroutines, backtracking) is a Scheme error.

PROMISES follow the reference implementation of R7RS 7.3: a promise is a
shared box [done, value-or-thunk]; ``(delay-force e)`` is
``make_promise(False, thunk-returning-a-promise)``, ``(delay e)`` is
``(delay-force (make-promise #t e))``, i.e.
``make_promise(False, lambda: make_promise(True, e))``; ``force`` iterates,
so a chain of a million delay-forces runs in constant space.

RUN: Python 3.11 calls from Python code to Python functions do not use the C
stack, so deep Scheme recursion only needs a high recursion limit; but calls
through C (a primitive calling a procedure, ``f(*args)``) do, about 350-420
bytes per level on x86-64 (measured).  ``run`` therefore raises the limit to
``RECURSION_LIMIT`` only while an evaluation runs, on a thread whose stack
(``STACK_BYTES``) holds that many C levels, so exhausting it is a
RecursionError ("recursion too deep"), never a segfault.
"""
from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable
from typing import Any

from . import _types
from ._types import (
    ErrorObject,
    MString,
    RecordType,
    SchemeError,
    SchemeRaise,
    Symbol,
    TailCall,
    Values,
    _field_slot,
    as_condition,
    call,
    from_iterable,
    to_list,
)

__all__ = [
    "RUNTIME", "Continuation", "ContinuationInvoked", "Parameter", "Promise", "SchemeExit",
    "apply", "call_cc", "call_with_values", "condition_of", "dynamic_wind", "error",
    "eval_datum", "eval_text", "force", "guard", "make_parameter", "make_promise",
    "make_record_type", "raise_", "raise_continuable", "record_accessor", "record_constructor",
    "record_modifier", "record_predicate", "reraise", "resolve", "run", "values",
    "with_exception_handler", "with_parameters",
]

# Enough for a 1,000,000-deep non-tail Scheme recursion (one count per level
# when its operators are inlined) with half again to spare.  Not more: an
# infinite recursion unwinds every frame it made (Python materialises a frame
# object and a traceback entry for each), which took about 4 s per million
# frames here, and a REPL user waits for that before seeing the error.
RECURSION_LIMIT = 1_500_000
# Worst case measured: 420 bytes of C stack per counted level when every
# level goes through C (f(*args)); 512 per level keeps RECURSION_LIMIT safe.
# Virtual memory only: the kernel commits the pages a deep recursion touches.
STACK_BYTES = RECURSION_LIMIT * 512


# -- calling -------------------------------------------------------------------

def resolve(result: Any) -> Any:
    """The value of a call whose result may be a TailCall.  Unlike
    _types.resolve, calls of up to three arguments are spelled out, so a
    Python callee runs as an inlined frame and uses no C stack."""
    while result.__class__ is TailCall:
        proc = result.proc
        args = result.args
        n = len(args)
        if n == 1:
            result = proc(args[0])
        elif n == 2:
            result = proc(args[0], args[1])
        elif n == 0:
            result = proc()
        elif n == 3:
            result = proc(args[0], args[1], args[2])
        else:
            result = proc(*args)
    return result


def _check_procedure(who: str, x: Any) -> None:
    if not is_procedure(x):
        raise SchemeError(f"{who}: expected a procedure, got", x)


def is_procedure(x: Any) -> bool:
    """procedure? (R7RS 6.10): any Python callable except a class."""
    return callable(x) and not isinstance(x, type)


def apply(proc: Callable, *args: Any) -> TailCall:
    """(apply proc arg ... list) (R7RS 6.10), as a tail call."""
    _check_procedure("apply", proc)
    if not args:
        return TailCall(proc, ())
    try:
        spread = to_list(args[-1])
    except ValueError:
        raise SchemeError("apply: last argument must be a proper list, got", args[-1]) from None
    return TailCall(proc, (*args[:-1], *spread))


def values(*xs: Any) -> Any:
    """(values obj ...) (R7RS 6.10): one value is itself, others a Values."""
    if len(xs) == 1:
        return xs[0]
    return Values(xs)


def call_with_values(producer: Callable, consumer: Callable) -> TailCall:
    """(call-with-values producer consumer) (R7RS 6.10)."""
    _check_procedure("call-with-values", consumer)
    produced = resolve(producer())
    if produced.__class__ is Values:
        return TailCall(consumer, tuple(produced))
    return TailCall(consumer, (produced,))


# -- the dynamic environment -----------------------------------------------------

class _DynamicState(threading.local):
    handlers: tuple | None = None       # (handler, rest) linked list, innermost first
    on_eval_thread: bool = False


_state = _DynamicState()


def dynamic_wind(before: Callable, thunk: Callable, after: Callable) -> Any:
    """(dynamic-wind before thunk after) (R7RS 6.10): after runs however the
    thunk's extent is left (return, continuation, raised condition, exit)."""
    for who in (before, thunk, after):
        _check_procedure("dynamic-wind", who)
    resolve(before())
    try:
        result = resolve(thunk())
    except BaseException as exc:
        if not getattr(exc, "emergency", False):    # emergency-exit skips the afters
            resolve(after())
        raise
    resolve(after())
    return result


# -- continuations -----------------------------------------------------------------

class ContinuationInvoked(BaseException):
    """An escape to the call/cc that made ``continuation`` (see module docstring)."""

    def __init__(self, continuation: Continuation, vals: tuple) -> None:
        super().__init__()
        self.continuation = continuation
        self.values = vals


class Continuation:
    """An escaping continuation: callable while its call/cc runs."""

    __slots__ = ("live", "__weakref__")
    scheme_name = "continuation"

    def __init__(self) -> None:
        self.live = True

    def __call__(self, *vals: Any) -> Any:
        if not self.live:
            raise SchemeError("continuation invoked after the call/cc that captured it returned "
                              "(re-entering a continuation is not supported)")
        raise ContinuationInvoked(self, vals)

    def __repr__(self) -> str:
        return "#<continuation>"


def call_cc(receiver: Callable) -> Any:
    """(call-with-current-continuation proc) (R7RS 6.10), escaping only."""
    _check_procedure("call-with-current-continuation", receiver)
    k = Continuation()
    saved = _state.handlers
    try:
        return resolve(receiver(k))
    except ContinuationInvoked as jump:
        if jump.continuation is not k:
            raise
        _state.handlers = saved
        return values(*jump.values)
    finally:
        k.live = False


# -- exceptions (R7RS 6.11) ---------------------------------------------------------

class _GuardFrame:
    """Marks a guard expression in the handler stack."""

    __slots__ = ()


class _GuardUnwind(BaseException):
    """Carries a raised object from a raise to the guard on top of the handler stack."""

    def __init__(self, frame: _GuardFrame, payload: Any) -> None:
        super().__init__()
        self.frame = frame
        self.payload = payload


try:
    from ._builtins import SchemeExit  # type: ignore[attr-defined]
    _EXIT_IS_BUILTIN = True             # _builtins defines exit and emergency-exit
except ImportError:
    _EXIT_IS_BUILTIN = False

    class SchemeExit(BaseException):    # type: ignore[no-redef]
        """(exit obj): unwinds everything (running dynamic-wind afters) to the REPL."""

        def __init__(self, code: Any = 0, emergency: bool = False) -> None:
            super().__init__(code)
            self.code = code
            self.emergency = emergency


def _is_foreign(exc: BaseException) -> bool:
    """A Python exception that no handler has seen yet (a primitive's error)."""
    return (isinstance(exc, Exception) and not getattr(exc, "scheme_delivered", False)
            and not isinstance(exc, SchemeExit))


def _undelivered_raise(obj: Any, continuable: bool) -> SchemeRaise:
    exc = SchemeRaise(obj, continuable)
    exc.scheme_delivered = True
    return exc


def _signal(obj: Any, continuable: bool) -> Any:
    """raise / raise-continuable: hand obj to the current handler (see module docstring)."""
    stack = _state.handlers
    if stack is None:
        raise _undelivered_raise(obj, continuable)
    handler, rest = stack
    if handler.__class__ is _GuardFrame:
        raise _GuardUnwind(handler, obj)
    _state.handlers = rest
    try:
        result = resolve(handler(obj))
    except Exception as exc:
        if _is_foreign(exc):
            _deliver(exc, rest)
        raise
    finally:
        _state.handlers = stack
    if continuable:
        return result
    _state.handlers = rest
    try:
        _signal(ErrorObject("exception handler returned from a non-continuable raise", (obj,)),
                False)
    finally:
        _state.handlers = stack


def _deliver(exc: Exception, stack: tuple | None) -> None:
    """Hands a primitive's error, caught where ``stack`` was the handler stack,
    to those handlers as ``raise`` would.  Never returns."""
    condition = condition_of(exc)
    if stack is None:
        raise _undelivered_raise(condition, False) from exc
    saved = _state.handlers
    _state.handlers = stack
    try:
        _signal(condition, False)
    finally:
        _state.handlers = saved


def raise_(obj: Any) -> None:
    """(raise obj) (R7RS 6.11)."""
    _signal(obj, False)


def raise_continuable(obj: Any) -> Any:
    """(raise-continuable obj) (R7RS 6.11): the handler's value is returned."""
    return _signal(obj, True)


def with_exception_handler(handler: Callable, thunk: Callable) -> Any:
    """(with-exception-handler handler thunk) (R7RS 6.11)."""
    _check_procedure("with-exception-handler", handler)
    _check_procedure("with-exception-handler", thunk)
    saved = _state.handlers
    inner = (handler, saved)
    _state.handlers = inner
    try:
        return resolve(thunk())
    except Exception as exc:
        if not _is_foreign(exc):
            raise
        _deliver(exc, inner)
    finally:
        _state.handlers = saved


def guard(body_thunk: Callable, handler: Callable) -> Any:
    """The runtime half of (guard (var clause ...) body ...) (R7RS 4.2.7): runs
    the body; a condition raised in it unwinds to here and handler(condition)
    runs (in tail position) in the guard's dynamic environment.  The handler
    dispatches the clauses and calls ``reraise`` when none matches."""
    frame = _GuardFrame()
    saved = _state.handlers
    _state.handlers = (frame, saved)
    try:
        return resolve(body_thunk())
    except _GuardUnwind as unwind:
        if unwind.frame is not frame:
            raise
        condition = unwind.payload
    except Exception as exc:
        if not _is_foreign(exc):
            raise
        condition = condition_of(exc)
    finally:
        _state.handlers = saved
    return TailCall(handler, (condition,))


def reraise(condition: Any) -> Any:
    """A guard whose clauses did not match re-raises with raise-continuable."""
    return _signal(condition, True)


def error(message: Any, *irritants: Any) -> None:
    """(error message obj ...) (R7RS 6.11): raises a new error object."""
    _signal(ErrorObject(_message_text(message), irritants), False)


def _message_text(message: Any) -> str:
    if isinstance(message, str):        # an immutable string, where strings can be str
        return message
    if isinstance(message, MString):
        return message.s
    try:
        from ._printer import display
        return display(message)
    except ImportError:
        return message.name if isinstance(message, Symbol) else str(message)


def is_error_object(x: Any) -> bool:
    return isinstance(x, ErrorObject)


def _check_error_object(who: str, x: Any) -> ErrorObject:
    if not isinstance(x, ErrorObject):
        raise SchemeError(f"{who}: expected an error object, got", x)
    return x


def error_object_message(x: Any) -> MString:
    return MString(_check_error_object("error-object-message", x).message)


def error_object_irritants(x: Any) -> Any:
    return from_iterable(_check_error_object("error-object-irritants", x).irritants)


def is_file_error(x: Any) -> bool:
    return isinstance(x, ErrorObject) and x.kind == "file"


def is_read_error(x: Any) -> bool:
    return isinstance(x, ErrorObject) and x.kind == "read"


# -- turning Python exceptions into conditions ------------------------------------------

# Filled by the compiler: (procedure name, its last required parameter's
# Python name) -> (required count, takes a rest list).  Python's "missing
# argument" message names both, but not the number of arguments given.
ARITY: dict[tuple[str, str], tuple[int, bool]] = {}
# Python qualname -> Scheme name, for the procedures of this module and of the
# environments' primitives (filled by register_procedure_names).
PROCEDURE_NAMES: dict[str, str] = {}

_TAKES = re.compile(r"(.+?)\(\) takes (?:exactly )?(\d+) positional arguments? "
                    r"but (\d+) (?:were|was) given\Z")
_TAKES_RANGE = re.compile(r"(.+?)\(\) takes from (\d+) to (\d+) positional arguments "
                          r"but (\d+) were given\Z")
_MISSING = re.compile(r"(.+?)\(\) missing (\d+) required positional arguments?: (.*)\Z")
_NO_ARGS = re.compile(r"(.+?)\(\) takes no arguments \((\d+) given\)\Z")
_ONE_ARG = re.compile(r"(.+?)\(\) takes exactly one argument \((\d+) given\)\Z")
_BUILTIN = re.compile(r"(.+?) expected (at most |at least )?(\d+) arguments?, got (\d+)\Z")
_NOT_CALLABLE = re.compile(r"'(.+?)' object is not callable\Z")
_UNBOUND_GLOBAL = re.compile(r"name '(.+?)' is not defined\Z")
_UNBOUND_LOCAL = re.compile(r"cannot access (?:local|free) variable '(.+?)'")

_TYPE_WORDS = {
    "int": "an exact integer", "float": "a real number", "Fraction": "a rational number",
    "complex": "a complex number", "bool": "a boolean", "Char": "a character",
    "str": "a string" if hasattr(_types, "Char") else "a character",
    "MString": "a string", "Symbol": "a symbol", "Pair": "a pair", "_Singleton": "a constant",
    "SVector": "a vector", "Bytevector": "a bytevector", "NoneType": "the unspecified value",
    "Values": "multiple values", "ErrorObject": "an error object",
}


def _arity_text(required: int, rest: bool) -> str:
    word = "argument" if required == 1 else "arguments"
    return f"at least {required} {word}" if rest else f"{required} {word}"


def _procedure_name(qualname: str) -> str:
    return PROCEDURE_NAMES.get(qualname, qualname)


def _type_error_message(text: str) -> str | None:
    """A Scheme message for Python's arity and not-callable TypeErrors, or None."""
    m = _TAKES.match(text)
    if m:
        return (f"{_procedure_name(m[1])}: expected {_arity_text(int(m[2]), False)}, "
                f"got {m[3]}")
    m = _TAKES_RANGE.match(text)
    if m:
        return f"{_procedure_name(m[1])}: expected {m[2]} to {m[3]} arguments, got {m[4]}"
    m = _MISSING.match(text)
    if m:
        missing = int(m[2])
        last = m[3].rsplit("'", 2)[-2] if "'" in m[3] else ""
        known = ARITY.get((m[1], last))
        name = _procedure_name(m[1])
        if known:
            required, rest = known
            return f"{name}: expected {_arity_text(required, rest)}, got {required - missing}"
        return f"{name}: too few arguments ({missing} missing)"
    m = _NO_ARGS.match(text)
    if m:
        return f"{_procedure_name(m[1])}: expected 0 arguments, got {m[2]}"
    m = _ONE_ARG.match(text)
    if m:
        return f"{_procedure_name(m[1])}: expected 1 argument, got {m[2]}"
    m = _BUILTIN.match(text)
    if m:
        bound = {"at most ": "at most ", "at least ": "at least "}.get(m[2] or "", "")
        return f"{_procedure_name(m[1])}: expected {bound}{m[3]} arguments, got {m[4]}"
    m = _NOT_CALLABLE.match(text)
    if m:
        return f"application: not a procedure: {_TYPE_WORDS.get(m[1], m[1])}"
    return None


def condition_of(exc: BaseException) -> Any:
    """The Scheme condition a caught Python exception stands for: as
    _types.as_condition, plus Scheme messages for unbound variables, arity
    errors and calls of non-procedures."""
    if isinstance(exc, SchemeRaise):
        return exc.payload
    if isinstance(exc, NameError) and _raised_by_generated_code(exc):
        from ._env import demangle, python_name_to_scheme
        text = str(exc)
        m = _UNBOUND_GLOBAL.match(text)
        if m:
            return ErrorObject(f"unbound variable: {demangle(m[1])}")
        m = _UNBOUND_LOCAL.match(text)
        if m:
            return ErrorObject(f"{python_name_to_scheme(m[1])}: variable used before "
                               "its definition")
    if isinstance(exc, TypeError):
        message = _type_error_message(str(exc))
        if message is not None:
            return ErrorObject(message)
    return as_condition(exc)


def _raised_by_generated_code(exc: BaseException) -> bool:
    """Was exc raised in compiled Scheme code (not in a primitive's Python)?
    Only there does a NameError mean an unbound Scheme variable."""
    tb = exc.__traceback__
    if tb is None:
        return True         # made by hand (tests, callers): take its word
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(GENERATED_FILENAME_PREFIX)


# The pseudo file name of generated code (vm/_compile.py uses it).
GENERATED_FILENAME_PREFIX = "<scheme "


def register_procedure_names(procedures: dict[str, Callable]) -> None:
    """Lets error messages name these procedures by their Scheme names."""
    for name, proc in procedures.items():
        qualname = getattr(proc, "__qualname__", None)
        if isinstance(qualname, str) and qualname != name:
            PROCEDURE_NAMES.setdefault(qualname, name)


# -- parameter objects (R7RS 4.2.6) --------------------------------------------------------

try:
    from ._builtins import Parameter  # type: ignore[attr-defined]
except ImportError:
    class Parameter:    # type: ignore[no-redef]
        """A parameter object: calling it gives ``.value``; parameterize
        rebinds ``.value`` for a dynamic extent after applying ``.converter``."""

        __slots__ = ("value", "converter")
        scheme_name = "parameter"

        def __init__(self, value: Any, converter: Callable | None = None) -> None:
            self.value = value
            self.converter = converter

        def __call__(self) -> Any:
            return self.value

        def __repr__(self) -> str:
            return "#<parameter>"


def make_parameter(value: Any, converter: Callable | None = None) -> Any:
    """(make-parameter value [converter]) (R7RS 4.2.6)."""
    if converter is not None:
        _check_procedure("make-parameter", converter)
        value = call(converter, value)
    return Parameter(value, converter)


def _python_list(who: str, x: Any) -> list:
    if isinstance(x, (list, tuple)):
        return list(x)
    try:
        return to_list(x)
    except ValueError:
        raise SchemeError(f"{who}: expected a list, got", x) from None


def with_parameters(params: Any, vals: Any, body_thunk: Callable) -> Any:
    """The runtime half of (parameterize ((param value) ...) body ...): the
    converters run first, then every parameter is rebound for the body's
    dynamic extent and restored however it is left."""
    params = _python_list("parameterize", params)
    vals = _python_list("parameterize", vals)
    if len(params) != len(vals):
        raise SchemeError("parameterize: parameters and values differ in number")
    for p in params:
        if not hasattr(p, "value") or not callable(p):
            raise SchemeError("parameterize: not a parameter object:", p)
    converted = []
    for p, v in zip(params, vals):
        converter = getattr(p, "converter", None)
        converted.append(v if converter is None else call(converter, v))
    old = [p.value for p in params]
    for p, v in zip(params, converted):
        p.value = v
    try:
        return resolve(body_thunk())
    finally:
        for p, v in reversed(list(zip(params, old))):
            p.value = v


# -- promises (R7RS 4.2.5 and the reference implementation in 7.3) --------------------------

class Promise:
    """A promise: ``box`` is a shared two-element list [done, value-or-thunk]."""

    __slots__ = ("box", "__weakref__")

    def __repr__(self) -> str:
        return "#<promise>"


def make_promise(done: bool, value_or_thunk: Any) -> Promise:
    """The constructor delay, delay-force and make-promise share (module docstring)."""
    promise = Promise()
    promise.box = [done, value_or_thunk]
    return promise


def scheme_make_promise(obj: Any) -> Promise:
    """(make-promise obj) (R7RS 4.2.5): a promise is returned as it is."""
    return obj if isinstance(obj, Promise) else make_promise(True, obj)


def is_promise(x: Any) -> bool:
    return isinstance(x, Promise)


def force(promise: Any) -> Any:
    """(force promise) (R7RS 4.2.5): iterative, as the reference implementation."""
    if not isinstance(promise, Promise):
        return promise
    box = promise.box
    while not box[0]:
        inner = call(box[1])
        if box[0]:                       # forced again while the thunk ran
            break
        if not isinstance(inner, Promise):
            box[0], box[1] = True, inner   # a delay-force whose expression gave a value
            break
        box[0], box[1] = inner.box
        inner.box = box
    return box[1]


# -- records (R7RS 5.5) ------------------------------------------------------------------

def _text(who: str, x: Any) -> str:
    if isinstance(x, Symbol):
        return x.name
    if isinstance(x, MString):
        return x.s
    if isinstance(x, str):
        return x
    raise SchemeError(f"{who}: expected a name, got", x)


def make_record_type(name: Any, fields: Any) -> RecordType:
    """A new record type (define-record-type's first step)."""
    names = tuple(_text("define-record-type", f) for f in _python_list("define-record-type",
                                                                        fields))
    if len(set(names)) != len(names):
        raise SchemeError("define-record-type: duplicate field name in", from_iterable(
            Symbol(n) for n in names))
    return RecordType(_text("define-record-type", name), names)


def _field(rtd: RecordType, who: str, field: Any) -> str:
    name = _text(who, field)
    if name not in rtd.fields:
        raise SchemeError(f"{who}: {rtd.name} has no field {name}")
    return name


def record_constructor(rtd: RecordType, field_names: Any) -> Callable:
    """The constructor that takes the listed fields in order; others start unspecified."""
    taken = [_field(rtd, "define-record-type", f)
             for f in _python_list("define-record-type", field_names)]
    params = [f"a{i}" for i in range(len(taken))]
    lines = [f"def construct({', '.join(params)}):", "    o = R_new(R_cls)"]
    lines += [f"    o.{_field_slot(f)} = {p}" for f, p in zip(taken, params)]
    lines += [f"    o.{_field_slot(f)} = None" for f in rtd.fields if f not in taken]
    lines.append("    return o")
    namespace = {"__builtins__": {}, "R_new": rtd.cls.__new__, "R_cls": rtd.cls}
    exec("\n".join(lines), namespace)
    construct = namespace["construct"]
    label = f"make-{rtd.name.strip('<>')}"
    construct.__code__ = construct.__code__.replace(co_name=label, co_qualname=label)
    construct.__qualname__ = construct.__name__ = label
    construct.scheme_name = label
    if params:
        ARITY[(label, params[-1])] = (len(params), False)
    return construct


def record_predicate(rtd: RecordType) -> Callable:
    cls = rtd.cls

    def is_record(x: Any) -> bool:
        return isinstance(x, cls)
    is_record.scheme_name = f"{rtd.name.strip('<>')}?"
    return is_record


def record_accessor(rtd: RecordType, field: Any) -> Callable:
    name = _field(rtd, "define-record-type", field)
    cls, slot = rtd.cls, _field_slot(name)
    label = f"{rtd.name.strip('<>')}-{name}"

    def access(record: Any) -> Any:
        if isinstance(record, cls):
            return getattr(record, slot)
        raise SchemeError(f"{label}: expected a {rtd.name} record, got", record)
    access.scheme_name = label
    return access


def record_modifier(rtd: RecordType, field: Any) -> Callable:
    name = _field(rtd, "define-record-type", field)
    cls, slot = rtd.cls, _field_slot(name)
    label = f"set-{rtd.name.strip('<>')}-{name}!"

    def modify(record: Any, value: Any) -> None:
        if not isinstance(record, cls):
            raise SchemeError(f"{label}: expected a {rtd.name} record, got", record)
        setattr(record, slot, value)
    modify.scheme_name = label
    return modify


# -- eval and environments (R7RS 6.12) ---------------------------------------------------------

_LIBRARIES = frozenset((
    "base", "case-lambda", "char", "complex", "cxr", "eval", "file", "inexact", "lazy",
    "load", "process-context", "read", "repl", "time", "write", "r5rs",
))


def _check_environment(who: str, env: Any) -> Any:
    from ._env import Environment
    if not isinstance(env, Environment):
        raise SchemeError(f"{who}: expected an environment, got", env)
    return env


def eval_datum(datum: Any, env: Any, positions: dict | None = None) -> Any:
    """Expands, compiles and runs one datum in env; returns its value."""
    thunk = _compile_datum(datum, env, positions)
    return resolve(thunk())


def _compile_datum(datum: Any, env: Any, positions: dict | None) -> Callable:
    try:
        from ._expand import expand_toplevel
    except ImportError:
        raise SchemeError("eval: the expander (vm._expand) is not available") from None
    from ._compile import compile_toplevel
    if env.syntax is None:
        raise SchemeError("eval: this environment has no syntactic environment")
    core = expand_toplevel(datum, env.syntax, positions)
    return compile_toplevel(core, env)


def scheme_eval(datum: Any, env: Any) -> TailCall:
    """(eval expr env) (R7RS 6.12)."""
    env = _check_environment("eval", env)
    return TailCall(_compile_datum(datum, env, None), ())


def eval_text(text: str, env: Any, source: str = "<input>") -> Any:
    """Reads every datum of text and evaluates them in order; the last value."""
    from ._reader import read_all
    positions: dict = {}
    result = None
    for datum in read_all(text, source, positions=positions):
        result = eval_datum(datum, env, positions)
    return result


def environment(*specs: Any) -> Any:
    """(environment list ...) (R7RS 6.12): a fresh standard environment.
    Every standard library is always present, so the specs are only checked."""
    for spec in specs:
        parts = _python_list("environment", spec)
        names = [p.name if isinstance(p, Symbol) else p for p in parts]
        known = (len(names) == 2 and names[0] == "scheme" and names[1] in _LIBRARIES) or \
            (names == ["srfi", 69]) or (names[:1] == ["imago"])
        if not known:
            raise SchemeError("environment: unknown library", spec)
    from ._env import Environment
    return Environment.standard()


def _report_environment(who: str) -> Callable:
    def report_environment(version: Any) -> Any:
        if version != 5 or isinstance(version, bool):
            raise SchemeError(f"{who}: only version 5 is supported, got", version)
        from ._env import Environment
        return Environment.standard()
    report_environment.scheme_name = who
    return report_environment


def scheme_exit(obj: Any = True) -> None:
    """(exit [obj]) (R7RS 6.14), used only when _builtins (which has it) is absent."""
    raise SchemeExit(0 if obj is True else obj if type(obj) is int else 1)


# -- run: evaluation on a thread with a large stack ---------------------------------------------

_limit_lock = threading.Lock()
_active_runs = 0
_saved_limit = 0


def _enter_deep_mode() -> None:
    global _active_runs, _saved_limit
    with _limit_lock:
        if _active_runs == 0:
            _saved_limit = sys.getrecursionlimit()
            sys.setrecursionlimit(RECURSION_LIMIT)
        _active_runs += 1


def _leave_deep_mode() -> None:
    global _active_runs
    with _limit_lock:
        _active_runs -= 1
        if _active_runs == 0:
            sys.setrecursionlimit(_saved_limit)


def run(thunk: Callable, *args: Any) -> Any:
    """Calls thunk(*args) to its value on an evaluation thread (a large stack
    and a high recursion limit); on such a thread already, calls it in place.
    An error that is not a Scheme condition yet comes out as a SchemeRaise of
    its condition (the Python exception is its __cause__); SchemeExit,
    KeyboardInterrupt and other BaseExceptions pass through.  Ctrl-C in the
    waiting thread is forwarded to the evaluation thread."""
    if _state.on_eval_thread:
        return resolve(thunk(*args))
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def evaluate() -> None:
        _state.on_eval_thread = True
        try:
            outcome["value"] = resolve(thunk(*args))
        except BaseException as exc:   # carried to the calling thread below
            outcome["error"] = exc
        finally:
            finished.set()

    _enter_deep_mode()
    try:
        worker = _start_thread(evaluate)
        _wait(worker, finished)
    finally:
        _leave_deep_mode()
    if "error" not in outcome:
        return outcome["value"]
    exc = outcome.pop("error")
    if isinstance(exc, SchemeRaise) or not isinstance(exc, Exception):
        raise exc
    raise SchemeRaise(condition_of(exc)) from exc


def _start_thread(target: Callable) -> threading.Thread:
    old = threading.stack_size(STACK_BYTES)
    try:
        worker = threading.Thread(target=target, name="scheme-eval", daemon=True)
        worker.start()
    finally:
        threading.stack_size(old)
    return worker


def _wait(worker: threading.Thread, finished: threading.Event) -> None:
    """Waits for the evaluation; Ctrl-C (SIGINT) meanwhile is raised in it too,
    and we wait for it to unwind.  An Event, not Thread.join: in 3.11 a join
    interrupted by KeyboardInterrupt can return early the next time."""
    try:
        finished.wait()
    except KeyboardInterrupt:
        _interrupt(worker)
        finished.wait()
        raise


def _interrupt(worker: threading.Thread) -> None:
    import ctypes
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident),
                                               ctypes.py_object(KeyboardInterrupt))


# -- the table -------------------------------------------------------------------------------

def _named(table: dict[str, Callable]) -> dict[str, Callable]:
    for name, proc in table.items():
        if getattr(proc, "scheme_name", None) is None:
            try:
                proc.scheme_name = name
            except AttributeError:
                pass
    return table


RUNTIME: dict[str, Callable] = _named({
    "procedure?": is_procedure,
    "apply": apply,
    "call-with-current-continuation": call_cc,
    "call/cc": call_cc,
    "values": values,
    "call-with-values": call_with_values,
    "dynamic-wind": dynamic_wind,
    "with-exception-handler": with_exception_handler,
    "raise": raise_,
    "raise-continuable": raise_continuable,
    "error": error,
    "error-object?": is_error_object,
    "error-object-message": error_object_message,
    "error-object-irritants": error_object_irritants,
    "file-error?": is_file_error,
    "read-error?": is_read_error,
    "make-parameter": make_parameter,
    "force": force,
    "make-promise": scheme_make_promise,
    "promise?": is_promise,
    "eval": scheme_eval,
    "environment": environment,
    "scheme-report-environment": _report_environment("scheme-report-environment"),
    "null-environment": _report_environment("null-environment"),
    **({} if _EXIT_IS_BUILTIN else {"exit": scheme_exit}),
})
# call/cc is listed twice; its scheme_name is the long one.
call_cc.scheme_name = "call-with-current-continuation"
register_procedure_names(RUNTIME)

# The procedures here that may return a TailCall say so: the compiler assumes
# a standard procedure without this mark returns its value (no trampoline).
for _proc in (apply, call_with_values, guard, scheme_eval):
    _proc.returns_tailcall = True
