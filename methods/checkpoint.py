"""Checkpoints inside a trial, so that a killed trial continues where it stopped instead of at iteration 0.

The harness installs a ``Checkpointer`` around an attack (``checkpointing``, a ContextVar like
``optimise.trace_clock``, so that methods never import the harness). Every call of the shared loop
(``methods.optimise.optimise``) within the attack is numbered in the order it begins. A checkpoint holds

* each call that had finished: its final variables, its trace, the generator's state after it and the state
  of its stateful objective parts;
* the call that was running: its iteration, variables, optimiser and scheduler state, generator state(s),
  trace so far, the seconds spent so far and the state of its stateful objective parts;
* whatever the harness keeps alongside (``extra``: the scored progress points).

On resume the attack runs again from the start with a fresh generator: a call that had finished returns at once
with its stored result (variables set, generator state restored), the running call continues from its saved
iteration, and later calls run as usual. Work outside the loop (label recovery, initial images, choosing the
best restart, a method's final scoring) runs again and must be a deterministic function of the generator and
of the calls' results; objective parts that keep state across iterations declare it as ``Stateful`` and are
passed to ``optimise(state=...)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

FORMAT = 1


@runtime_checkable
class Stateful(Protocol):
    """An objective part whose state changes across iterations and must be saved with a checkpoint."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's call does not fit the call this run makes (the code or its settings changed)."""


