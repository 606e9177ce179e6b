"""Our PNG grids are torchvision's ``save_image``, byte for byte, for every layout the harness writes."""

from __future__ import annotations

import pytest
import torch
from torchvision.utils import save_image

from bench.images import save_grid


@pytest.mark.parametrize("count", [1, 2, 3, 7])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("columns", "padding", "pad_value"), [(3, 1, 1.0), (8, 0, 0.0), (2, 2, 0.5)])
def test_grid_bytes_equal_torchvisions(tmp_path, count, channels, columns, padding, pad_value):
    images = torch.rand(count, channels, 5, 4, generator=torch.Generator().manual_seed(count * 10 + channels))
    images[0, 0, 0, 0] = 1.0  # the rounding edges: 1.0 and 0.0 must map to 255 and 0
    images[-1, 0, -1, -1] = 0.0
    ours, theirs = tmp_path / "ours.png", tmp_path / "theirs.png"
    save_grid(images, ours, columns=columns, padding=padding, pad_value=pad_value)
    save_image(images, theirs, nrow=columns, padding=padding, pad_value=pad_value)
    assert ours.read_bytes() == theirs.read_bytes()


def test_a_single_image_is_not_a_batch(tmp_path):
    with pytest.raises(ValueError, match="N, C, H, W"):
        save_grid(torch.rand(3, 4, 4), tmp_path / "x.png", columns=1)
