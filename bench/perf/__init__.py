"""How fast is the harness? ``python -m bench.perf`` times every registered attack against a hand-written floor.

For each method x model x batch size (``cells``) it measures, on the default data (``crops``, 32x32, K = 1000):

* **ours**: seconds per iteration of the method's own ``reconstruct``, from its trace (what a trial
  records as ``seconds_per_iteration``), and its one-off setup;
* **floor**: the same optimisation as a minimal hand-written PyTorch loop with the identical math and
  random draws, using no ``methods`` code (``floors``, ``floors_batched``; optional per method), so that
  ``(ours - floor) / floor`` is the price of the shared components; a **mirror** floor with the shared
  code's implementation choices splits that into loop machinery and implementation choices;
* **peak memory** of the attack (``measure.PeakMemory``, each cell in a forked child: ``isolate``);
* the **harness's own work per trial** (``harness``) as a share of a quick-profile trial;
* **experiments** on single design choices (``experiments``), and the targets of docs/performance.md
  (``targets``; ``--check`` exits non-zero when one is missed).

Layout: ``measure`` (clock, memory, A/B statistics), ``rounds`` (dataset, round, configured attacks),
``floors``/``floors_batched``, ``cells``, ``harness``, ``experiments``, ``isolate``, ``tables``,
``targets``, ``cli``. See docs/performance.md for the results and what they mean.
"""
