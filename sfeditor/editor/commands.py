"""Undoable edits of a :class:`~sfeditor.editor.composition.Composition` (Qt-free).

Every user edit is a :class:`Command` pushed on an :class:`UndoStack`; the
stack applies it (one code path for every edit), records it for undo/redo and
tells its observers.  Observers are called only when the composition really
changed: a command that changes nothing is not recorded and fires nothing.

* Compound edits: ``with stack.macro("text"): ...`` records one entry and
  notifies once; :class:`RandomizeUnlocked` is such a macro.
* Slider drags: consecutive :class:`SetTruncation` commands merge into one
  entry (``merge_with``); call :meth:`UndoStack.seal` on slider release so the
  next drag starts a new entry.

Observers: ``fn(event)`` with ``event`` a :class:`ChangeEvent` (``kind`` is
"do", "undo" or "redo"; ``text`` the entry's text; ``dropped`` how many of the
oldest entries this push removed to stay within the stack's ``limit``).

The clean state (last save) is an absolute position in the history, so once the
saved position has been dropped off the bottom of a capped stack, no amount of
undoing makes the document clean again (it differs from what was saved).
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from .composition import Composition, NodeState, canonical_code

__all__ = ["Command", "NodeEdit", "SetSeed", "Reroll", "SetLocked", "SetCollapsed", "CopyCode", "AssignCode",
           "SetTruncation", "Macro", "RandomizeUnlocked", "UndoStack", "ChangeEvent"]


class Command:
    """An edit.  ``apply`` returns True if it changed the composition; ``revert`` undoes it exactly."""

    text = "edit"

    def apply(self, comp: Composition) -> bool:
        raise NotImplementedError

    def revert(self, comp: Composition) -> None:
        raise NotImplementedError

    def merge_with(self, other: "Command") -> bool:
        """Absorb ``other`` (already applied, pushed right after this one); True if merged."""
        return False

    def is_noop(self) -> bool:
        """True when the recorded change cancels out (e.g. a drag back to where it began)."""
        return False


class NodeEdit(Command):
    """Change some fields of one node's :class:`NodeState`."""

    def __init__(self, node: str, text: str, **changes):
        self.node, self.text, self.changes = node, text, changes
        self.before: NodeState | None = None

    def new_state(self, comp: Composition, old: NodeState) -> NodeState:
        return replace(old, **self.changes)

    def apply(self, comp: Composition) -> bool:
        old = comp.state(self.node)
        changed = comp.set_state(self.node, self.new_state(comp, old))
        self.before = old if changed else None
        return changed

    def revert(self, comp: Composition) -> None:
        comp.set_state(self.node, self.before)


class SetSeed(NodeEdit):
    """Set a node's seed; its explicit code (if any) is dropped so the seed shows."""

    def __init__(self, node: str, seed: int):
        super().__init__(node, f"set seed of {node} to {seed}", seed=seed, code=None)


class Reroll(SetSeed):
    """A new random seed for a node (drawn once, so redo gives the same seed)."""

    def __init__(self, node: str, rng: random.Random | None = None):
        super().__init__(node, (rng or random.Random()).randrange(2 ** 32))
        self.text = f"reroll {node}"


class SetLocked(NodeEdit):
    def __init__(self, node: str, locked: bool = True):
        super().__init__(node, f"{'lock' if locked else 'unlock'} {node}", locked=bool(locked))


class SetCollapsed(NodeEdit):
    """Collapse (bypass, paper Sec. 4.5) or expand an internal node."""

    def __init__(self, node: str, collapsed: bool = True):
        super().__init__(node, f"{'collapse' if collapsed else 'expand'} {node}", collapsed=bool(collapsed))

    def apply(self, comp: Composition) -> bool:
        if not comp.is_internal(self.node):
            raise ValueError(f"{self.node!r} is a leaf; only internal nodes can be collapsed")
        return super().apply(comp)


class AssignCode(NodeEdit):
    """Give a node an explicit w / w+ code (e.g. from an inversion)."""

    def __init__(self, node: str, code, text: str | None = None):
        super().__init__(node, text or f"assign code to {node}", code=canonical_code(code))


class CopyCode(NodeEdit):
    """Node ``dst`` takes ``src``'s seed and explicit code (its own flags stay)."""

    def __init__(self, src: str, dst: str):
        super().__init__(dst, f"copy code {src} -> {dst}")
        self.src = src

    def new_state(self, comp: Composition, old: NodeState) -> NodeState:
        s = comp.state(self.src)
        return replace(old, seed=s.seed, code=s.code)


class SetTruncation(Command):
    """Set psi; consecutive ones merge into one undo entry (slider drags)."""

    def __init__(self, psi: float):
        self.psi, self.before = float(psi), None
        self.text = "set truncation"

    def apply(self, comp: Composition) -> bool:
        old = comp.truncation
        changed = comp.set_truncation(self.psi)
        self.before = old if changed else None
        return changed

    def revert(self, comp: Composition) -> None:
        comp.set_truncation(self.before)

    def merge_with(self, other: Command) -> bool:
        if not isinstance(other, SetTruncation):
            return False
        self.psi = other.psi
        return True

    def is_noop(self) -> bool:
        return self.psi == self.before


class Macro(Command):
    """Commands applied in order, undone in reverse, recorded as one entry."""

    def __init__(self, text: str, commands: list[Command] | None = None):
        self.text, self.commands = text, list(commands or [])

    def apply(self, comp: Composition) -> bool:
        done = []
        try:
            for c in self.commands:
                if c.apply(comp):
                    done.append(c)
        except Exception:
            for c in reversed(done):
                c.revert(comp)
            raise
        self.commands = done
        return bool(done)

    def revert(self, comp: Composition) -> None:
        for c in reversed(self.commands):
            c.revert(comp)


