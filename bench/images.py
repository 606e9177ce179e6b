"""PNG grids of image batches, written without importing torchvision (its import adds ~1.5 s to every start-up).

The layout and the bytes are those of ``torchvision.utils.save_image`` for the arguments we use (a test compares
them): images left to right in rows of ``columns``, ``padding`` pixels of ``pad_value`` around and between them,
one-channel images shown as grey RGB, a single image written without padding, values in [0, 1] rounded to 8 bits.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image


def image_grid(images: torch.Tensor, columns: int, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """One (C, H, W) image holding the (N, C, H, W) ``images`` in rows of ``columns``."""
    if images.dim() != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[0] == 1:
        return images[0]
    count, channels, height, width = images.shape
    across = min(columns, count)
    down = math.ceil(count / across)
    cell_height, cell_width = height + padding, width + padding
    grid = images.new_full((channels, cell_height * down + padding, cell_width * across + padding), pad_value)
    for index in range(count):
        top = (index // across) * cell_height + padding
        left = (index % across) * cell_width + padding
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def save_grid(images: torch.Tensor, path: Path, columns: int, padding: int = 2, pad_value: float = 0.0) -> None:
    """Write ``image_grid`` of ``images`` (values in [0, 1]) as an 8-bit RGB PNG at ``path``."""
    grid = image_grid(images.detach().cpu(), columns, padding, pad_value)
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


def save_images(out_dir: Path, key: str, truth: torch.Tensor, reconstruction: torch.Tensor, columns: int) -> None:
    """A PNG grid for people (truth above, reconstruction below) and unpadded strips for the report's figures."""
    k = min(columns, truth.shape[0])
    for folder in ("grids", "strips"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    pair = torch.cat([truth[:k], reconstruction[:k]]).cpu()
    save_grid(pair, out_dir / "grids" / f"{key}.png", columns=k, padding=1, pad_value=1.0)
    save_grid(truth[:k], out_dir / "strips" / f"{key}-truth.png", columns=k, padding=0)
    save_grid(reconstruction[:k], out_dir / "strips" / f"{key}-reconstruction.png", columns=k, padding=0)
