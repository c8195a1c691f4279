"""Undoable edit commands, macros, merged slider edits and change events."""
from __future__ import annotations

import random

import pytest
import torch

from editor_core_helpers import composition
from sfeditor.editor.commands import (AssignCode, CopyCode, RandomizeUnlocked, Reroll, SetCollapsed, SetLocked, SetSeed,
                               SetTruncation, UndoStack)

torch.set_num_threads(1)


@pytest.fixture
def stack():
    s = UndoStack(composition())
    s.events = []
    s.subscribe(s.events.append)
    return s


def check_undo_redo(stack: UndoStack, cmd, expect) -> None:
    """push -> expect(after) holds; undo -> exactly the old composition; redo -> the new one again."""
    before = stack.composition.snapshot()
    n_events = len(stack.events)
    assert stack.push(cmd)
    after = stack.composition.snapshot()
    assert not after.same_as(before)
    expect(stack.composition)
    assert stack.undo()
    assert stack.composition.same_as(before)
    assert stack.redo()
    assert stack.composition.same_as(after)
    expect(stack.composition)
    assert [e.kind for e in stack.events[n_events:]] == ["do", "undo", "redo"]


def test_set_seed_clears_code(stack):
    stack.push(AssignCode("a", torch.ones(16)))
    check_undo_redo(stack, SetSeed("a", 1234),
                    lambda c: (c.state("a").seed == 1234 and c.state("a").code is None) or pytest.fail())


def test_reroll_is_deterministic_on_redo(stack):
    old = stack.composition.state("b").seed
    cmd = Reroll("b", random.Random(5))
    check_undo_redo(stack, cmd, lambda c: c.state("b").seed != old or pytest.fail())


def test_lock_unlock(stack):
    check_undo_redo(stack, SetLocked("c", True), lambda c: c.state("c").locked or pytest.fail())
    check_undo_redo(stack, SetLocked("c", False), lambda c: (not c.state("c").locked) or pytest.fail())


def test_collapse_expand(stack):
    check_undo_redo(stack, SetCollapsed("left"), lambda c: c.collapsed_nodes() == {"left"} or pytest.fail())
    check_undo_redo(stack, SetCollapsed("left", False), lambda c: c.collapsed_nodes() == set() or pytest.fail())
    n = len(stack)
    with pytest.raises(ValueError, match="leaf"):
        stack.push(SetCollapsed("a"))
    assert len(stack) == n


def test_copy_code(stack):
    stack.push(AssignCode("a", torch.arange(16.0)))
    stack.push(SetLocked("b"))

    def expect(c):
        assert c.state("b").seed == c.state("a").seed and torch.equal(c.state("b").code, c.state("a").code)
        assert c.state("b").locked            # flags stay

    check_undo_redo(stack, CopyCode("a", "b"), expect)


def test_assign_code(stack):
    wplus = torch.randn(6, 16)
    check_undo_redo(stack, AssignCode("right", wplus),
                    lambda c: torch.equal(c.state("right").code, wplus[None]) or pytest.fail())
    with pytest.raises(ValueError):
        AssignCode("a", torch.full((16,), float("inf")))


def test_set_truncation(stack):
    check_undo_redo(stack, SetTruncation(0.3), lambda c: c.truncation == 0.3 or pytest.fail())


def test_randomize_unlocked_is_one_macro(stack):
    c = stack.composition
    stack.push(SetLocked("a"))
    stack.push(SetLocked("all"))
    locked = {n: c.state(n).seed for n in ("a", "all")}
    unlocked = {n: c.state(n).seed for n in c.node_names if n not in locked}
    n, ev = len(stack), len(stack.events)
    check_undo_redo(stack, RandomizeUnlocked(random.Random(1)),
                    lambda c: (all(c.state(k).seed == v for k, v in locked.items())
                               and all(c.state(k).seed != v for k, v in unlocked.items())) or pytest.fail())
    assert len(stack) == n + 1
    assert len(stack.events) == ev + 3            # one event per do/undo/redo, not one per node
    stack.undo()
    assert {k: c.state(k).seed for k in unlocked} == unlocked


