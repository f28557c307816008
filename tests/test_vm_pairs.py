"""Pairs made in C (native/fastpath.c, "Scheme pairs"; vm/_types.Pair).

The invariants checked here: a pair is out of the cyclic collector only
while everything it reaches is a leaf (check_pairs() verifies the ring of
untracked pairs); every write to a car or cdr tracks them all, so a cycle
made by set-car!/set-cdr! (or through a vector) is still collected; the C
list helpers give what the Python walks give, and None where they must not
decide.
"""
from __future__ import annotations

import gc
import weakref

import pytest
from native._fastpath import (
    check_pairs,
    cons,
    pair_chars_text,
    pair_list_items,
    pair_reverse,
)

from vm._env import Environment
from vm._runtime import eval_text, run
from vm._types import NIL, Char, MString, Pair, SVector, char, intern


@pytest.fixture(autouse=True)
def pairs_stay_valid():
    """Every test leaves the untracked ring consistent."""
    check_pairs()
    yield
    check_pairs()


def chain(*cars, tail=NIL):
    for car in reversed(cars):
        tail = cons(car, tail)
    return tail


# -- making pairs ---------------------------------------------------------------------------

def test_cons_and_the_class_make_the_same_pair():
    """cons(a, d) and Pair(a, d) give a Pair with those fields."""
    for p in (cons(1, NIL), Pair(1, NIL)):
        assert type(p) is Pair and p.car == 1 and p.cdr is NIL


def test_wrong_argument_counts_are_type_errors():
    """cons and Pair take exactly two arguments."""
    for bad in (lambda: cons(1), lambda: cons(1, 2, 3), lambda: Pair(1), lambda: Pair(1, 2, x=3)):
        with pytest.raises(TypeError):
            bad()


def test_pairs_of_leaves_are_untracked_and_others_tracked():
    """Numbers, strings, characters, symbols, '() and untracked pairs are
    leaves; a pair holding a vector, or a pair that holds one, is tracked."""
    leafy = chain(1, 2.5, "s", char(65), intern("a"), MString("m"), NIL)
    node = leafy
    while node is not NIL:
        assert not gc.is_tracked(node)
        node = node.cdr
    assert not gc.is_tracked(cons(leafy, leafy))
    holder = cons(SVector([1]), NIL)
    assert gc.is_tracked(holder)
    assert gc.is_tracked(cons(1, holder))
    assert check_pairs() >= 7


def test_a_write_tracks_every_untracked_pair():
    """set-car! or set-cdr! on any pair puts all pairs back in the collector."""
    a, b = chain(1, 2), chain(3, 4)
    a.cdr.car = 5
    assert gc.is_tracked(a) and gc.is_tracked(b) and check_pairs() == 0
    assert a.cdr.car == 5


def test_deleting_a_field_and_reading_it_again():
    """A field can be emptied (become: does) and then reads as missing."""
    p = cons(1, 2)
    del p.car
    with pytest.raises(AttributeError):
        assert p.car is None   # raises first: the field is empty
    with pytest.raises(AttributeError):
        del p.car
    assert p.cdr == 2


# -- cycles are collected ---------------------------------------------------------------------

def collected(make) -> bool:
    ref = make()
    gc.collect()
    return ref() is None


def test_a_cycle_made_by_set_cdr_is_collected():
    """(set-cdr! p p) on an untracked pair: the cycle is freed by gc."""
    def make():
        p = chain(1, 2, 3)
        p.cdr.cdr.cdr = p
        return weakref.ref(p)
    assert collected(make)


def test_a_cycle_through_a_vector_is_collected():
    """A pair reaching an untracked list whose pair is then pointed back at it."""
    def make():
        inner = chain(1, 2)
        v = SVector([None])
        outer = cons(v, inner)          # tracked: holds a vector
        inner.cdr.car = outer           # the write tracks inner; cycle outer -> inner -> outer
        return weakref.ref(inner)
    assert collected(make)


def test_a_cycle_upstream_of_the_written_pair_is_collected():
    """The written pair's untracked predecessors are tracked too: the cycle
    head -> ... -> q -> v -> head is collected."""
    def make():
        q = chain(9)
        head = chain(1, 2, tail=q)      # untracked, reaching q
        v = SVector([head])
        q.car = v                       # q -> v -> head -> ... -> q
        return weakref.ref(head)
    assert collected(make)


def test_scheme_set_cdr_cycles_are_collected():
    """The same through Scheme: a circular list made by set-cdr! is freed."""
    env = Environment.standard()
    p = run(lambda: eval_text("(define p (list 1 2 3)) (set-cdr! (cddr p) p) p", env, "<t>"))
    ref = weakref.ref(p)
    del p
    env.namespace.clear()
    gc.collect()
    assert ref() is None


def test_a_long_untracked_list_is_freed_without_deep_recursion():
    """A million-pair list is freed (the trashcan bounds the recursion)."""
    lst = NIL
    for i in range(1_000_000):
        lst = cons(i, lst)
    assert check_pairs() >= 1_000_000
    del lst
    assert check_pairs() == 0


# -- the C list helpers -------------------------------------------------------------------------

def test_list_items_and_reverse_of_proper_lists():
    """The cars in order, and the list reversed."""
    lst = chain(1, 2, 3)
    assert pair_list_items(lst) == [1, 2, 3]
    assert pair_list_items(NIL) == []
    assert pair_list_items(pair_reverse(lst)) == [3, 2, 1]


class OtherPair(Pair):
    """A subclass, as PersistentPair is: its fields may be properties."""

    __slots__ = ()


@pytest.mark.parametrize("make", [lambda: chain(1, 2, tail=3), lambda: 7,
                                  lambda: chain(1, tail=OtherPair(2, NIL))])
def test_list_helpers_leave_other_shapes_to_python(make):
    """An improper list, a non-list or a pair of a subclass gives None, so the
    caller's general walk decides (and reports)."""
    x = make()
    assert pair_list_items(x) is None and pair_reverse(x) is None and pair_chars_text(x) is None


def test_circular_lists_give_none():
    """Brent's check stops on a cycle of any length."""
    for length in (1, 2, 9, 100):
        p = chain(*range(length))
        last = p
        while last.cdr is not NIL:
            last = last.cdr
        last.cdr = p
        assert pair_list_items(p) is None and pair_reverse(p) is None
        last.cdr = NIL


def test_chars_text_reads_code_points():
    """A list of characters of any width is its str; a non-character gives None."""
    assert pair_chars_text(chain(char(97), char(0x3b1), char(0x1F600))) == "a\u03b1\U0001F600"
    assert pair_chars_text(NIL) == ""
    assert pair_chars_text(chain(char(97), "b")) is None
    assert isinstance(char(97), Char)


@pytest.mark.parametrize("source, expected", [
    ('(list->string (list #\\a #\\b))', '"ab"'),
    ("(reverse '(1 2 3))", "(3 2 1)"),
    ("(list->string '())", '""'),
    ("(let ((p (list 1 2))) (set-cdr! (cdr p) p) (guard (e (#t 'circular)) (reverse p)))",
     "circular"),
    ("(guard (e (#t (error-object-message e))) (list->string (list #\\a 1)))",
     None),
])
def test_scheme_list_procedures_r7rs_6_4_and_6_7(source, expected):
    """reverse and list->string through Scheme, with their errors."""
    from vm._printer import write
    env = Environment.standard()
    got = write(run(lambda: eval_text(source, env, "<t>")))
    if expected is None:
        assert "list->string" in got
    else:
        assert got == expected
