"""vm/_runtime.py: the control procedures, called directly from Python.

Python callables stand in for Scheme procedures (the calling convention
allows any callable), so these tests need neither the reader nor the
expander; the few that evaluate Scheme text (eval, environments) skip when
those modules are absent.
"""
from __future__ import annotations

import threading

import pytest

from vm import _runtime as rt
from vm._types import (
    NIL,
    ErrorObject,
    MString,
    Pair,
    RecordType,
    SchemeError,
    SchemeRaise,
    TailCall,
    Values,
    from_iterable,
    intern,
    resolve,
    to_list,
)


def trace_list():
    """A list and a procedure factory appending to it, for order-of-effects tests."""
    events = []

    def note(tag, value=None):
        def thunk(*_):
            events.append(tag)
            return value
        return thunk
    return events, note


# -- values, call-with-values, apply, procedure? (R7RS 6.10) ---------------------------------------

VALUES_CASES = [
    ((), Values(())),
    ((1,), 1),
    ((1, 2), Values((1, 2))),
    ((1, 2, 3), Values((1, 2, 3))),
]


@pytest.mark.parametrize("args, expected", VALUES_CASES)
def test_values_r7rs_6_10(args, expected):
    """One value is itself; zero or several are a Values tuple."""
    result = rt.values(*args)
    assert result == expected and type(result) is type(expected)


CALL_WITH_VALUES_CASES = [
    (lambda: rt.values(1, 2), lambda a, b: a + b, 3),
    (lambda: 5, lambda a: a * 2, 10),
    (lambda: rt.values(), lambda: "none", "none"),
    (lambda: TailCall(rt.values, (4, 5)), lambda a, b: (a, b), (4, 5)),
]


@pytest.mark.parametrize("producer, consumer, expected", CALL_WITH_VALUES_CASES)
def test_call_with_values_r7rs_6_10(producer, consumer, expected):
    """The producer's values become the consumer's arguments (a tail call)."""
    assert resolve(rt.call_with_values(producer, consumer)) == expected


APPLY_CASES = [
    ((lambda *xs: sum(xs), from_iterable([1, 2, 3])), 6),
    ((lambda *xs: xs, 1, 2, from_iterable([3, 4])), (1, 2, 3, 4)),
    ((lambda: "nothing", NIL), "nothing"),
    ((lambda *xs: xs,), ()),
]


@pytest.mark.parametrize("args, expected", APPLY_CASES)
def test_apply_r7rs_6_10(args, expected):
    """apply spreads its last argument, a list, after the others."""
    result = rt.apply(*args)
    assert isinstance(result, TailCall) and resolve(result) == expected


APPLY_ERROR_CASES = [
    ((5, NIL), "apply: expected a procedure, got"),
    ((lambda *xs: xs, 1, 2), "apply: last argument must be a proper list, got"),
    ((lambda *xs: xs, Pair(1, 2)), "apply: last argument must be a proper list, got"),
]


@pytest.mark.parametrize("args, message", APPLY_ERROR_CASES)
def test_apply_errors_r7rs_6_10(args, message):
    """A non-procedure or an improper last list is a Scheme error."""
    with pytest.raises(SchemeError) as info:
        rt.apply(*args)
    assert info.value.payload.message == message


PROCEDURE_CASES = [
    (lambda: 1, True),
    (len, True),
    (rt.apply, True),
    (rt.make_parameter(1), True),
    (rt.Continuation(), True),
    (5, False),
    (MString("car"), False),
    (intern("car"), False),
    (RecordType("point", ("x",)), False),
    (int, False),
]


@pytest.mark.parametrize("value, expected", PROCEDURE_CASES)
def test_procedure_predicate_r7rs_6_10(value, expected):
    """procedure? holds for callables (parameters and continuations too), not for classes."""
    assert rt.is_procedure(value) is expected


# -- call/cc (R7RS 6.10) ------------------------------------------------------------------------------

def test_call_cc_escape_r7rs_6_10():
    """Invoking the continuation returns its argument from call/cc at once."""
    assert rt.call_cc(lambda k: 1 + k(42)) == 42


