import shutil
import time
from pathlib import Path

import pytest
import torch

from bench.data import SAMPLE_DIR, ImageDataset, list_datasets, load_dataset, register_dataset
from bench.errors import UserError
from methods.registry import UnknownNameError


def check_images(dataset: ImageDataset) -> torch.Tensor:
    images, labels = dataset.batch(torch.arange(len(dataset)))
    assert images.dtype == torch.float32
    assert images.shape == (len(dataset), *dataset.image_shape)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert float(images.max()) > 0.5
    assert torch.equal(labels, dataset.labels)
    assert torch.equal(dataset.images[3], images[3])
    return images


@pytest.mark.parametrize(
    ("name", "shape", "num_classes", "distinct", "mean0"),
    [
        ("cifar10_sample", (3, 32, 32), 10, 8, 0.4914),
        ("cifar100_sample", (3, 32, 32), 100, 18, 0.5071),
        ("imagenet_sample", (3, 224, 224), 1000, 19, 0.485),
    ],
)
def test_embedded_samples_load(name, shape, num_classes, distinct, mean0):
    dataset = load_dataset(name)
    assert len(dataset) == 20 and dataset.image_shape == shape
    assert dataset.num_classes == num_classes and dataset.mean[0] == mean0
    assert dataset.labels.dtype == torch.long and dataset.labels.unique().numel() == distinct
    check_images(dataset)


def test_sample_labels_come_from_file_names():
    cifar10 = load_dataset("cifar10_sample")
    files = sorted((SAMPLE_DIR / "cifar10").glob("*.png"))
    assert files[3].name == "cifar10_03_0.png" and int(cifar10.labels[3]) == 0
    assert sorted(set(cifar10.labels.tolist())) == [0, 1, 3, 5, 6, 7, 8, 9]
    imagenet = load_dataset("imagenet_sample", resolution=16)
    assert imagenet.image_shape == (3, 16, 16)
    assert imagenet.labels.tolist().count(609) == 2


def test_crops_are_deterministic():
    first, second = load_dataset("crops"), load_dataset("crops")
    assert len(first) == 1280 and first.image_shape == (3, 32, 32) and first.num_classes == 1000
    assert first.labels.unique().numel() == 19
    images = check_images(first)
    assert torch.equal(images, second.batch(torch.arange(1280))[0])
    assert torch.equal(first.labels, second.labels)
    assert not torch.equal(images[:64], images[64:128])
    other = load_dataset("crops", crop_seed=1, crops_per_image=2)
    assert len(other) == 40 and not torch.equal(other.images[0], images[0])


def test_unknown_dataset_lists_names():
    with pytest.raises(UnknownNameError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert "unknown dataset 'mnist'" in message
    for name in ("cifar10", "cifar10_sample", "crops", "imagefolder", "imagenet_sample"):
        assert name in message
    assert list_datasets() == sorted(list_datasets())


def test_unknown_option_and_duplicate_registration():
    with pytest.raises(UserError, match="does not take option"):
        load_dataset("cifar10_sample", crops_per_image=3)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("crops")(lambda **_: None)


def test_cifar10_missing_offline_is_a_user_error(tmp_path):
    started = time.perf_counter()
    with pytest.raises(UserError, match="cifar-10-batches-py") as info:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    assert time.perf_counter() - started < 5


def test_missing_sample_says_how_to_rebuild(tmp_path):
    with pytest.raises(UserError, match="scripts/build_sample.py"):
        load_dataset("cifar10_sample", root=tmp_path)


def make_folder(root: Path) -> Path:
    for path in sorted((SAMPLE_DIR / "cifar10").glob("*.png"))[:6]:
        label = path.stem.rsplit("_", 1)[1]
        (root / f"class_{label}").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / f"class_{label}" / path.name)
    return root


def test_imagefolder_loads_lazily(tmp_path):
    root = make_folder(tmp_path / "tree")
    dataset = load_dataset("imagefolder", root=root, resolution=24)
    # First six files are labelled 3, 8, 8, 0, 6, 6 -> folders class_0, class_3, class_6, class_8.
    assert len(dataset) == 6 and dataset.num_classes == 4 and dataset.image_shape == (3, 24, 24)
    assert dataset.labels.tolist() == [0, 1, 2, 2, 3, 3]
    check_images(dataset)
    assert load_dataset("imagefolder", root=str(root), num_classes=10).num_classes == 10


def test_imagefolder_bad_root(tmp_path):
    with pytest.raises(UserError, match="does not exist") as info:
        load_dataset("imagefolder", root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    with pytest.raises(UserError, match="needs dataset.root"):
        load_dataset("imagefolder")
    with pytest.raises(UserError, match="no images"):
        load_dataset("imagefolder", root=tmp_path)
