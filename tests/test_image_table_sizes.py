"""How big a table copied from a dict is (native/objmem.c, "the table").

A dict of at most TABLE_LINEAR (8) keys is stored in a store that fits it
exactly, scanned rather than indexed: a mail-like dict costs a fraction of
the bytes a store with room to grow would.  Growing it later rebuilds the
store with room, and it behaves as a dict throughout.
"""
from __future__ import annotations

import random

import pytest

import image

WORD = 8
TABLE_WORDS = 4          # header + count, used, store


def _store_words(entries: int, index: int = 0) -> int:
    return 1 + 2 + index + 3 * entries   # header, (E, I), index slots, (hash, key, value)


@pytest.fixture
def img(tmp_path):
    with image.open(tmp_path / "t.image") as opened:
        yield opened


def _bytes_of(img, value) -> int:
    """Object bytes that storing value adds (its keys and values immediates)."""
    before = img.stats()["object_bytes"]
    img.root["x"] = value
    return img.stats()["object_bytes"] - before


@pytest.mark.parametrize("keys", [1, 4, 5, 6, 8])
def test_a_small_dict_is_stored_in_a_store_that_fits_it(img, keys):
    """Up to 8 keys: the store holds max(keys, 4) entries and no index."""
    value = {f"k{i}": i for i in range(keys)}
    assert _bytes_of(img, value) == WORD * (TABLE_WORDS + _store_words(max(keys, 4)))
    assert dict(img.root["x"]) == value


def test_a_larger_dict_keeps_room_and_an_index(img):
    """Nine keys: 16 entries and a 32-slot index, as before."""
    value = {f"k{i}": i for i in range(9)}
    assert _bytes_of(img, value) == WORD * (TABLE_WORDS + _store_words(16, 32))


def test_a_fitted_table_grows_and_shrinks_like_a_dict(img):
    """Inserting into a full fitted store rebuilds it; order and contents stay a dict's."""
    rng = random.Random(3)
    model = {f"k{i}": i for i in range(6)}
    img.root["t"] = model
    table = img.root["t"]
    for step in range(60):
        key = f"k{rng.randrange(20)}"
        if key in model and rng.random() < 0.4:
            del model[key]
            del table[key]
        else:
            model[key] = step
            table[key] = step
        assert list(table.items()) == list(model.items())
    img.check()
