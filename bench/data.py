"""Datasets for gia-bench: a small registry of image datasets with the normalisation their models expect.

Every dataset is an :class:`ImageDataset` whose images come out as float32 tensors in [0, 1]; models normalise
with the dataset's ``mean``/``std``. Builders are registered by name with :func:`register_dataset` and loaded with
:func:`load_dataset`. Nothing here touches a global random state: the only randomness (the ``crops`` dataset) comes
from an explicitly seeded ``torch.Generator``.
"""

from __future__ import annotations

import inspect
import math
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from bench.errors import UserError
from methods.registry import Registry

DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"
SAMPLE_DIR = DATASETS_DIR / "sample"

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

CROPS_BASE_SEED = 0
CROPS_SCALE = (0.25, 1.0)
CROPS_RATIO = (3 / 4, 4 / 3)

_SAMPLE_NAME = re.compile(r"^(cifar10|cifar100|imagenet)_(\d+)_(\d+)\.(png|jpg)$")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageSource(Protocol):
    """Indexable images: ``source[i]`` is a float32 (C, H, W) tensor in [0, 1]."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> torch.Tensor: ...

    def take(self, indices: torch.Tensor) -> torch.Tensor: ...


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


class TensorImages:
    """All images in memory as one (N, C, H, W) tensor, uint8 in [0, 255] or float in [0, 1]."""

    def __init__(self, data: torch.Tensor) -> None:
        if data.ndim != 4:
            raise ValueError(f"expected an (N, C, H, W) tensor, got shape {tuple(data.shape)}")
        self.data = data

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return _to_unit_float(self.data[int(index)])

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        return _to_unit_float(self.data[indices])


class FolderImages:
    """Image files decoded on access, resized on the shorter side and centre-cropped to ``resolution``."""

    def __init__(self, paths: Sequence[Path], resolution: int) -> None:
        self.paths = list(paths)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return _to_unit_float(_fit_square(_read_rgb(self.paths[int(index)]), self.resolution))

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        if indices.numel() == 0:
            return torch.empty((0, 3, self.resolution, self.resolution), dtype=torch.float32)
        return torch.stack([self[int(i)] for i in indices.reshape(-1)])


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image dataset; ``images[i]`` is float32 (C, H, W) in [0, 1] and ``labels`` is long (N,)."""

    name: str
    images: ImageSource
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.labels.dtype != torch.long or self.labels.ndim != 1:
            raise ValueError(f"{self.name}: labels must be a 1-D long tensor")
        if len(self.images) != self.labels.shape[0]:
            raise ValueError(f"{self.name}: {len(self.images)} images but {self.labels.shape[0]} labels")
        if len(self.mean) != self.image_shape[0] or len(self.std) != self.image_shape[0]:
            raise ValueError(f"{self.name}: mean/std need one value per channel ({self.image_shape[0]})")
        if self.labels.numel() and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < self.num_classes:
            raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes})")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) float32 in [0, 1] and labels (B,) for the given indices."""
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return self.images.take(indices), self.labels[indices]


# --- registry ---------------------------------------------------------------------------------------------------

DatasetBuilder = Callable[..., ImageDataset]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register ``builder(*, root, resolution, **kwargs) -> ImageDataset`` under ``name``."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(name: str, **kwargs: object) -> ImageDataset:
    """Build the dataset registered as ``name``; ``root`` and ``resolution`` default to the builder's choice."""
    builder = DATASETS.get(name)
    root = kwargs.pop("root", None)
    kwargs["root"] = None if root is None or root == "" else Path(str(root)).expanduser()
    kwargs.setdefault("resolution", None)
    params = inspect.signature(builder).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        allowed = ", ".join(k for k in params if k not in ("root", "resolution"))
        raise UserError(
            f"dataset {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes root, resolution{', ' + allowed if allowed else ''}"
        )
    resolution = kwargs["resolution"]
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
        raise UserError(f"dataset resolution must be a positive integer number of pixels, got {resolution!r}")
    return builder(**kwargs)


# --- image helpers ----------------------------------------------------------------------------------------------


