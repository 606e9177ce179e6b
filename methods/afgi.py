"""AFGI: Liu, Wang, Zhou, Yuan, Sheng and Lu, "AFGI: Towards Accurate and Fast-convergent Gradient Inversion
Attack in Federated Learning", arXiv 2403.08383, 2024 (earlier versions: RAF-GI / EGI, with ACB and TEA).

Only the abstract is public. What it states, and what we built (docs/methods/afgi.md has the measurements):

* objective ``1 - cos(grad', grad) + R_reg`` over all layers: ``matching.invert`` with the
  cosine loss, Adam on signed gradients with a cosine-decayed learning rate, images
  clamped to the valid box after every step;
* LRB, the Label Recovery Block, recovers the label multiset, duplicates included, from the
  exposed gradients: label strategy ``lrb`` (``methods/lrb.py``, analytic, our design);
* VME regularisation: total variation + channel-mean discrepancy + edge discrepancy
  "between values from exposed gradients and reconstructed images" (``methods/vme.py``).
  Our targets: a first stage of plain cosine matching (with V only) runs for
  ``target_fraction`` of the budget; the per-image channel means and the Sobel edge map
  (after a Gaussian blur of ``edge_blur`` pixels) of its result become the M and E
  targets of the second stage, which continues from that result with the full VME.

Ablation switches: ``lrb`` (off: ``label_strategy`` from ``methods.labels``), ``use_tv``,
``use_mean``, ``use_edge``.

FedAvg: on a weight difference the cosine term compares it with the local steps replayed on the dummy
images (``methods.fedavg``, as Inverting Gradients' multi-step variant); LRB reads the difference by the
label strategies' rule (docs/fedavg.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from methods.base import Observation, ProgressCallback, Reconstruction, register_method
from methods.fedavg import simulated_update
from methods.labels import labels_for
from methods.lrb import lrb_labels  # noqa: F401  (registers the ``lrb`` label strategy)
from methods.matching import MatchingSpec, initial_images, invert
from methods.optimise import OptimiserConfig, ProgressHooks
from methods.options import option
from methods.vme import VME, VMETargets


class StagedVME:
    """The VME prior in two stages over each run of ``iterations`` objective evaluations.

    Evaluations ``[0, switch)`` see V only; at evaluation ``switch`` the M and E targets
    are read off the images being optimised (de-normalised to [0,1]) and the full VME
    applies from then on. The count wraps every ``iterations`` evaluations, so each
    restart of ``matching.invert`` starts again from stage one.
    """

    def __init__(self, vme: VME, *, iterations: int, switch: int, edge_blur: float, refresh: int = 0) -> None:
        self.full = vme
        self.first = VME(
            mean=tuple(vme.mean.flatten().tolist()), std=tuple(vme.std.flatten().tolist()), tv_weight=vme.tv_weight
        )
        self.iterations = iterations
        self.switch = switch
        self.edge_blur = edge_blur
        self.refresh = refresh
        self.calls = 0
        self.active = self.first

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the evaluation count, the stage and the M and E targets read so far."""
        targets = self.full.targets
        return {
            "calls": self.calls,
            "full": self.active is self.full,
            "channel_means": targets.channel_means,
            "edges": targets.edges,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = state["calls"]
        self.full.targets = VMETargets(state["channel_means"], state["edges"])
        self.active = self.full if state["full"] else self.first

    def set_targets(self, images_model: Tensor) -> None:
        """Read the M and E targets off ``images_model`` and switch to the full VME."""
        self.full.targets = VMETargets.from_images(self.full.unit(images_model.detach()), blur=self.edge_blur)
        self.active = self.full

    def __call__(self, images_model: Tensor) -> Tensor:
        step = self.calls % self.iterations
        self.calls += 1
        if step == 0:
            self.active = self.first
        if step == self.switch or (self.refresh and step > self.switch and (step - self.switch) % self.refresh == 0):
            self.set_targets(images_model)
        return self.active(images_model)


@register_method()
@dataclass
class AFGI:
    name: ClassVar[str] = "afgi"
    paper: ClassVar[str] = (
        "Liu, Wang, Zhou, Yuan, Sheng, Lu. AFGI: Towards Accurate and Fast-convergent Gradient Inversion "
        "Attack in Federated Learning. arXiv 2403.08383, 2024"
    )

    accepts_weight_differences: ClassVar[bool] = True  # replays the local steps (methods.fedavg)
    # the paper gives no budget: 3600 is 15% of Inverting Gradients' 24,000 (its claimed 85% saving)
    profiles: ClassVar[dict[str, dict]] = {"quick": {"iterations": 240}, "paper": {"iterations": 3600}}

    iterations: int = option(3600, minimum=1, help="Adam steps, both stages together")
    lr: float = option(0.3, above=0, help="Adam learning rate")
    signed: bool = option(True, help="Adam on signed gradients")
    schedule: Literal["constant", "step", "cosine"] = option("cosine", help="learning-rate schedule")
    warmup: int = option(0, minimum=0, help="linear warm-up iterations")
    init: Literal["randn", "rand", "mean"] = option(
        "mean", help="mean: the data mean (0 in model space) plus N(0, 0.1^2) noise"
    )
    restarts: int = option(1, minimum=1, help="runs from fresh starts; the lowest final objective is kept")
    use_tv: bool = option(True, help="VME switch: total variation (ablation: sweep=afgi_ablation)")
    use_mean: bool = option(True, help="VME switch: three-channel-mean discrepancy")
    use_edge: bool = option(True, help="VME switch: edge discrepancy")
    tv_weight: float = option(0.1, minimum=0, help="V: total variation of the model-space images")
    mean_weight: float = option(10.0, minimum=0, help="M: squared error of per-image channel means, [0,1] units")
    edge_weight: float = option(10.0, minimum=0, help="E: squared error of Sobel edge maps, [0,1] units")
    target_fraction: float = option(
        0.3, minimum=0, below=1, help="stage one (V only), whose result gives the M and E targets"
    )
    edge_blur: float = option(1.0, minimum=0, help="Gaussian blur (pixels) of stage one's result before its edges")
    refresh_fraction: float = option(
        0.0, minimum=0, below=1, help="re-read the targets every this fraction of the budget (0: never)"
    )
    lrb: bool = option(True, help="LRB label recovery; false: label_strategy below")
    label_strategy: str = option(
        "yin", help="labels when lrb is off: GradInversion's restoration (the duplicate-blind baseline LRB replaces)"
    )

    def labels(self, observation: Observation) -> Tensor:
        return labels_for(observation, "lrb" if self.lrb else self.label_strategy)

    def prior(self, observation: Observation) -> StagedVME | None:
        """The regulariser of one run, or None when every VME term is switched off."""
        weights = (
            self.tv_weight if self.use_tv else 0.0,
            self.mean_weight if self.use_mean else 0.0,
            self.edge_weight if self.use_edge else 0.0,
        )
        if not any(weights):
            return None
        vme = VME(
            mean=observation.mean,
            std=observation.std,
            tv_weight=weights[0],
            mean_weight=weights[1],
            edge_weight=weights[2],
        )
        switch = int(round(self.target_fraction * self.iterations))
        refresh = max(1, int(round(self.refresh_fraction * self.iterations))) if self.refresh_fraction > 0 else 0
        return StagedVME(vme, iterations=self.iterations, switch=switch, edge_blur=self.edge_blur, refresh=refresh)

    def budget_iterations(self, evaluations: int) -> int:
        """Every restart gets an equal share; within one, the stages split it as they split ``iterations``."""
        return evaluations // self.restarts

    def reconstruct(
        self,
        observation: Observation,
        *,
        generator: torch.Generator,
        callback: ProgressCallback | None = None,
        callback_every: int = 0,
        progress: bool = False,
    ) -> Reconstruction:
        labels = self.labels(observation)
        spec = MatchingSpec(
            loss="cosine",
            optimiser=OptimiserConfig(
                optimiser="adam",
                lr=self.lr,
                iterations=self.iterations,
                signed=self.signed,
                schedule=self.schedule,
                warmup=self.warmup,
            ),
            init="rand" if self.init == "rand" else "randn",
            clamp=True,
            restarts=self.restarts,
            prior=self.prior(observation),
            update=simulated_update(observation),
        )
        start = None
        if self.init == "mean":  # the data mean (zero in model space) plus a little noise to break symmetry
            start = 0.1 * initial_images(observation, "randn", generator)
        result = invert(
            observation,
            labels,
            spec,
            generator=generator,
            hooks=ProgressHooks(callback, callback_every, progress, self.name),
            start=start,
        )
        return Reconstruction(
            images=observation.denormalise(result.images_model).clamp(0, 1),
            labels=labels,
            trace=result.trace,
            extras={"objective": result.objective},
        )