def test_call_cc_normal_return_r7rs_6_10():
    """A receiver that returns normally gives call/cc its value (tail calls resolved)."""
    assert rt.call_cc(lambda k: TailCall(lambda: "done", ())) == "done"


def test_call_cc_multiple_values_r7rs_6_10():
    """(k a b) delivers multiple values to call/cc's continuation."""
    assert rt.call_cc(lambda k: k(1, 2)) == Values((1, 2))


def test_call_cc_from_nested_depth_r7rs_6_10():
    """A continuation escapes from deep inside other calls (the for-each idiom)."""
    def search(k):
        for x in [1, -2, 3]:
            if x < 0:
                k(x)
        return True
    assert rt.call_cc(search) == -2


def test_inner_and_outer_continuations_r7rs_6_10():
    """An inner call/cc can escape straight to an outer one."""
    assert rt.call_cc(lambda outer: rt.call_cc(lambda inner: outer("outer")) + "never") == "outer"


def test_reentering_a_continuation_is_a_clear_error_r7rs_6_10():
    """Calling a continuation after its call/cc returned (re-entry) is a Scheme error."""
    saved = []
    rt.call_cc(lambda k: saved.append(k))
    with pytest.raises(SchemeError, match="re-entering a continuation is not supported"):
        saved[0](1)


def test_call_cc_restores_the_handler_stack_r7rs_6_10():
    """Escaping out of with-exception-handler leaves the handler stack as it was."""
    rt.call_cc(lambda k: rt.with_exception_handler(lambda e: None, lambda: k(1)))
    assert rt._state.handlers is None


# -- dynamic-wind (R7RS 6.10) --------------------------------------------------------------------------

def test_dynamic_wind_normal_exit_r7rs_6_10():
    """before, thunk, after run in order and the thunk's value is returned."""
    events, note = trace_list()
    assert rt.dynamic_wind(note("before"), note("during", 7), note("after")) == 7
    assert events == ["before", "during", "after"]


def test_dynamic_wind_continuation_escape_r7rs_6_10():
    """Escaping through a continuation runs the after thunk."""
    events, note = trace_list()

    def body(k):
        return rt.dynamic_wind(note("before"), lambda: k("escaped"), note("after"))
    assert rt.call_cc(body) == "escaped"
    assert events == ["before", "after"]


def test_dynamic_wind_raise_r7rs_6_10():
    """A raise that unwinds to a guard runs the after thunk first."""
    events, note = trace_list()
    result = resolve(rt.guard(
        lambda: rt.dynamic_wind(note("before"), lambda: rt.raise_("oops"), note("after")),
        lambda condition: (events.append("handler"), condition)[1]))
    assert result == "oops" and events == ["before", "after", "handler"]


def test_dynamic_wind_nested_order_r7rs_6_10():
    """Nested winds unwind innermost first."""
    events, note = trace_list()

    def body(k):
        return rt.dynamic_wind(note("b1"), lambda: rt.dynamic_wind(
            note("b2"), lambda: k(0), note("a2")), note("a1"))
    rt.call_cc(body)
    assert events == ["b1", "b2", "a2", "a1"]


def test_dynamic_wind_exit_runs_after_r7rs_6_14():
    """exit unwinds through dynamic-wind, running the after thunks."""
    events, note = trace_list()
    with pytest.raises(rt.SchemeExit):
        rt.dynamic_wind(note("before"), lambda: (_ for _ in ()).throw(rt.SchemeExit(0)),
                        note("after"))
    assert events == ["before", "after"]


# -- exceptions (R7RS 6.11) ------------------------------------------------------------------------------

def test_raise_continuable_returns_handler_value_r7rs_6_11():
    """(with-exception-handler (lambda (c) 42) (lambda () (+ (raise-continuable 'oops) 1))) => 43"""
    result = rt.with_exception_handler(lambda c: 42, lambda: rt.raise_continuable("oops") + 1)
    assert result == 43