class RandomizeUnlocked(Macro):
    """Reroll every unlocked node (leaves and internal nodes) as one entry."""

    def __init__(self, rng: random.Random | None = None):
        super().__init__("randomise unlocked")
        self.rng = rng or random.Random()

    def apply(self, comp: Composition) -> bool:
        if not self.commands:
            self.commands = [Reroll(n, self.rng) for n, st in comp.nodes.items() if not st.locked]
        return super().apply(comp)


@dataclass(frozen=True)
class ChangeEvent:
    kind: str          # "do" | "undo" | "redo"
    text: str
    dropped: int = 0   # oldest entries removed by this push (undo history full)


class UndoStack:
    """Applies commands to one composition, with undo/redo, macros, merging and observers."""

    #: Default number of undo entries kept; older ones are dropped (and reported, :attr:`dropped`).
    DEFAULT_LIMIT = 500

    def __init__(self, composition: Composition, limit: int = DEFAULT_LIMIT):
        self.composition = composition
        self.limit = limit
        self.dropped = 0                     # entries dropped off the bottom so far (absolute offset)
        self._done: list[Command] = []
        self._undone: list[Command] = []
        self._observers: list[Callable[[ChangeEvent], None]] = []
        self._macros: list[Macro] = []
        self._sealed = False
        self._clean: Command | None = None   # entry on top when last saved
        self._clean_depth = 0

    # -------------------------------------------------------------- observers
    def subscribe(self, fn: Callable[[ChangeEvent], None]) -> Callable[[], None]:
        """Call ``fn(event)`` after every real change; returns an unsubscribe function."""
        self._observers.append(fn)
        return lambda: self._observers.remove(fn) if fn in self._observers else None

    def _notify(self, kind: str, text: str, dropped: int = 0) -> None:
        ev = ChangeEvent(kind, text, dropped)
        for fn in list(self._observers):
            fn(ev)

    # ------------------------------------------------------------------ edits
    def push(self, cmd: Command) -> bool:
        """Apply and record ``cmd``; False (nothing recorded, nobody told) if it changed nothing.

        An invalid edit raises (ValueError / KeyError) and leaves everything unchanged.
        """
        if not cmd.apply(self.composition):
            return False
        if self._macros:
            self._macros[-1].commands.append(cmd)
            return True
        top = self._done[-1] if self._done else None
        if top is not None and not self._sealed and top is not self._clean and top.merge_with(cmd):
            self._sealed = False
            if top.is_noop():          # dragged back to the start: the entry disappears
                self._done.pop()
                self._sealed = True    # and the drag's next step must not merge into the entry below
            dropped = 0
        else:
            self._done.append(cmd)
            dropped = self._trim()
            self._sealed = False
        self._undone.clear()
        self._notify("do", cmd.text, dropped)
        return True

    def _trim(self) -> int:
        """Drop the oldest entries beyond ``limit``; returns how many were dropped."""
        extra = len(self._done) - self.limit
        if extra <= 0:
            return 0
        if self._clean is not None and self._done[extra - 1] is self._clean:
            self._clean = None            # the saved state is now the bottom of the history
        del self._done[:extra]
        self.dropped += extra
        return extra

    def seal(self) -> None:
        """Stop merging into the top entry (e.g. slider released)."""
        self._sealed = True

    @contextlib.contextmanager
    def macro(self, text: str) -> Iterator[Macro]:
        """Group the pushes inside into one entry, notified once.  An exception undoes them all."""
        m = Macro(text)
        self._macros.append(m)
        try:
            yield m
        except BaseException:
            self._macros.pop()
            m.revert(self.composition)
            raise
        self._macros.pop()
        if m.commands:
            m.commands = list(m.commands)
            if self._macros:
                self._macros[-1].commands.append(m)
            else:
                self._done.append(m)
                dropped = self._trim()
                self._sealed = True
                self._undone.clear()
                self._notify("do", text, dropped)

    # -------------------------------------------------------------- undo/redo
    def can_undo(self) -> bool:
        return bool(self._done) and not self._macros

    def can_redo(self) -> bool:
        return bool(self._undone) and not self._macros

    def undo(self) -> bool:
        if not self.can_undo():
            return False
        cmd = self._done.pop()
        cmd.revert(self.composition)
        self._undone.append(cmd)
        self._sealed = True
        self._notify("undo", cmd.text)
        return True

    def redo(self) -> bool:
        if not self.can_redo():
            return False
        cmd = self._undone.pop()
        cmd.apply(self.composition)
        self._done.append(cmd)
        self._sealed = True
        self._notify("redo", cmd.text)
        return True

    @property
    def undo_text(self) -> str | None:
        return self._done[-1].text if self._done else None

    @property
    def redo_text(self) -> str | None:
        return self._undone[-1].text if self._undone else None

    def __len__(self) -> int:
        return len(self._done)

    # ------------------------------------------------------------------ clean
    def set_clean(self) -> None:
        """Mark the current state as saved."""
        self._clean = self._done[-1] if self._done else None
        self._clean_depth = self.dropped + len(self._done)       # absolute position
        self._sealed = True

    @property
    def is_clean(self) -> bool:
        """At the saved position.  Undone past the oldest kept entry (the saved state was dropped, or
        lies below the dropped entries) is never clean."""
        depth = self.dropped + len(self._done)
        if depth != self._clean_depth:
            return False
        if not self._done:
            return self._clean is None
        return self._done[-1] is self._clean
