"""Hydra's basic sweeper without its second composition of every job before the first one runs.

``BasicSweeper`` composes the config of every combination of a sweep once to validate it, and the launcher composes
it again to run it. ``python -m bench.run`` has already composed and validated every value of every swept key
before Hydra starts (``bench.run.check_command_line``: the sum of the value counts, not their product), so the
upfront pass only doubles the composition cost and delays a large sweep's first job (measured in docs/scaling.md,
"Composing a sweep"). Hydra requires sweeper plugins to live in the ``hydra_plugins`` namespace;
``conf/config.yaml`` selects this one.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class CheckedSweeper(BasicSweeper):
    """The basic sweeper, trusting ``bench.run``'s check of the command line instead of composing every job twice."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """A job whose overrides clash anyway fails when the launcher composes it, with the records before it kept."""
