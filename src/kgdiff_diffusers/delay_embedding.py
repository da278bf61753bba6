"""Delay embedding of a daily series into a square image and back (paper eq. 18)."""

from __future__ import annotations

import math

import torch


class DelayEmbedding:
    r"""Maps series ``(B, D, T)`` to images ``(B, D, S, S)`` of sliding windows and back (eq. 18).

    Column ``j`` of the image is the window ``x[s_j : s_j + V]`` with ``s_j = j U`` for
    ``j < W - 1`` and, for the last column, ``s_{W-1} = T - V``: the window that ends at ``x_T``, so
    every column is full. ``W = ceil((T - V) / U) + 1`` columns; the ``V x W`` block is zero-padded to
    the square side ``S = max(V, W)`` (``S = V`` for the paper's settings). :meth:`to_series` averages all
    copies of each value; for an image made by :meth:`to_image` every copy is identical and it returns
    the input exactly (the mean is taken as ``first copy + mean(copy - first copy)``, which is exact when
    the copies agree).

    Paper settings: ``(T, V, U) = (48, 16, 3)`` and ``(288, 32, 9)``.

    Args:
        seq_len: ``T``, steps per sample (day).
        window: ``V``, window length (image rows).
        stride: ``U``, step between consecutive windows.
    """

    def __init__(self, seq_len: int, window: int, stride: int):
        if min(seq_len, window, stride) < 1:
            raise ValueError(f"seq_len, window and stride must be positive, got {seq_len}, {window}, {stride}")
        if seq_len < window:
            raise ValueError(
                f"seq_len={seq_len} is shorter than the delay-embedding window={window}; use window <= seq_len"
            )
        self.seq_len = seq_len
        self.window = window
        self.stride = stride
        self.num_columns = math.ceil((seq_len - window) / stride) + 1
        self.image_size = max(window, self.num_columns)
        starts = [min(j * stride, seq_len - window) for j in range(self.num_columns)]
        # time_index[v, j] = the time step shown at row v, column j.
        self.time_index = torch.tensor(starts).unsqueeze(0) + torch.arange(window).unsqueeze(1)
        flat_index = self.time_index.flatten()
        self.copy_count = torch.bincount(flat_index, minlength=seq_len)
        if int(self.copy_count.min()) == 0:
            raise ValueError(f"stride={stride} > window={window} leaves time steps out of every window")
        # First occurrence of each time step in the flattened (row-major) image block.
        positions = torch.arange(flat_index.numel())
        first = torch.full((seq_len,), flat_index.numel(), dtype=torch.long)
        self.first_copy = first.scatter_reduce(0, flat_index, positions, reduce="amin")

    def __repr__(self) -> str:
        return (
            f"DelayEmbedding(seq_len={self.seq_len}, window={self.window}, stride={self.stride}, "
            f"image_size={self.image_size})"
        )

    def to_image(self, series: torch.Tensor) -> torch.Tensor:
        """``(B, D, T)`` series -> ``(B, D, S, S)`` zero-padded delay-embedding images."""
        if series.ndim != 3 or series.shape[-1] != self.seq_len:
            raise ValueError(f"expected a (batch, features, {self.seq_len}) series, got shape {tuple(series.shape)}")
        block = series[..., self.time_index.to(series.device)]
        pad_rows = self.image_size - self.window
        pad_cols = self.image_size - self.num_columns
        return torch.nn.functional.pad(block, (0, pad_cols, 0, pad_rows))

    def to_series(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, D, S, S)`` images -> ``(B, D, T)`` series, averaging each value's copies."""
        if image.ndim != 4 or image.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected a (batch, features, {self.image_size}, {self.image_size}) image, got {tuple(image.shape)}"
            )
        copies = image[..., : self.window, : self.num_columns].flatten(-2)
        flat_index = self.time_index.flatten().to(image.device)
        reference = copies[..., self.first_copy.to(image.device)]
        deviations = copies - reference[..., flat_index]
        summed = torch.zeros_like(reference).index_add_(-1, flat_index, deviations)
        return reference + summed / self.copy_count.to(image.device, image.dtype)
