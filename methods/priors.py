"""Image priors (regularisers) that methods add to the gradient-matching loss.

All priors take model-space images shaped (B,C,H,W) (or (G,B,C,H,W) for
batched candidates, flattened by the caller) and return a scalar.
"""

from __future__ import annotations

from torch import Tensor, nn


def total_variation(images: Tensor) -> Tensor:
    """Anisotropic TV as mean absolute difference of neighbours (Geiping et al. 2020)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


def l2_norm(images: Tensor) -> Tensor:
    """Mean squared pixel value: keeps images near the data mean (Yin et al. 2021)."""
    return images.pow(2).mean()


class BatchNormStatistics:
    """Matches each BN layer's batch statistics to its running statistics (Yin et al. 2021, eq. 6).

    Forward hooks record, during the same forward pass that produces the dummy
    gradients, the per-channel mean and variance of every BN layer's input. The
    loss is sum_l w_l (||mu_l - running_mu_l||_2 + ||var_l - running_var_l||_2),
    with w_0 = ``first_layer_scale`` and w_l = 1 otherwise. When ``groups`` > 1 the
    batch axis holds ``groups`` candidates of equal size and each is scored on its own.
    """

    def __init__(self, model: nn.Module, first_layer_scale: float = 10.0, groups: int = 1) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError(
                "the BatchNorm-statistics prior needs a model with BatchNorm layers; "
                "choose model=convnet or model=resnet18, or disable the prior"
            )
        self.first_layer_scale = first_layer_scale
        self.groups = groups
        self._losses: list[Tensor] = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        x = x.reshape(self.groups, x.shape[0] // self.groups, x.shape[1], -1).transpose(1, 2).flatten(2)
        mean = x.mean(dim=2)
        var = x.var(dim=2, unbiased=False)
        loss = (mean - module.running_mean).norm(dim=1) + (var - module.running_var).norm(dim=1)
        scale = self.first_layer_scale if not self._losses else 1.0
        self._losses.append(scale * loss.sum())

    def collect(self) -> Tensor:
        """Return the loss of the last forward pass and reset the record."""
        if not self._losses:
            raise RuntimeError("no forward pass recorded since the last collect()")
        total = sum(self._losses[1:], self._losses[0])
        self._losses = []
        return total

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
