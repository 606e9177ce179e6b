"""Model registry, seeded initialisation and checked loading of saved weights (training: ``bench.training``).

Every model is a pure function of its seed: builders construct modules on the meta device (so that
PyTorch's own initialisation never draws from the global RNG) and then initialise every parameter and
buffer explicitly from a ``torch.Generator``. The last module of every model is the classifier, an
``nn.Linear`` with bias, whose weight and bias are the model's last two parameters.
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from bench.errors import UserError
from methods.registry import Registry

ImageShape = tuple[int, int, int]


class ModelBuilder(Protocol):
    def __call__(
        self, *, num_classes: int, image_shape: ImageShape, generator: torch.Generator, **kwargs: Any
    ) -> nn.Module: ...


MODELS: Registry[ModelBuilder] = Registry("model")


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder(*, num_classes, image_shape, generator, **kwargs) -> nn.Module`` under ``name``."""
    return MODELS.register(name)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


def check_image_shape(image_shape: Sequence[int]) -> ImageShape:
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise UserError(f"image_shape must be three positive integers (C, H, W), got {image_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"image_shape must be three positive integers (C, H, W), got {image_shape!r}")
    return shape  # type: ignore[return-value]


def build_model(name: str, *, num_classes: int, image_shape: Sequence[int], seed: int, **kwargs: Any) -> nn.Module:
    """Build registered model ``name`` with parameters drawn from ``torch.Generator().manual_seed(seed)``.

    The global RNG is neither read nor advanced. The model is returned in train mode, on the CPU.
    """
    builder = MODELS.get(name)
    if int(num_classes) < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    shape = check_image_shape(image_shape)
    _check_kwargs(name, builder, kwargs)
    generator = torch.Generator().manual_seed(int(seed))
    # Safety net for builders registered elsewhere that draw from the global RNG anyway: they still
    # become a function of the seed, and the caller's RNG stream is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = builder(num_classes=int(num_classes), image_shape=shape, generator=generator, **kwargs)
    classifier(model)
    _check_forward(name, model, shape)
    return model


def _check_forward(name: str, model: nn.Module, shape: ImageShape) -> None:
    """A model that cannot take these images (e.g. pooled below one pixel) is a configuration error."""
    probe = torch.zeros(2, *shape)
    training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()(probe)
    except RuntimeError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"model {name!r} cannot take {shape[0]}x{shape[1]}x{shape[2]} images ({first}); "
            "use a larger dataset.resolution or another model"
        ) from None
    finally:
        model.train(training)


def _check_kwargs(name: str, builder: ModelBuilder, kwargs: Mapping[str, Any]) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in ("num_classes", "image_shape", "generator")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise UserError(f"model {name!r} does not take option(s) {', '.join(unknown)}; it takes: {takes}")


def classifier(model: nn.Module) -> nn.Linear:
    """The model's final ``nn.Linear`` (weight (K, F), bias (K,)), checked to hold its last two parameters."""
    last = list(model.modules())[-1]
    if not isinstance(last, nn.Linear) or last.bias is None:
        raise TypeError(f"the last module of {type(model).__name__} must be an nn.Linear with bias, got {last}")
    params = list(model.parameters())
    if len(params) < 2 or params[-2] is not last.weight or params[-1] is not last.bias:
        raise TypeError(f"the classifier of {type(model).__name__} must hold the model's last two parameters")
    return last


# ----------------------------------------------------------------------------------------------------
# Initialisation


InitFn = Callable[[Tensor, "Tensor | None", torch.Generator], None]


def _on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    # Constructing on the meta device skips PyTorch's default init (global RNG, and slow for ResNet-50);
    # every tensor is then written by _init_modules.
    with torch.device("meta"):
        model = factory()
    # torch.empty, not Module.to_empty: empty_like of a meta tensor goes through torch._refs, whose first call
    # imports sympy (about 1 s of CPU in every process that builds a model)
    return model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu"))


def _fan_in(weight: Tensor) -> int:
    return weight.shape[1] * math.prod(weight.shape[2:])


