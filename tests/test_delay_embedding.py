import pytest
import torch

from kgdiff_diffusers import DelayEmbedding


@pytest.mark.parametrize(
    "seq_len, window, stride, features",
    [(48, 16, 3, 1), (288, 32, 9, 2), (50, 16, 7, 3), (47, 16, 5, 1), (16, 16, 4, 2)],
)
def test_round_trip_is_exact(seq_len, window, stride, features):
    emb = DelayEmbedding(seq_len, window, stride)
    series = torch.randn(5, features, seq_len, generator=torch.Generator().manual_seed(0)) * 23.7 + 61.3
    image = emb.to_image(series)
    assert image.shape == (5, features, emb.image_size, emb.image_size)
    assert torch.equal(emb.to_series(image), series)


def test_columns_follow_eq_18_with_the_last_window_ending_at_x_T():
    emb = DelayEmbedding(seq_len=48, window=16, stride=3)
    assert emb.num_columns == 12 and emb.image_size == 16  # ceil((48 - 16) / 3) + 1
    series = torch.arange(48.0).reshape(1, 1, 48)
    image = emb.to_image(series)[0, 0]
    assert torch.equal(image[:, 0], torch.arange(0.0, 16.0))
    assert torch.equal(image[:, 10], torch.arange(30.0, 46.0))  # column j starts at j * U
    assert torch.equal(image[:, 11], torch.arange(32.0, 48.0))  # last column ends at x_T
    assert torch.count_nonzero(image[:, 12:]) == 0  # zero padding to V x V
    assert DelayEmbedding(288, 32, 9).image_size == 32


def test_inverse_averages_disagreeing_copies():
    emb = DelayEmbedding(seq_len=6, window=4, stride=2)  # windows start at 0, 2
    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, :, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # x0..x3
    image[0, 0, :, 1] = torch.tensor([5.0, 6.0, 7.0, 8.0])  # x2..x5
    series = emb.to_series(image)[0, 0]
    torch.testing.assert_close(series, torch.tensor([1.0, 2.0, 4.0, 5.0, 7.0, 8.0]))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shorter than the delay-embedding window"):
        DelayEmbedding(seq_len=12, window=16, stride=3)
    with pytest.raises(ValueError, match="leaves time steps out"):
        DelayEmbedding(seq_len=48, window=4, stride=6)
    emb = DelayEmbedding(48, 16, 3)
    with pytest.raises(ValueError, match="series"):
        emb.to_image(torch.zeros(2, 1, 47))
    with pytest.raises(ValueError, match="image"):
        emb.to_series(torch.zeros(2, 1, 15, 15))