class StackedHistory(list):
    """A list of same-shaped tensors, one per iteration, saved with checkpoints as one stacked tensor."""

    def state_dict(self) -> dict[str, Any]:
        return {"stacked": torch.stack(list(self)) if self else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clear()
        if state["stacked"] is not None:
            self.extend(state["stacked"].unbind(0))


def _signature(variables: Sequence[Tensor], config: Any) -> dict[str, Any]:
    return {"shapes": [list(v.shape) for v in variables], "config": repr(config)}


def _trace_rows(trace: Sequence[Any]) -> list[list[float]]:
    return [[p.iteration, p.seconds, p.objective, getattr(p, "evaluations", 0)] for p in trace]


def _generator_state(generator: torch.Generator | None) -> Tensor | None:
    return None if generator is None else generator.get_state()


def _set_generator_state(generator: torch.Generator | None, state: Tensor | None) -> None:
    if generator is not None and state is not None:
        generator.set_state(state.cpu())


class Checkpointer:
    """Counts the loop's calls within one trial, decides when to write and restores what a checkpoint holds.

    ``write`` receives the whole checkpoint as plain containers and tensors (the harness writes it atomically);
    a write is due every ``every`` iterations (counted over all calls) or ``minutes`` minutes (``now``'s clock),
    whichever comes first; 0 switches a trigger off. ``restored`` is a checkpoint read back, ``extra`` the
    harness's own state saved alongside.
    """

    def __init__(
        self,
        write: Callable[[dict[str, Any]], None],
        *,
        every: int = 0,
        minutes: float = 0.0,
        restored: Mapping[str, Any] | None = None,
        extra: Stateful | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if restored is not None and restored.get("format") != FORMAT:
            raise CheckpointMismatchError(f"checkpoint format {restored.get('format')!r}, expected {FORMAT}")
        self._write = write
        self.every = every
        self.minutes = minutes
        self.extra = extra
        self.now = now
        self.completed: list[dict[str, Any]] = list(restored["completed"]) if restored else []
        self.running: dict[str, Any] | None = restored["running"] if restored else None
        self.calls = 0
        self.since_write = 0
        self.last_write = now()
        self.writes = 0
        self.write_seconds = 0.0
        if restored is not None and extra is not None and restored.get("extra") is not None:
            extra.load_state_dict(restored["extra"])

    def begin(self, variables: Sequence[Tensor], config: Any) -> CallCheckpoint:
        """Number the next call of the loop and hand it what the checkpoint holds for it."""
        index = self.calls
        self.calls += 1
        signature = _signature(variables, config)
        finished = self.completed[index] if index < len(self.completed) else None
        running = self.running if self.running is not None and self.running["call"] == index else None
        stored = finished or running
        if stored is not None and stored["signature"] != signature:
            raise CheckpointMismatchError(
                f"call {index} of the checkpoint was {stored['signature']}, this run's is {signature}"
            )
        return CallCheckpoint(self, index, signature, finished, running)

    def due(self) -> bool:
        """Count one iteration; whether a checkpoint should be written now."""
        self.since_write += 1
        return self.overdue()

    def overdue(self) -> bool:
        if self.every and self.since_write >= self.every:
            return True
        return bool(self.minutes) and self.now() - self.last_write >= 60 * self.minutes

    def write(self, running: dict[str, Any] | None) -> None:
        started = time.perf_counter()
        self._write(
            {
                "format": FORMAT,
                "completed": self.completed,
                "running": running,
                "extra": self.extra.state_dict() if self.extra is not None else None,
            }
        )
        self.writes += 1
        self.write_seconds += time.perf_counter() - started
        self.since_write = 0
        self.last_write = self.now()


class CallCheckpoint:
    """One call of the loop as the checkpoint sees it: what to restore, and how to save it."""

    def __init__(
        self,
        owner: Checkpointer,
        index: int,
        signature: dict[str, Any],
        finished: dict[str, Any] | None,
        running: dict[str, Any] | None,
    ) -> None:
        self.owner = owner
        self.index = index
        self.signature = signature
        self.finished = finished
        self.running = running

    def restore_finished(
        self, variables: Sequence[Tensor], generator: torch.Generator | None, state: Sequence[Stateful]
    ) -> list[list[float]]:
        """Set the variables, generator and state to where the finished call left them; return its trace rows."""
        stored = self.finished
        assert stored is not None
        with torch.no_grad():
            for variable, value in zip(variables, stored["variables"], strict=True):
                variable.copy_(value)
        _set_generator_state(generator, stored["generator"])
        for part, part_state in zip(state, stored["state"], strict=True):
            part.load_state_dict(part_state)
        return stored["trace"]

    def restore_running(
        self,
        variables: Sequence[Tensor],
        optimiser: torch.optim.Optimizer,
        scheduler: Any,
        generators: tuple[torch.Generator | None, torch.Generator | None],
        state: Sequence[Stateful],
    ) -> tuple[int, list[list[float]], float]:
        """Restore the interrupted call; return its iteration, trace rows and seconds so far."""
        stored = self.running
        assert stored is not None
        with torch.no_grad():
            for variable, value in zip(variables, stored["variables"], strict=True):
                variable.copy_(value)
        optimiser.load_state_dict(stored["optimiser"])
        scheduler.load_state_dict(stored["scheduler"])
        for generator, generator_state in zip(generators, stored["generators"], strict=True):
            _set_generator_state(generator, generator_state)
        for part, part_state in zip(state, stored["state"], strict=True):
            part.load_state_dict(part_state)
        return stored["iteration"], stored["trace"], stored["seconds"]

    def due(self) -> bool:
        return self.owner.due()

    def save(
        self,
        iteration: int,
        variables: Sequence[Tensor],
        optimiser: torch.optim.Optimizer,
        scheduler: Any,
        generators: tuple[torch.Generator | None, torch.Generator | None],
        trace: Sequence[Any],
        seconds: float,
        state: Sequence[Stateful],
    ) -> None:
        """Write a checkpoint with this call running at ``iteration`` (after that many iterations)."""
        self.owner.write(
            {
                "call": self.index,
                "signature": self.signature,
                "iteration": iteration,
                "variables": [v.detach() for v in variables],
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generators": [_generator_state(g) for g in generators],
                "trace": _trace_rows(trace),
                "seconds": seconds,
                "state": [part.state_dict() for part in state],
            }
        )

    def finish(
        self,
        variables: Sequence[Tensor],
        trace: Sequence[Any],
        generator: torch.Generator | None,
        state: Sequence[Stateful],
    ) -> None:
        """Keep the finished call's result for later checkpoints, and write one if it is due."""
        self.owner.completed.append(
            {
                "signature": self.signature,
                # kept until the trial ends: in host memory, not the device's
                "variables": [v.detach().to("cpu", copy=True) for v in variables],
                "trace": _trace_rows(trace),
                "generator": _generator_state(generator),
                "state": [part.state_dict() for part in state],
            }
        )
        if self.owner.since_write and self.owner.overdue():
            self.owner.write(None)


_active: ContextVar[Checkpointer | None] = ContextVar("checkpointer", default=None)


@contextmanager
def checkpointing(checkpointer: Checkpointer | None) -> Iterator[None]:
    """Inside this block every call of the loop is checkpointed by ``checkpointer`` (None: not at all)."""
    token = _active.set(checkpointer)
    try:
        yield
    finally:
        _active.reset(token)


def active_checkpointer() -> Checkpointer | None:
    return _active.get()