def test_user_macro(stack):
    c = stack.composition
    before = c.snapshot()
    with stack.macro("swap"):
        stack.push(SetSeed("a", 1))
        stack.push(SetSeed("b", 2))
        stack.push(SetCollapsed("right"))
        assert stack.events == []                 # nothing announced inside the macro
    assert len(stack) == 1 and stack.undo_text == "swap"
    assert [e.kind for e in stack.events] == ["do"]
    stack.undo()
    assert c.same_as(before)
    stack.redo()
    assert c.state("a").seed == 1 and c.state("b").seed == 2 and c.collapsed_nodes() == {"right"}
    # an empty macro records nothing; a failing one rolls back
    with stack.macro("nothing"):
        pass
    assert len(stack) == 1
    snap = c.snapshot()
    with pytest.raises(KeyError):
        with stack.macro("bad"):
            stack.push(SetSeed("a", 77))
            stack.push(SetSeed("nose", 1))
    assert c.same_as(snap) and len(stack) == 1


def test_merged_slider_edits(stack):
    c = stack.composition
    for psi in (0.71, 0.75, 0.8, 0.9, 1.0):
        stack.push(SetTruncation(psi))
    assert len(stack) == 1 and c.truncation == 1.0
    stack.seal()                                  # slider released
    stack.push(SetTruncation(0.5))
    stack.push(SetTruncation(0.4))
    assert len(stack) == 2
    stack.undo()
    assert c.truncation == 1.0
    stack.undo()
    assert c.truncation == 0.7
    stack.redo()
    assert c.truncation == 1.0
    # a drag that returns to where it started leaves no entry
    stack.seal()
    stack.push(SetTruncation(0.2))
    stack.push(SetTruncation(1.0))
    assert len(stack) == 1
    # merging never crosses another command
    stack.push(SetTruncation(0.6))
    stack.push(SetSeed("a", 5))
    stack.push(SetTruncation(0.65))
    assert len(stack) == 4


def test_no_event_without_change(stack):
    c = stack.composition
    assert not stack.push(SetSeed("a", c.state("a").seed))
    assert not stack.push(SetTruncation(c.truncation))
    assert not stack.push(SetLocked("a", False))
    assert not stack.push(CopyCode("a", "a"))
    assert not stack.undo() and not stack.redo()
    assert stack.events == [] and len(stack) == 0


def test_redo_cleared_by_new_edit_and_clean_state(stack):
    assert stack.is_clean
    stack.push(SetSeed("a", 1))
    assert not stack.is_clean
    stack.set_clean()
    assert stack.is_clean
    stack.push(SetSeed("b", 2))
    stack.undo()
    assert stack.is_clean and stack.can_redo()
    stack.push(SetSeed("c", 3))
    assert not stack.can_redo() and not stack.is_clean
    unsubscribe = stack.subscribe(lambda e: pytest.fail("unsubscribed observer called"))
    unsubscribe()
    stack.undo()


def test_undo_cap_reports_dropped_entries_and_stays_modified_past_it():
    """Issue 39: after more edits than the cap, undoing to the end is NOT the saved state."""
    s = UndoStack(composition(), limit=5)
    events = []
    s.subscribe(events.append)
    start = s.composition.snapshot()
    assert s.is_clean
    for i in range(7):
        assert s.push(SetSeed("a", 100 + i))
    assert len(s) == 5 and s.dropped == 2
    assert [e.dropped for e in events] == [0, 0, 0, 0, 0, 1, 1]
    while s.undo():
        pass
    assert not s.composition.same_as(start)          # the two oldest steps cannot be undone
    assert not s.is_clean                            # so the document is modified
    while s.redo():
        pass
    s.set_clean()
    assert s.is_clean
    s.undo()
    assert not s.is_clean
    s.redo()
    assert s.is_clean


def test_undo_cap_saved_state_at_the_bottom_is_still_clean():
    s = UndoStack(composition(), limit=3)
    s.push(SetSeed("a", 1))
    s.set_clean()                                    # saved after one edit
    saved = s.composition.snapshot()
    for i in range(3):
        s.push(SetSeed("a", 10 + i))                 # the saved entry falls off the bottom
    assert s.dropped == 1 and not s.is_clean
    while s.undo():
        pass
    assert s.composition.same_as(saved) and s.is_clean
    s.push(SetSeed("b", 5))                          # a new branch at the same depth is not the save
    s.undo()
    assert s.is_clean
    s.redo()
    assert not s.is_clean


def test_undo_cap_applies_to_macros():
    s = UndoStack(composition(), limit=2)
    events = []
    s.subscribe(events.append)
    for i in range(3):
        with s.macro(f"m{i}"):
            s.push(SetSeed("a", 50 + i))
    assert s.dropped == 1 and events[-1].dropped == 1 and len(s) == 2
