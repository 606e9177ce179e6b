"""iDLG: Zhao, Mopuri and Bilen, "iDLG: Improved Deep Leakage from Gradients", arXiv 2001.02610, 2020.

What makes iDLG itself: the label is read off the last layer's gradient
(the row of the weight gradient with a negative sum), after which DLG's
optimisation runs over the images only. Paper defaults: L-BFGS lr 1,
300 iterations, euclidean distance, batch size 1.

For B > 1 the paper's rule does not apply; ``label_strategy`` then names
another strategy from ``methods.labels`` (default ``count``), a documented
extension of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from methods.base import Observation, ProgressCallback, Reconstruction, register_method
from methods.labels import labels_for
from methods.matching import MatchingSpec, invert
from methods.optimise import OptimiserConfig, ProgressHooks
from methods.options import option


@register_method()
@dataclass
class IDLG:
    name: ClassVar[str] = "idlg"
    paper: ClassVar[str] = "Zhao, Mopuri, Bilen. iDLG: Improved Deep Leakage from Gradients. arXiv 2001.02610, 2020"

    profiles: ClassVar[dict[str, dict]] = {"quick": {"iterations": 12}, "paper": {"iterations": 300}}

    iterations: int = option(300, minimum=1, help="L-BFGS steps")
    lr: float = option(1.0, above=0, help="L-BFGS learning rate")
    lbfgs_max_iter: int = option(20, minimum=1, help="function evaluations per L-BFGS step")
    # not the paper's code (a fixed step): that step can throw the image far out, where LeNet's sigmoids saturate,
    # the gradient vanishes and L-BFGS stops for good (docs/fidelity.md); none restores the paper's rule
    line_search: Literal["none", "strong_wolfe"] = option(
        "strong_wolfe", help="L-BFGS step size: none (a fixed step lr, as the paper's code) or a strong Wolfe search"
    )
    label_strategy: str = option("idlg", help="labels at B = 1 when the threat model does not give them")
    batch_label_strategy: str = option("count", help="labels at B > 1 (iDLG's rule needs B = 1)")

    def budget_iterations(self, evaluations: int) -> int:
        """L-BFGS steps of up to ``lbfgs_max_iter`` evaluations each; the loop shortens the last to what is left."""
        return -(-evaluations // self.lbfgs_max_iter)

    def reconstruct(
        self,
        observation: Observation,
        *,
        generator: torch.Generator,
        callback: ProgressCallback | None = None,
        callback_every: int = 0,
        progress: bool = False,
    ) -> Reconstruction:
        labels = labels_for(observation, self.label_strategy, self.batch_label_strategy)
        spec = MatchingSpec(
            loss="euclidean",
            optimiser=OptimiserConfig(
                optimiser="lbfgs",
                lr=self.lr,
                iterations=self.iterations,
                lbfgs_max_iter=self.lbfgs_max_iter,
                lbfgs_line_search=None if self.line_search == "none" else self.line_search,
            ),
        )
        result = invert(
            observation,
            labels,
            spec,
            generator=generator,
            hooks=ProgressHooks(callback, callback_every, progress, self.name),
        )
        return Reconstruction(
            images=observation.denormalise(result.images_model).clamp(0, 1), labels=labels, trace=result.trace
        )