def _pytorch_default(weight: Tensor, bias: Tensor | None, generator: torch.Generator) -> None:
    """PyTorch's own Linear/Conv default (kaiming uniform, a=sqrt(5); bias +-1/sqrt(fan_in)), seeded."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        bound = 1 / math.sqrt(_fan_in(weight)) if _fan_in(weight) > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound, generator=generator)


def _kaiming_normal_fan_out(weight: Tensor, bias: Tensor | None, generator: torch.Generator) -> None:
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu", generator=generator)
    if bias is not None:
        nn.init.zeros_(bias)


def _uniform_half(weight: Tensor, bias: Tensor | None, generator: torch.Generator) -> None:
    nn.init.uniform_(weight, -0.5, 0.5, generator=generator)
    if bias is not None:
        nn.init.uniform_(bias, -0.5, 0.5, generator=generator)


def _init_modules(model: nn.Module, generator: torch.Generator, *, conv: InitFn, linear: InitFn) -> None:
    """Write every parameter and buffer of ``model``, in module order; unknown stateful modules are an error."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            conv(module.weight, module.bias, generator)
        elif isinstance(module, nn.Linear):
            linear(module.weight, module.bias, generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            raise TypeError(f"no seeded initialisation for {type(module).__name__}")


# ----------------------------------------------------------------------------------------------------
# Models


def _lenet_features(size: int) -> int:
    for stride in (2, 2, 1):
        size = (size + 2 * 2 - 5) // stride + 1
    return size


@register_model("lenet")
def _lenet(*, num_classes: int, image_shape: ImageShape, generator: torch.Generator) -> nn.Module:
    """DLG's LeNet (Zhu et al. 2019): three sigmoid convs and a linear layer, all uniform in [-0.5, 0.5]."""
    c, h, w = image_shape
    # H//4 in the DLG code is exact only for sizes divisible by 4; the true conv output size is ceil(H/4).
    features = 12 * _lenet_features(h) * _lenet_features(w)
    model = _on_meta(
        lambda: nn.Sequential(
            nn.Conv2d(c, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1),
            nn.Sigmoid(),
            nn.Flatten(),
            nn.Linear(features, num_classes),
        )
    )
    _init_modules(model, generator, conv=_uniform_half, linear=_uniform_half)
    return model


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


@register_model("convnet")
def _convnet(*, num_classes: int, image_shape: ImageShape, generator: torch.Generator, width: int = 16) -> nn.Module:
    """Conv-BN-ReLU network of configurable width with two max-pools and a 4x4 adaptive average pool."""
    c, h, w = image_shape
    width = int(width)
    if width < 1:
        raise UserError(f"convnet width must be at least 1, got {width}")
    if h < 4 or w < 4:
        raise UserError(f"convnet needs images of at least 4x4 pixels, got {h}x{w}")
    model = _on_meta(
        lambda: nn.Sequential(
            *_conv_bn_relu(c, width),
            *_conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 4 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(4 * width * 16, num_classes),
        )
    )
    _init_modules(model, generator, conv=_pytorch_default, linear=_pytorch_default)
    return model


@register_model("resnet18")
def _resnet18(*, num_classes: int, image_shape: ImageShape, generator: torch.Generator) -> nn.Module:
    """torchvision ResNet-18 with the CIFAR stem (3x3 stride-1 conv1, no max-pool)."""
    c = image_shape[0]

    def factory() -> nn.Module:
        import torchvision  # here, not at the top: torchvision adds ~1.5 s to every start-up

        model = torchvision.models.resnet18(num_classes=num_classes)
        model.conv1 = nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return model

    model = _on_meta(factory)
    _init_modules(model, generator, conv=_kaiming_normal_fan_out, linear=_pytorch_default)
    return model


def _resnet50_pretrained_urls() -> list[str]:
    import torchvision

    weights = torchvision.models.ResNet50_Weights
    return [weights.IMAGENET1K_V1.url, weights.IMAGENET1K_V2.url]


def _hub_checkpoint(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


@register_model("resnet50")
def _resnet50(
    *, num_classes: int, image_shape: ImageShape, generator: torch.Generator, pretrained: bool = False
) -> nn.Module:
    """torchvision ResNet-50; ``pretrained`` loads ImageNet weights only if they are already in the hub cache."""
    c = image_shape[0]
    if pretrained and (num_classes != 1000 or c != 3):
        raise UserError(
            f"resnet50 pretrained weights need num_classes=1000 and 3 channels, got {num_classes} and {c}; "
            "set pretrained=false"
        )

    def factory() -> nn.Module:
        import torchvision

        model = torchvision.models.resnet50(num_classes=num_classes)
        if c != 3:
            model.conv1 = nn.Conv2d(c, 64, 7, stride=2, padding=3, bias=False)
        return model

    model = _on_meta(factory)
    _init_modules(model, generator, conv=_kaiming_normal_fan_out, linear=_pytorch_default)
    if pretrained:
        paths = [_hub_checkpoint(url) for url in _resnet50_pretrained_urls()]
        cached = next((p for p in paths if p.is_file()), None)
        if cached is None:
            warnings.warn(
                f"ResNet-50 pretrained weights are not cached at {paths[0]}; using an untrained model. "
                f"Put {paths[0].name} there to use them.",
                stacklevel=3,
            )
        else:
            load_state_dict_checked(model, cached, "resnet50", remedy=f"replace it with torchvision's {cached.name}")
    return model


# ----------------------------------------------------------------------------------------------------
# Loading saved weights


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _load_failure_reason(error: Exception) -> str:
    # torch's weights_only refusal is a multi-paragraph essay; its one useful sentence follows this marker.
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, flags=re.DOTALL)
    if found:
        return f"not loadable with weights_only: {found.group(1)}"
    return f"{type(error).__name__}: {text}"


def load_state_dict_checked(
    model: nn.Module, path: Path | str, name: str, *, remedy: str = "delete it to retrain"
) -> nn.Module:
    """Load the state dict at ``path`` (``weights_only=True``) into ``model``; anything wrong is a ``UserError``."""
    path = Path(path)

    def refuse(reason: str) -> UserError:
        return UserError(
            f"model checkpoint {path} is not a valid state dict for {name!r} ({_one_line(reason)}); {remedy}"
        )

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file gets the same one-line refusal
        raise refuse(_load_failure_reason(e)) from e
    if not isinstance(state, Mapping):
        raise refuse(f"it holds a {type(state).__name__}, not a mapping")
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise refuse(f"non-tensor entries: {', '.join(map(str, not_tensors[:3]))}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)):
        if keys:
            problems.append(f"{label}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}")
    if problems:
        raise refuse("; ".join(problems))
    try:
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise refuse(f"{type(e).__name__}: {e}") from e
    return model