def test_handler_runs_in_the_outer_handler_context_r7rs_6_11():
    """A handler is called with the handler stack minus itself: its raise goes outward."""
    seen = []
    result = rt.with_exception_handler(
        lambda c: (seen.append(("outer", c)), 10)[1],
        lambda: rt.with_exception_handler(
            lambda c: rt.raise_continuable(("wrapped", c)),
            lambda: rt.raise_continuable("inner")))
    assert result == 10 and seen == [("outer", ("wrapped", "inner"))]


def test_handler_returning_from_raise_is_a_secondary_error_r7rs_6_11():
    """If the handler returns from a non-continuable raise, a secondary error is raised."""
    with pytest.raises(SchemeRaise) as info:
        rt.with_exception_handler(lambda c: 0, lambda: rt.raise_("boom"))
    payload = info.value.payload
    assert isinstance(payload, ErrorObject) and payload.irritants == ("boom",)
    assert "non-continuable" in payload.message


def test_secondary_error_goes_to_the_outer_handler_r7rs_6_11():
    """The secondary error is raised in the handler's own (outer) context."""
    caught = []
    rt.call_cc(lambda k: rt.with_exception_handler(
        lambda c: k(caught.append(c)),
        lambda: rt.with_exception_handler(lambda c: "ignored", lambda: rt.raise_("boom"))))
    assert len(caught) == 1 and isinstance(caught[0], ErrorObject)


def test_uncaught_raise_carries_the_object_r7rs_6_11():
    """With no handler, raise propagates a SchemeRaise carrying the raised object."""
    with pytest.raises(SchemeRaise) as info:
        rt.raise_(intern("some-symbol"))
    assert info.value.payload is intern("some-symbol")


NOT_A_PROCEDURE = 5


def one_argument(a):
    return a


