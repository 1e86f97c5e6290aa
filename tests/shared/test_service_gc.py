"""The service process's garbage collector: start-up objects frozen, young collections rarer."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shared.service import GC_YOUNG_THRESHOLD, tune_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_start_up_objects_are_frozen_and_young_collections_rarer(restored_gc: None) -> None:
    built_at_start = {"a": [1, 2, 3]}
    middle, old = gc.get_threshold()[1:]
    tune_garbage_collector()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > 0
    tracked = {id(obj) for obj in gc.get_objects()}  # the frozen ones are not listed
    assert id(built_at_start) not in tracked


def test_cycles_made_after_start_are_still_collected(restored_gc: None) -> None:
    tune_garbage_collector()

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    first, second = Node(), Node()
    first.other, second.other = second, first
    watched = weakref.ref(first)
    del first, second
    assert watched() is not None  # a cycle: reference counting alone keeps it
    gc.collect()
    assert watched() is None