def _read_rgb(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


def _fit_square(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize the shorter side to ``resolution`` (antialiased) and centre-crop to a square."""
    if image.shape[-2:] != (resolution, resolution):
        import torchvision.transforms.v2.functional as TF  # here, not at the top: torchvision adds ~1.5 s to startup

        if min(image.shape[-2:]) != resolution:
            image = TF.resize(image, [resolution], antialias=True)
        image = TF.center_crop(image, [resolution, resolution])
    return image


def _sample_files(subset: str, root: Path | None) -> tuple[list[Path], list[int]]:
    folder = (root if root is not None else SAMPLE_DIR) / subset
    files = sorted(p for p in folder.glob(f"{subset}_*") if _SAMPLE_NAME.match(p.name)) if folder.is_dir() else []
    if not files:
        raise UserError(
            f"embedded sample {folder} is missing or empty; rebuild it with scripts/build_sample.py "
            "(see datasets/README.md)"
        )
    labels = [int(_SAMPLE_NAME.match(p.name).group(3)) for p in files]
    return files, labels


def _in_memory(
    name: str, data: torch.Tensor, labels: Sequence[int], num_classes: int, mean: tuple, std: tuple
) -> ImageDataset:
    return ImageDataset(
        name=name,
        images=TensorImages(data),
        labels=torch.tensor(list(labels), dtype=torch.long),
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        image_shape=tuple(data.shape[1:]),
    )


# --- embedded sample --------------------------------------------------------------------------------------------


def _cifar_sample(
    name: str, subset: str, root: Path | None, resolution: int | None, num_classes: int, mean: tuple, std: tuple
) -> ImageDataset:
    files, labels = _sample_files(subset, root)
    size = resolution or 32
    data = torch.stack([_fit_square(_read_rgb(p), size) for p in files])
    return _in_memory(name, data, labels, num_classes, mean, std)


@register_dataset("cifar10_sample")
def cifar10_sample(*, root: Path | None = None, resolution: int | None = None) -> ImageDataset:
    """The 20 CIFAR-10 test images from foolbox 3.3.4 (8 of the 10 classes occur)."""
    return _cifar_sample("cifar10_sample", "cifar10", root, resolution, 10, CIFAR10_MEAN, CIFAR10_STD)


@register_dataset("cifar100_sample")
def cifar100_sample(*, root: Path | None = None, resolution: int | None = None) -> ImageDataset:
    """The 20 CIFAR-100 images from foolbox 3.3.4 (18 distinct classes)."""
    return _cifar_sample("cifar100_sample", "cifar100", root, resolution, 100, CIFAR100_MEAN, CIFAR100_STD)


@register_dataset("imagenet_sample")
def imagenet_sample(*, root: Path | None = None, resolution: int | None = None) -> ImageDataset:
    """The 20 ImageNet photos from foolbox 3.3.4, resized and centre-cropped to ``resolution`` (default 224)."""
    files, labels = _sample_files("imagenet", root)
    size = resolution or 224
    data = torch.stack([_fit_square(_read_rgb(p), size) for p in files])
    return _in_memory("imagenet_sample", data, labels, 1000, IMAGENET_MEAN, IMAGENET_STD)


def _crop_box(
    height: int, width: int, generator: torch.Generator, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box sampling, but drawing from ``generator`` instead of the global RNG."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    # Same fallback as torchvision: the largest centred box within the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@register_dataset("crops")
def crops(
    *, root: Path | None = None, resolution: int | None = None, crops_per_image: int = 64, crop_seed: int = 0
) -> ImageDataset:
    """Deterministic random-resized crops of the 20 ImageNet sample photos; each crop keeps its photo's label.

    Not independent images: crops of one photo share content. Identical on every load for a given ``crop_seed``.
    """
    if isinstance(crops_per_image, bool) or not isinstance(crops_per_image, int) or crops_per_image < 1:
        raise UserError(f"crops_per_image must be a positive integer, got {crops_per_image!r}")
    if isinstance(crop_seed, bool) or not isinstance(crop_seed, int):
        raise UserError(f"crop_seed must be an integer, got {crop_seed!r}")
    files, photo_labels = _sample_files("imagenet", root)
    size = resolution or 32
    # Downscale each photo once so per-crop resizing is cheap, while keeping every crop larger than the output.
    working = max(128, 4 * size)
    generator = torch.Generator().manual_seed(CROPS_BASE_SEED + crop_seed)
    out = np.empty((len(files) * crops_per_image, size, size, 3), dtype=np.uint8)
    labels: list[int] = []
    for p, (path, label) in enumerate(zip(files, photo_labels, strict=True)):
        with Image.open(path) as image:
            photo = image.convert("RGB")
        width, height = photo.size
        if min(width, height) > working:
            scale = working / min(width, height)
            photo = photo.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
            width, height = photo.size
        for c in range(crops_per_image):
            top, left, h, w = _crop_box(height, width, generator, CROPS_SCALE, CROPS_RATIO)
            # PIL rather than torch: PIL's resampling is always antialiased, single-threaded integer arithmetic,
            # so it stays fast on a busy machine (torch's per-call OpenMP sync does not) and gives the same bytes
            # on every CPU.
            box = (left, top, left + w, top + h)
            out[p * crops_per_image + c] = np.asarray(photo.resize((size, size), Image.Resampling.BILINEAR, box=box))
        labels.extend([label] * crops_per_image)
    data = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return _in_memory("crops", data, labels, 1000, IMAGENET_MEAN, IMAGENET_STD)


# --- full datasets on disk --------------------------------------------------------------------------------------


def _torchvision_cifar(
    name: str,
    title: str,
    folder: str,
    cls: type,
    root: Path | None,
    resolution: int | None,
    split: str,
    download: bool,
    num_classes: int,
    mean: tuple,
    std: tuple,
) -> ImageDataset:
    if split not in ("train", "test"):
        raise UserError(f"{name} split must be 'train' or 'test', got {split!r}")
    root = root if root is not None else DATASETS_DIR
    train = split == "train"
    try:
        dataset = cls(str(root), train=train, download=False)
    except RuntimeError:
        if not download:
            raise UserError(
                f"{title} is not in {root} and download is disabled; put {folder}/ under {root} "
                "or pass dataset.root=PATH"
            ) from None
        previous = socket.getdefaulttimeout()
        # torchvision's urllib download has no timeout of its own; without one an offline machine can hang.
        socket.setdefaulttimeout(15)
        try:
            dataset = cls(str(root), train=train, download=True)
        except Exception as error:
            raise UserError(
                f"{title} is not in {root} and could not be downloaded (offline? {type(error).__name__}); "
                f"put {folder}/ under {root} or pass dataset.root=PATH"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    data = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    if resolution is not None and resolution != data.shape[-1]:
        import torchvision.transforms.v2.functional as TF

        data = TF.resize(data, [resolution, resolution], antialias=True)
    return _in_memory(name, data, dataset.targets, num_classes, mean, std)


@register_dataset("cifar10")
def cifar10(
    *, root: Path | None = None, resolution: int | None = None, split: str = "train", download: bool = True
) -> ImageDataset:
    """torchvision CIFAR-10 under ``root`` (default ``<repo>/datasets``)."""
    from torchvision.datasets import CIFAR10

    return _torchvision_cifar(
        "cifar10",
        "CIFAR-10",
        "cifar-10-batches-py",
        CIFAR10,
        root,
        resolution,
        split,
        download,
        10,
        CIFAR10_MEAN,
        CIFAR10_STD,
    )


@register_dataset("cifar100")
def cifar100(
    *, root: Path | None = None, resolution: int | None = None, split: str = "train", download: bool = True
) -> ImageDataset:
    """torchvision CIFAR-100 under ``root`` (default ``<repo>/datasets``)."""
    from torchvision.datasets import CIFAR100

    return _torchvision_cifar(
        "cifar100",
        "CIFAR-100",
        "cifar-100-python",
        CIFAR100,
        root,
        resolution,
        split,
        download,
        100,
        CIFAR100_MEAN,
        CIFAR100_STD,
    )


@register_dataset("imagefolder")
def imagefolder(
    *, root: Path | None = None, resolution: int | None = None, num_classes: int | None = None
) -> ImageDataset:
    """Images under ``root/<class>/*`` (torchvision ImageFolder layout), loaded lazily; labels follow sorted
    class-folder names, so ImageNet val arranged in synset folders (n01440364, ...) gets ImageNet-1k indices."""
    layout = "root/<class_name>/<image>.jpg with one folder per class"
    if root is None:
        raise UserError(f"dataset 'imagefolder' needs dataset.root=PATH pointing at {layout}")
    if not root.is_dir():
        raise UserError(f"imagefolder root {root} does not exist or is not a directory; expected {layout}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    for index, class_name in enumerate(classes):
        files = sorted(p for p in (root / class_name).rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
        paths.extend(files)
        labels.extend([index] * len(files))
    if not paths:
        raise UserError(f"imagefolder root {root} holds no images in class folders; expected {layout}")
    if num_classes is None:
        num_classes = len(classes)
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < len(classes):
        raise UserError(f"num_classes={num_classes!r} but {root} has {len(classes)} class folders")
    size = resolution or 224
    return ImageDataset(
        name="imagefolder",
        images=FolderImages(paths, size),
        labels=torch.tensor(labels, dtype=torch.long),
        num_classes=num_classes,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        image_shape=(3, size, size),
    )