PRIMITIVE_ERROR_CASES = [
    (lambda: 1 // 0, "division by zero"),
    (lambda: {}["missing"], "'missing'"),
    (lambda: one_argument(1, 2), "one_argument: expected 1 argument, got 2"),
    (lambda: NOT_A_PROCEDURE(1), "application: not a procedure: an exact integer"),
    (lambda: rt.error(MString("custom"), 1), "custom"),
]


@pytest.mark.parametrize("thunk, message", PRIMITIVE_ERROR_CASES)
def test_primitive_errors_reach_handlers_as_error_objects_r7rs_6_11(thunk, message):
    """Python exceptions from primitives reach with-exception-handler as error objects."""
    seen = []
    rt.call_cc(lambda k: rt.with_exception_handler(lambda c: k(seen.append(c)), thunk))
    assert isinstance(seen[0], ErrorObject)
    assert seen[0].message.endswith(message)


def test_primitive_error_handler_return_is_secondary_error_r7rs_6_11():
    """A handler that returns from a primitive's error gets the secondary error outward."""
    with pytest.raises(SchemeRaise) as info:
        rt.with_exception_handler(lambda c: 0, lambda: 1 // 0)
    assert info.value.payload.irritants[0].message == "division by zero"


def test_error_in_handler_goes_outward_r7rs_6_11():
    """A primitive error inside a handler is handled by the outer handler, not the same one."""
    calls = []

    def inner(c):
        calls.append(("inner", c))
        return 1 // 0

    result = rt.call_cc(lambda k: rt.with_exception_handler(
        lambda c: k(("outer", c.message)),
        lambda: rt.with_exception_handler(inner, lambda: rt.raise_continuable("x"))))
    assert result == ("outer", "division by zero") and calls == [("inner", "x")]


ERROR_OBJECT_CASES = [
    (ErrorObject("m", (1, 2)), True, False, False),
    (ErrorObject("m", (), "file"), True, True, False),
    (ErrorObject("m", (), "read"), True, False, True),
    (intern("x"), False, False, False),
    (MString("m"), False, False, False),
]


@pytest.mark.parametrize("obj, is_error, is_file, is_read", ERROR_OBJECT_CASES)
def test_error_object_predicates_r7rs_6_11(obj, is_error, is_file, is_read):
    """error-object?, file-error? and read-error? by kind."""
    assert rt.is_error_object(obj) is is_error
    assert rt.is_file_error(obj) is is_file
    assert rt.is_read_error(obj) is is_read


def test_error_and_accessors_r7rs_6_11():
    """(error "msg" 1 2): message and irritants come back through the accessors."""
    with pytest.raises(SchemeRaise) as info:
        rt.error(MString("something bad"), 1, MString("two"))
    condition = info.value.payload
    assert rt.error_object_message(condition) == MString("something bad")
    assert to_list(rt.error_object_irritants(condition)) == [1, MString("two")]


def test_error_object_accessor_type_check_r7rs_6_11():
    """The accessors reject non-error-objects with a Scheme error."""
    with pytest.raises(SchemeError, match="error-object-message: expected an error object"):
        rt.error_object_message(5)


def test_os_error_is_a_file_error_r7rs_6_11():
    """An OSError from a primitive becomes an error object that file-error? accepts."""
    def open_missing():
        open("/nonexistent/definitely/missing")
    condition = rt.call_cc(lambda k: rt.with_exception_handler(k, open_missing))
    assert rt.is_file_error(condition)


# -- guard (R7RS 4.2.7) ----------------------------------------------------------------------------------

def test_guard_catches_raise_r7rs_4_2_7():
    """The handler receives the raised object after unwinding to the guard."""
    assert resolve(rt.guard(lambda: rt.raise_("boom"), lambda c: ("caught", c))) == \
        ("caught", "boom")


def test_guard_body_value_r7rs_4_2_7():
    """Without a raise, guard returns the body's value."""
    assert rt.guard(lambda: 5, lambda c: 0) == 5


def test_guard_catches_primitive_errors_r7rs_4_2_7():
    """A Python exception in the body reaches the guard as an error object."""
    result = resolve(rt.guard(lambda: 1 // 0, lambda c: c.message))
    assert result == "division by zero"


def test_guard_reraise_goes_to_outer_handler_r7rs_4_2_7():
    """No clause matched: reraise is raise-continuable in the guard's context."""
    result = rt.with_exception_handler(
        lambda c: ("outer saw", c),
        lambda: resolve(rt.guard(lambda: rt.raise_("inner"), rt.reraise)))
    assert result == ("outer saw", "inner")


def test_guard_inside_handler_context_r7rs_4_2_7():
    """A guard in the body is tried before an outer with-exception-handler."""
    result = rt.with_exception_handler(
        lambda c: "outer",
        lambda: resolve(rt.guard(lambda: rt.raise_("x"), lambda c: "guard")))
    assert result == "guard"


def test_nested_guards_pick_the_innermost_r7rs_4_2_7():
    """The innermost guard catches; re-raising reaches the next one out."""
    result = resolve(rt.guard(
        lambda: resolve(rt.guard(lambda: rt.raise_(1), lambda c: rt.reraise(c + 1))),
        lambda c: ("outer", c)))
    assert result == ("outer", 2)


def test_guard_restores_handler_stack_r7rs_4_2_7():
    """After a guard catches, the handler stack is what it was before the guard."""
    resolve(rt.guard(lambda: rt.with_exception_handler(lambda c: 0, lambda: rt.raise_("x")),
                     lambda c: c))
    assert rt._state.handlers is None


# -- parameters (R7RS 4.2.6) --------------------------------------------------------------------------

def test_make_parameter_applies_converter_r7rs_4_2_6():
    """The converter applies to the initial value and to parameterized values."""
    p = rt.make_parameter(10, lambda x: x * 2)
    assert p() == 20
    assert rt.with_parameters([p], [3], lambda: p()) == 6
    assert p() == 20


def test_parameterize_restores_on_escape_r7rs_4_2_6():
    """Leaving parameterize by a continuation or an error restores the old value."""
    p = rt.make_parameter("outer")
    rt.call_cc(lambda k: rt.with_parameters([p], ["inner"], lambda: k(p())))
    assert p() == "outer"
    with pytest.raises(SchemeRaise):
        rt.with_parameters([p], ["inner"], lambda: rt.raise_("x"))
    assert p() == "outer"


def test_parameterize_takes_scheme_lists_r7rs_4_2_6():
    """Parameters and values may come as Scheme lists too."""
    p, q = rt.make_parameter(1), rt.make_parameter(2)
    assert rt.with_parameters(from_iterable([p, q]), from_iterable([10, 20]),
                              lambda: p() + q()) == 30


def test_parameterize_rejects_non_parameters_r7rs_4_2_6():
    """A value that is not a parameter object is a Scheme error."""
    with pytest.raises(SchemeError, match="parameterize: not a parameter object"):
        rt.with_parameters([5], [1], lambda: None)


def test_parameterize_current_output_port_r7rs_6_13_1():
    """The builtins' port parameters are parameterizable like any other."""
    builtins = pytest.importorskip("vm._builtins")
    port = builtins.PRIMITIVES["current-output-port"]
    out = builtins.PRIMITIVES["open-output-string"]()
    rt.with_parameters([port], [out], lambda: builtins.PRIMITIVES["display"](MString("hi")))
    assert builtins.PRIMITIVES["get-output-string"](out) == MString("hi")
    assert port() is not out


# -- promises (R7RS 4.2.5) ------------------------------------------------------------------------------

def test_delay_and_force_memoize_r7rs_4_2_5():
    """A delayed expression is evaluated once."""
    count = []
    p = rt.make_promise(False, lambda: rt.make_promise(True, count.append(1) or len(count)))
    assert rt.force(p) == 1 and rt.force(p) == 1 and count == [1]


def test_make_promise_r7rs_4_2_5():
    """make-promise wraps a value; a promise is returned as it is."""
    p = rt.scheme_make_promise(5)
    assert rt.is_promise(p) and rt.force(p) == 5
    assert rt.scheme_make_promise(p) is p
    assert rt.force(7) == 7


def test_delay_of_a_promise_is_not_forced_through_r7rs_4_2_5():
    """(force (delay (delay 1))) is a promise: delay wraps its value as it is."""
    inner = rt.make_promise(False, lambda: rt.make_promise(True, 1))
    outer = rt.make_promise(False, lambda: rt.make_promise(True, inner))
    assert rt.force(outer) is inner


def test_delay_force_chain_runs_in_constant_space_r7rs_4_2_5():
    """A million nested delay-forces force iteratively (R7RS 7.3 reference semantics)."""
    def loop(n):
        if n == 0:
            return rt.make_promise(False, lambda: rt.make_promise(True, "done"))
        return rt.make_promise(False, lambda: loop(n - 1))
    assert rt.force(loop(1_000_000)) == "done"


def test_reentrant_force_r7rs_4_2_5():
    """The R7RS example: a promise forced again while being forced keeps the first value."""
    state = {"count": 0, "x": 5}

    def body():
        state["count"] += 1
        if state["count"] > state["x"]:
            return rt.make_promise(True, state["count"])
        return rt.make_promise(True, rt.force(p))
    p = rt.make_promise(False, body)
    assert rt.force(p) == 6
    state["x"] = 10
    assert rt.force(p) == 6


# -- records (R7RS 5.5) ----------------------------------------------------------------------------------

def test_record_type_procedures_r7rs_5_5():
    """Constructor, predicate, accessors and modifiers of a record type."""
    rtd = rt.make_record_type(intern("point"), [intern("x"), intern("y")])
    make = rt.record_constructor(rtd, [intern("x"), intern("y")])
    is_point = rt.record_predicate(rtd)
    get_x, get_y = rt.record_accessor(rtd, intern("x")), rt.record_accessor(rtd, intern("y"))
    set_x = rt.record_modifier(rtd, intern("x"))
    pt = make(1, 2)
    assert is_point(pt) and not is_point(5) and (get_x(pt), get_y(pt)) == (1, 2)
    set_x(pt, 10)
    assert get_x(pt) == 10


def test_record_constructor_with_field_subset_r7rs_5_5():
    """Fields the constructor does not take start unspecified."""
    rtd = rt.make_record_type("node", ("left", "right", "mark"))
    make = rt.record_constructor(rtd, ("right", "left"))
    node = make("R", "L")
    assert rt.record_accessor(rtd, "left")(node) == "L"
    assert rt.record_accessor(rtd, "mark")(node) is None


RECORD_ERROR_CASES = [
    (lambda rtd: rt.record_accessor(rtd, "x")(5), "point-x: expected a point record, got"),
    (lambda rtd: rt.record_modifier(rtd, "x")(5, 1), "set-point-x!: expected a point record"),
    (lambda rtd: rt.record_accessor(rtd, "z"), "define-record-type: point has no field z"),
    (lambda rtd: rt.make_record_type("bad", ("a", "a")), "define-record-type: duplicate field"),
]


@pytest.mark.parametrize("action, message", RECORD_ERROR_CASES)
def test_record_errors_r7rs_5_5(action, message):
    """Wrong record arguments and bad field names are Scheme errors."""
    rtd = rt.make_record_type("point", ("x", "y"))
    with pytest.raises(SchemeError) as info:
        action(rtd)
    assert info.value.payload.message.startswith(message)


def test_record_constructor_arity_r7rs_5_5():
    """A constructor called with the wrong count reports it in Scheme terms."""
    rtd = rt.make_record_type("point", ("x", "y"))
    make = rt.record_constructor(rtd, ("x", "y"))
    with pytest.raises(TypeError) as info:
        make(1)
    assert rt.condition_of(info.value).message == "make-point: expected 2 arguments, got 1"


# -- conditions from Python exceptions -----------------------------------------------------------------

CONDITION_CASES = [
    (TypeError("f() takes 2 positional arguments but 3 were given"),
     "f: expected 2 arguments, got 3"),
    (TypeError("f() takes 1 positional argument but 2 were given"),
     "f: expected 1 argument, got 2"),
    (TypeError("g() takes from 1 to 2 positional arguments but 3 were given"),
     "g: expected 1 to 2 arguments, got 3"),
    (TypeError("h() missing 1 required positional argument: 'x'"),
     "h: too few arguments (1 missing)"),
    (TypeError("raise_() takes 1 positional argument but 2 were given"),
     "raise: expected 1 argument, got 2"),
    (TypeError("len() takes exactly one argument (2 given)"), "len: expected 1 argument, got 2"),
    (TypeError("'MString' object is not callable"), "application: not a procedure: a string"),
    (NameError("name '_list_x2d__x3e_vector' is not defined"),
     "unbound variable: list->vector"),
    (UnboundLocalError("cannot access local variable 'loop_12' where it is not associated "
                       "with a value"), "loop: variable used before its definition"),
    (ZeroDivisionError("integer division or modulo by zero"), "division by zero"),
    (RecursionError("maximum recursion depth exceeded"), "recursion too deep"),
]


@pytest.mark.parametrize("exc, message", CONDITION_CASES)
def test_condition_of_python_exceptions(exc, message):
    """Python errors become error objects with Scheme messages."""
    condition = rt.condition_of(exc)
    assert isinstance(condition, ErrorObject) and condition.message.startswith(message)


def test_name_error_inside_python_code_is_not_an_unbound_variable():
    """A NameError raised by a primitive's own Python is an internal error, reported as such."""
    def broken_primitive():
        return undefined_python_name  # noqa: F821 (the point of the test)
    try:
        broken_primitive()
    except NameError as exc:
        condition = rt.condition_of(exc)
    assert "unbound variable" not in condition.message
    assert "undefined_python_name" in condition.message


def test_condition_of_scheme_raise_is_its_payload():
    """A raised Scheme object is its own condition."""
    assert rt.condition_of(SchemeRaise("payload")) == "payload"


# -- run -------------------------------------------------------------------------------------------------

def test_run_returns_the_resolved_value():
    """run calls the thunk on the evaluation thread and resolves tail calls."""
    assert rt.run(lambda: TailCall(lambda x: x + 1, (1,))) == 2


def test_run_uses_another_thread_and_nests_in_place():
    """run evaluates on a separate thread; a nested run stays on that thread."""
    outer = []

    def thunk():
        outer.append(threading.current_thread())
        return rt.run(lambda: threading.current_thread())
    inner = rt.run(thunk)
    assert inner is outer[0] and inner is not threading.current_thread()


def test_run_converts_python_errors_to_scheme_raise():
    """A Python exception comes out as a SchemeRaise of its condition, with the cause kept."""
    with pytest.raises(SchemeRaise) as info:
        rt.run(lambda: 1 // 0)
    assert info.value.payload.message == "division by zero"
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_run_lets_exit_through_r7rs_6_14():
    """exit's SchemeExit passes through run unchanged."""
    with pytest.raises(rt.SchemeExit):
        rt.run(lambda: (_ for _ in ()).throw(rt.SchemeExit(3)))


def test_run_restores_the_recursion_limit():
    """The high recursion limit only applies while an evaluation runs."""
    import sys
    before = sys.getrecursionlimit()
    assert rt.run(sys.getrecursionlimit) == rt.RECURSION_LIMIT
    assert sys.getrecursionlimit() == before


def test_interrupting_the_evaluation_thread_stops_run():
    """A KeyboardInterrupt raised into the evaluation thread (what Ctrl-C forwards)
    stops an endless evaluation and comes out of run."""
    started, outcome = threading.Event(), []

    def spin():
        started.set()
        while True:
            pass

    def caller():
        try:
            rt.run(spin)
        except KeyboardInterrupt:
            outcome.append("interrupted")

    waiting = threading.Thread(target=caller)
    waiting.start()
    assert started.wait(10)
    worker = next(t for t in threading.enumerate() if t.name == "scheme-eval")
    rt._interrupt(worker)
    waiting.join(10)
    assert outcome == ["interrupted"]


def test_deep_recursion_through_resolve_uses_no_c_stack():
    """resolve spells out small calls, so deep non-tail recursion via TailCalls works."""
    def count(n):
        if n == 0:
            return 0
        return 1 + resolve(TailCall(count, (n - 1,)))
    assert rt.run(count, 200_000) == 200_000


# -- eval and environments (R7RS 6.12), when the expander exists --------------------------------------

def test_eval_in_environment_r7rs_6_12():
    """(eval '(* 7 3) (environment '(scheme base))) => 21"""
    pytest.importorskip("vm._expand")
    env = rt.environment(from_iterable([intern("scheme"), intern("base")]))
    form = from_iterable([intern("*"), 7, 3])
    assert rt.run(rt.scheme_eval, form, env) == 21


ENVIRONMENT_ERROR_CASES = [
    (lambda: rt.environment(from_iterable([intern("scheme"), intern("nonsense")])),
     "environment: unknown library"),
    (lambda: rt.scheme_eval(1, 5), "eval: expected an environment, got"),
    (lambda: rt.RUNTIME["scheme-report-environment"](7),
     "scheme-report-environment: only version 5 is supported"),
]


@pytest.mark.parametrize("action, message", ENVIRONMENT_ERROR_CASES)
def test_environment_errors_r7rs_6_12(action, message):
    """Unknown libraries, non-environments and unsupported versions are Scheme errors."""
    with pytest.raises(SchemeError) as info:
        action()
    assert info.value.payload.message.startswith(message)


def test_runtime_table_names_r7rs():
    """RUNTIME exports the control procedures under their Scheme names."""
    expected = {"procedure?", "apply", "call-with-current-continuation", "call/cc", "values",
                "call-with-values", "dynamic-wind", "with-exception-handler", "raise",
                "raise-continuable", "error", "error-object?", "error-object-message",
                "error-object-irritants", "file-error?", "read-error?", "make-parameter",
                "force", "make-promise", "promise?", "eval", "environment",
                "scheme-report-environment", "null-environment"}
    assert expected <= set(rt.RUNTIME)
    assert rt.RUNTIME["call/cc"] is rt.RUNTIME["call-with-current-continuation"]
