"""Pytree flattening, specs and their wire form."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from coupler.runtime import Spec, SpecMismatch
from coupler.runtime.message import flatten, leaf_paths, unflatten


class State(NamedTuple):
    u: np.ndarray
    t: float


def test_flatten_roundtrip_and_paths() -> None:
    tree = {"b": [np.zeros(2), (np.ones(3, np.float32), 4)], "a": State(np.arange(3), 1.5)}
    leaves, td = flatten(tree)
    assert leaf_paths(td) == ["a/0", "a/1", "b/0", "b/1/0", "b/1/1"]
    back = unflatten(td, leaves)
    assert back["b"][1][0].dtype == np.float32 and back["a"][1] == 1.5 and isinstance(back["b"], list)
    with pytest.raises(SpecMismatch, match="keys must be str"):
        flatten({1: np.zeros(1)})


def test_spec_check_and_wire() -> None:
    spec = Spec.of({"u": np.zeros((4, 4), np.float32), "p": np.zeros(1, np.float32)})
    assert Spec.from_wire(spec.to_wire()) == spec and spec.nbytes == 68
    leaves, td = flatten({"u": np.zeros((4, 4), np.float32), "p": np.zeros(1, np.float32)})
    spec.check("c", td, leaves)
    leaves, td = flatten({"u": np.zeros((4, 5), np.float32), "p": np.zeros(1, np.float32)})
    with pytest.raises(SpecMismatch, match=r"channel 'c': field 'u' expected shape \(4, 4\) dtype float32, got shape \(4, 5\)"):
        spec.check("c", td, leaves)
    leaves, td = flatten({"u": np.zeros((4, 4), np.float32)})
    with pytest.raises(SpecMismatch, match=r"expected fields \['p', 'u'\], got \['u'\]"):
        spec.check("c", td, leaves)


@pytest.mark.parametrize(
    "leaf",
    ["hello", None, np.array(["a", "b"]), np.array([1, None], dtype=object), np.datetime64("2026-01-01"), b"raw"],
    ids=["str", "None", "str-array", "object-array", "datetime", "bytes"],
)
@pytest.mark.parametrize("where", ["flat", "nested"])
def test_a_leaf_that_is_not_numeric_is_refused_where_it_is_made(leaf: object, where: str) -> None:
    # A flat dict of arrays takes the fast path, a nested tree the general one: both refuse it.
    tree = {"v": leaf, "u": np.zeros(2)} if where == "flat" else {"a": [np.zeros(2), {"v": leaf}]}
    with pytest.raises(SpecMismatch, match=r"a message leaf must be a number or a numeric array \(bool, int, float, complex\); got "):
        flatten(tree)
    with pytest.raises(SpecMismatch, match="numeric array"):
        Spec.of(tree)


@pytest.mark.parametrize("leaf", [True, 3, 2.5, 1j, np.uint8(7), np.zeros((2, 2), np.complex64), np.ones(3, bool)])
def test_numbers_and_numeric_arrays_of_every_kind_are_leaves(leaf: object) -> None:
    leaves, td = flatten({"v": leaf})
    assert leaves[0].dtype.kind in "biufc" and np.array_equal(unflatten(td, leaves)["v"], leaf)


@pytest.mark.parametrize("tree", [{1: np.zeros(1), "x": np.zeros(1)}, {"a": {1: 2, "b": 3}}], ids=["flat", "nested"])
def test_keys_of_mixed_types_are_a_spec_mismatch_not_a_sort_error(tree: dict) -> None:
    with pytest.raises(SpecMismatch, match=r"message dict keys must be str, got 1 \(int\)"):
        flatten(tree)


@pytest.mark.parametrize("name", ["pairs\n", "a" * 200 + "\n", "", "a" * 201, "two words", "tab\there"])
def test_a_name_is_refused_unless_it_is_wholly_of_the_allowed_characters(name: str) -> None:
    from coupler.runtime.control.broker import check_name

    with pytest.raises(ValueError, match="channel name must be 1-200 characters"):
        check_name("channel", name)
    assert check_name("channel", "a" * 200) == "a" * 200 and check_name("channel", "sim-3/out:v1.x_y") == "sim-3/out:v1.x_y"


def test_an_array_in_the_other_byte_order_is_refused_saying_how_to_convert_it() -> None:
    # dtype.name drops the byte order: a spec made from a big-endian array refused that same array,
    # saying "expected dtype float32, got dtype float32".
    big = np.arange(4, dtype=">f4")
    with pytest.raises(SpecMismatch, match=r"field 'u': expected an array in this machine's byte order, got dtype '>f4'; convert"):
        Spec.of({"u": big})
    spec = Spec.of({"u": big.astype(big.dtype.newbyteorder("="))})
    leaves, td = flatten({"u": big})
    with pytest.raises(SpecMismatch, match=r"dtype float32 in the other byte order \('>f4'\)"):
        spec.check("c", td, leaves)


@pytest.mark.parametrize(("declared", "sent"), [(list, tuple), (tuple, list)])
def test_the_same_leaves_in_other_containers_are_named_as_containers(declared: type, sent: type) -> None:
    a = np.zeros(2, np.float32)
    spec = Spec.of(declared([a, a]))
    leaves, td = flatten(sent([a, a]))
    with pytest.raises(SpecMismatch, match=rf"expected the structure \('{declared.__name__}', .*got \('{sent.__name__}'"):
        spec.check("c", td, leaves)
