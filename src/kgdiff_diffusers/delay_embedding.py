"""Delay embedding of a daily series into a square image and back (paper eq. 18), and its choice of sizes.

Automatic ``(window V, stride U)`` for a ``T``-step day (:func:`choose_delay_embedding`):
``V`` is the power of two nearest ``2 sqrt(T)`` (in log scale, at most ``T``) and ``U`` the smallest
stride that fits all ``W = ceil((T - V) / U) + 1`` windows into ``V`` columns, ``U = ceil((T - V) / (V - 1))``.
The image is then ``V x V``, and a power of two survives every halving of the UNet. This reproduces the
paper's settings, ``T = 48 -> (16, 3)`` and ``T = 288 -> (32, 9)``, and gives ``24 -> (8, 3)``,
``96 -> (16, 6)``, ``144 -> (32, 4)``.
"""

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


def image_side(seq_len: int, window: int, stride: int) -> int:
    """Side ``S = max(V, W)`` of the square image of ``(window, stride)`` for ``seq_len``-step days."""
    return max(window, math.ceil((seq_len - window) / stride) + 1)


def working_delay_embeddings(seq_len: int, side_multiple: int, limit: int = 5) -> list[tuple[int, int, int]]:
    """Up to ``limit`` valid ``(window, stride, side)`` for ``seq_len``, one per image side, smallest first.

    Valid: ``stride <= window <= seq_len`` (every step lies in a window) and the side is a multiple of
    ``side_multiple``; per side the smallest stride (most overlap), then the longest window, is listed.
    """
    best = {}
    for window in range(1, seq_len + 1):
        for stride in range(1, window + 1):
            side = image_side(seq_len, window, stride)
            if side % side_multiple == 0 and (side not in best or (stride, -window) < best[side]):
                best[side] = (stride, -window)
    return [(-best[side][1], best[side][0], side) for side in sorted(best)[:limit]]


def choose_delay_embedding(seq_len: int, side_multiple: int = 4) -> tuple[int, int]:
    """The automatic ``(window, stride)`` of this module's docstring for ``seq_len``-step days.

    Args:
        seq_len: ``T``, steps per day.
        side_multiple: the image side must be a multiple of this (``2 ** halvings`` of the UNet).

    Raises:
        ValueError: ``seq_len`` is shorter than ``side_multiple`` (no image side can be halved enough).
    """
    if seq_len < max(2, side_multiple):
        raise ValueError(
            f"{seq_len}-step days are too short for a delay-embedding image whose side is a multiple of "
            f"{side_multiple}; use finer time steps or a UNet with fewer resolutions"
        )
    window = 2 ** round(math.log2(2 * math.sqrt(seq_len)))
    window = max(min(window, 2 ** int(math.log2(seq_len))), side_multiple)
    return window, max(1, math.ceil((seq_len - window) / (window - 1)))


def check_delay_embedding(seq_len: int, window: int, stride: int, side_multiple: int = 4) -> DelayEmbedding:
    """The :class:`DelayEmbedding` of a user's ``(window, stride)``, or a ``ValueError`` listing sizes that work.

    Args:
        seq_len, window, stride: as in :class:`DelayEmbedding`.
        side_multiple: the UNet needs image sides that are a multiple of this (``2 ** halvings``).
    """
    problem = None
    if min(window, stride) < 1 or window > seq_len or stride > window:
        problem = "needs 1 <= stride <= window <= steps per day"
    elif image_side(seq_len, window, stride) % side_multiple:
        side = image_side(seq_len, window, stride)
        problem = f"gives {side}x{side} images; the UNet halves them, so the side must be a multiple of {side_multiple}"
    if problem is not None:
        working = ", ".join(f"{v}/{u} ({s}x{s})" for v, u, s in working_delay_embeddings(seq_len, side_multiple))
        auto_window, auto_stride = choose_delay_embedding(seq_len, side_multiple)
        raise ValueError(
            f"delay embedding window={window}, stride={stride} for {seq_len}-step days {problem}; window/stride "
            f"that work: {working}; leave both unset for the automatic {auto_window}/{auto_stride}"
        )
    return DelayEmbedding(seq_len, window, stride)
