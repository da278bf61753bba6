"""KGDiffDonorPrior: hand-computed priors, no self-leakage, new places, the residual pipeline, bounds, save/load."""

import dataclasses
import json

import numpy as np
import pytest
import safetensors.torch
import scipy.stats
import torch

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.days import split_validation_nodes
from kgdiff_diffusers.data.prepared import prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.evaluation import use_sampler
from kgdiff_diffusers.fingerprint import config_digest
from kgdiff_diffusers.kg.tucker import pretrain_tucker
from kgdiff_diffusers.models.donor_prior import KGDiffDonorPrior, _spread_order
from kgdiff_diffusers.pipelines.pipeline_kgdiff import _without_added_defaults
from kgdiff_diffusers.training import (
    LEVEL_EXPONENTS,
    LEVEL_NOISES,
    RANDOM_DONOR_SHARES,
    START_STRENGTHS,
    VALIDATION_DRAW_STRIDE,
    KGDiffModelConfig,
    _within_one_standard_error,
    build_pipeline,
    choose_donor_day_start,
    choose_prior_blend,
    kgdiff_loss,
    node_day_statistics,
)

SMALL = dict(condition_dim=16, block_out_channels=(16, 32), norm_num_groups=8, num_train_timesteps=20)


@pytest.fixture(scope="module")
def city():
    data, kg = make_synthetic_city(num_nodes=20, num_days=10, seed=1)
    tucker = pretrain_tucker(kg, embedding_dim=16, epochs=1, show_progress=False)
    return prepare_dataset(
        data, kg, "prior_city", entity_embeddings=tucker.entity_embeddings,
        relation_embeddings=tucker.relation_embeddings,
    )


def _prior_of(pipe: KGDiffPipeline, dataset, rows) -> np.ndarray:
    mean_day = pipe.prior([dataset.node_ids[r] for r in rows])[0]
    return mean_day.numpy()


def test_uniform_prior_is_the_geometric_level_times_the_mean_shape():
    # 4 donors on a line, 1 query; every node shares one KG entity, so KG ranks follow the bank order.
    profiles = np.stack([np.full((1, 4), v, dtype=np.float32) * np.array([1, 2, 3, 2], np.float32) for v in
                         (1.0, 2.0, 4.0, 8.0, 0.0)])  # (5, 1, 4); node 4 is the query (no data)
    spreads = np.array([[0.5], [1.0], [2.0], [4.0], [0.0]], dtype=np.float32)
    locations = np.array([[0.0, 0.00], [0.0, 0.01], [0.0, 0.02], [0.0, 0.03], [0.0, 0.015]])
    edge_node = np.arange(5)
    prior = KGDiffDonorPrior.from_training_data(
        profiles, spreads, np.arange(4), locations, edge_node, np.zeros(5, np.int64), np.zeros(5, np.int64),
        num_entities=1, num_relations=1, feature_mean=np.array([0.0]), feature_std=np.array([2.0]), num_donors=2,
    )
    mean_day, scale = prior(torch.tensor([4]))
    # geo candidates: donors 1 and 2 (0.005 deg away); KG candidates: all tie, topk keeps two of them.
    candidates = prior.candidate_index[4].tolist()
    assert sorted(candidates[:2]) == [1, 2]
    levels = profiles[candidates, 0].mean(axis=1)  # level of each candidate
    expected_level = np.exp(np.log(levels).mean())
    expected_shape = (profiles[candidates, 0] / levels[:, None]).mean(axis=0)
    np.testing.assert_allclose(mean_day.numpy()[0, 0] * 2.0, expected_level * expected_shape, rtol=1e-5)
    expected_scale = expected_level * (spreads[candidates, 0] / levels).mean()
    np.testing.assert_allclose(scale.numpy()[0, 0] * 2.0, expected_scale, rtol=1e-5)


def test_a_nodes_prior_does_not_change_when_its_own_days_change(city):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL))
    node = int(city.train_rows[0])
    changed = dataclasses.replace(city, days=city.days.copy())
    changed.days[node] *= 5.0
    changed_pipe = build_pipeline(changed, KGDiffModelConfig(**SMALL))
    rows = list(city.train_rows) + list(city.test_rows)
    before, after = _prior_of(pipe, city, rows), _prior_of(changed_pipe, changed, rows)
    np.testing.assert_array_equal(before[0], after[0])  # the changed node itself
    assert not np.allclose(before[1:], after[1:])  # others use it as a donor
    assert node not in pipe.donor_prior.candidate_index[node].tolist()


def test_a_new_place_like_a_test_node_gets_that_nodes_prior(city):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL))
    test_row = int(city.test_rows[0])
    entity = city.node_table["entity"].iloc[test_row]
    kg = city.kg
    relations = kg.relation_names_with_inverse()
    edges = [(relations[r], kg.entities[t]) for r, t in zip(*kg.neighbor_index([entity])[1:])]
    lat, lon = city.node_table[["lat", "lon"]].iloc[test_row]
    new_mean, new_scale = pipe.prior(new_nodes={"planned": edges}, new_node_locations={"planned": (lat, lon)})
    known_mean, known_scale = pipe.prior([city.node_ids[test_row]])
    np.testing.assert_allclose(new_mean.numpy(), known_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_scale.numpy(), known_scale.numpy(), rtol=1e-5)
    # without a location, only KG-similar donors are used: still a finite prior
    kg_only = pipe.prior(new_nodes={"planned": edges})[0]
    assert torch.isfinite(kg_only).all()
    # starting from donor days, the new place draws the same days as the known node from the same streams
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(start_strength=0.0, level_exponent=1.0)
    as_new = pipe(new_nodes={"planned": edges}, new_node_locations={"planned": (lat, lon)}, num_samples=4,
                  num_inference_steps=4, generator=torch.Generator().manual_seed(1)).series
    as_known = pipe(node_ids=[city.node_ids[test_row]], num_samples=4, num_inference_steps=4,
                    generator=torch.Generator().manual_seed(1)).series
    np.testing.assert_allclose(as_new, as_known, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="not in new_nodes"):
        pipe.prior(new_nodes={"planned": edges}, new_node_locations={"other": (lat, lon)})
    with pytest.raises(ValueError, match="in degrees"):
        pipe.prior(new_nodes={"planned": edges}, new_node_locations={"planned": (lon, lat)})


def test_residual_pipeline_is_never_negative_on_counts_and_reloads_bit_identical(city, tmp_path):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.output_min == [0.0] and pipe.config.prior_blend is None  # None: donors only
    nodes = [city.node_ids[r] for r in city.test_rows]
    pipe.donor_prior.bank_spread.mul_(20.0)  # residuals so wide that many days would dip below zero
    out = pipe(node_ids=nodes, num_samples=8, num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    assert np.isfinite(out.series).all() and out.series.min() >= 0.0
    pipe.register_to_config(output_min=None)
    unbounded = pipe(node_ids=nodes, num_samples=8, num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    assert (unbounded.series < 0).mean() > 0.01
    np.testing.assert_array_equal(out.series, np.maximum(unbounded.series, 0.0))
    pipe.register_to_config(output_min=[0.0])
    prior_mean = pipe.prior(nodes)[0]
    np.testing.assert_allclose(out.meta_pattern, pipe._clip_to_range(pipe._to_data_units(prior_mean)).numpy())
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "donor_prior" / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = KGDiffPipeline.from_pretrained(tmp_path, local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    for name, tensor in pipe.donor_prior.state_dict().items():
        assert torch.equal(tensor, reloaded.donor_prior.state_dict()[name]), name
    again = reloaded(node_ids=nodes, num_samples=8, num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(out.series, again.series)


def test_paper_configuration_pipeline_without_the_component_still_loads(city, tmp_path):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, use_donor_prior=False))
    assert pipe.donor_prior is None and pipe.meta_pattern is not None
    assert choose_prior_blend(pipe, city) is None
    with pytest.raises(ValueError, match="no donor prior"):
        pipe.prior([city.node_ids[0]])
    pipe.save_pretrained(tmp_path)
    reloaded = KGDiffPipeline.from_pretrained(tmp_path, local_files_only=True)
    assert reloaded.donor_prior is None and reloaded.meta_pattern is not None


def test_residual_loss_targets_the_scaled_deviation_from_the_nodes_own_mean_day(city):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, prediction_type="sample"))
    rows = torch.as_tensor(city.train_rows[:4])
    profiles, spreads, _ = node_day_statistics(city)
    days = torch.from_numpy((city.days[rows.numpy(), 0] - city.feature_mean) / city.feature_std).transpose(1, 2)
    captured = {}

    def record(sample, timestep, condition, meta_pattern=None):
        captured["meta"] = meta_pattern
        return pipe.unet.__class__.forward(pipe.unet, sample, timestep, condition, meta_pattern)

    pipe.unet.forward = record
    out = kgdiff_loss(pipe.unet, pipe.condition_encoder, None, pipe.scheduler, pipe.delay_embedding, days, rows,
                      donor_prior=pipe.donor_prior, generator=torch.Generator().manual_seed(0))
    own = (profiles[rows.numpy()] - city.feature_mean[:, None]) / city.feature_std[:, None]
    np.testing.assert_allclose(captured["meta"].numpy(), pipe.delay_embedding.to_image(torch.from_numpy(own)).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert out.meta_pattern_loss.item() == 0.0  # the uniform prior has nothing to learn, and no f(phi) was given
    assert np.all(spreads[rows.numpy()] > 0)
    with_mlp = kgdiff_loss(pipe.unet, pipe.condition_encoder, pipe.meta_pattern, pipe.scheduler, pipe.delay_embedding,
                           days, rows, donor_prior=pipe.donor_prior, generator=torch.Generator().manual_seed(0))
    expected = ((pipe.meta_pattern(pipe.condition_encoder(rows)) - days) ** 2).mean().detach()
    np.testing.assert_allclose(with_mlp.meta_pattern_loss.item(), expected.item(), rtol=1e-5)


def test_prior_centred_residual_targets_the_deviation_from_the_estimate_of_other_nodes(city):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, prediction_type="sample", residual_centre="prior"))
    rows = torch.as_tensor(city.train_rows[:4])
    days = torch.from_numpy((city.days[rows.numpy(), 0] - city.feature_mean) / city.feature_std).transpose(1, 2)
    captured = []

    def record(sample, timestep, condition, meta_pattern=None):
        captured.append(meta_pattern)
        return pipe.unet.__class__.forward(pipe.unet, sample, timestep, condition, meta_pattern)

    pipe.unet.forward = record

    def loss(centre: str) -> float:
        return kgdiff_loss(pipe.unet, pipe.condition_encoder, None, pipe.scheduler, pipe.delay_embedding, days, rows,
                           donor_prior=pipe.donor_prior, generator=torch.Generator().manual_seed(0),
                           residual_centre=centre).noise_loss.item()

    own_loss = loss("own")
    prior_loss = loss("prior")
    with torch.no_grad():
        estimate = pipe.donor_prior(rows)[0]
    np.testing.assert_allclose(captured[-1].numpy(), pipe.delay_embedding.to_image(estimate).numpy(), rtol=1e-6)
    assert not torch.allclose(captured[0], captured[-1]) and own_loss != prior_loss
    # No self-leakage: a node's centre does not move when its own days (its donor summary) change.
    before = captured[-1].clone()
    with torch.no_grad():
        own_row = pipe.donor_prior.node_bank_row[rows[0]]
        pipe.donor_prior.bank_profile[own_row] *= 3.0
        pipe.donor_prior.bank_level[own_row] *= 3.0
    loss("prior")
    np.testing.assert_array_equal(captured[-1][0].numpy(), before[0].numpy())
    loss("own")
    assert not torch.allclose(captured[-1][0], captured[0][0])  # the own centre does move
    with pytest.raises(ValueError, match="residual_centre must be one of"):
        loss("mean")


def _blend_by_one_standard_error(pipe: KGDiffPipeline, donors, learned, real: np.ndarray) -> float:
    """The largest b in 0, 0.1, ..., 1 whose mean validation MAE is within one standard error (of the per-node
    differences to the best b, scaled by the t quantile of V - 1 degrees of freedom at 84 %) of the lowest; one
    feature."""
    grid = np.linspace(0, 1, 11)
    errors = np.stack([
        np.abs(pipe._clip_to_range(pipe._to_data_units(b * donors + (1 - b) * learned)).numpy() - real).mean(1)[:, 0]
        for b in grid
    ])  # (grid, V)
    best = errors.mean(1).argmin()
    num_nodes = errors.shape[1]
    standard_error = (errors - errors[best]).std(1, ddof=1) / np.sqrt(num_nodes)
    margin = scipy.stats.t.ppf(scipy.stats.norm.cdf(1.0), num_nodes - 1) * standard_error
    return float(grid[np.nonzero(errors.mean(1) <= errors[best].mean() + margin)[0][-1]])


def test_one_standard_error_from_few_nodes_is_the_t_quantiles():
    # (W=2 settings, V=2 nodes, D=1): the second setting is worse by 3 at one node and by 0.5 at the other, a mean
    # gap of 1.75 = 1.4 standard errors: beyond one normal standard error, within the 1.84 of one degree of freedom.
    errors = torch.tensor([[[1.0], [1.0]], [[4.0], [1.5]]])
    assert _within_one_standard_error(errors)[:, 0].tolist() == [True, True]
    # The same gaps at 16 nodes: a standard error of 0.32 and a t quantile of 1.03 (15 degrees of freedom).
    many = errors.repeat(1, 8, 1)
    assert _within_one_standard_error(many)[:, 0].tolist() == [True, False]
    assert _within_one_standard_error(errors[:, :1]).all()  # one node measures no noise


def test_the_blend_is_chosen_on_validation_nodes_and_used_for_f(city):
    _, validation = split_validation_nodes(city.node_table, city.train_node_ids, 0.25)
    dataset = city.with_split(city.test_node_ids, validation)
    pipe = build_pipeline(dataset, KGDiffModelConfig(**SMALL))
    pipe.set_progress_bar_config(disable=True)
    donors = set(torch.nonzero(pipe.donor_prior.node_bank_row >= 0).squeeze(1).tolist())
    assert donors == set(dataset.train_rows.tolist())  # validation and test nodes are never donors
    blend = choose_prior_blend(pipe, dataset)
    assert pipe.config.prior_blend == blend and len(blend) == 1 and 0.0 <= blend[0] <= 1.0
    nodes = [dataset.node_ids[r] for r in dataset.validation_rows]
    with torch.no_grad():
        donors, learned = pipe.prior(nodes)[0], pipe.meta_pattern(pipe.condition(nodes))
    profiles, _, _ = node_day_statistics(dataset)
    real = profiles[dataset.validation_rows].transpose(0, 2, 1)

    assert blend == [_blend_by_one_standard_error(pipe, donors, learned, real)]
    out = pipe(node_ids=nodes[:1], num_samples=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    expected = pipe._clip_to_range(pipe._to_data_units(blend[0] * donors[:1] + (1 - blend[0]) * learned[:1]))
    np.testing.assert_allclose(out.meta_pattern, expected.numpy(), rtol=1e-5, atol=1e-4)
    assert choose_prior_blend(build_pipeline(city, KGDiffModelConfig(**SMALL)), city) is None  # no validation nodes


def test_the_blend_keeps_the_donors_unless_the_regression_wins_beyond_one_standard_error(city):
    _, validation = split_validation_nodes(city.node_table, city.train_node_ids, 0.25)
    dataset = city.with_split(city.test_node_ids, validation)
    pipe = build_pipeline(dataset, KGDiffModelConfig(**SMALL))
    nodes = [dataset.node_ids[r] for r in dataset.validation_rows]
    profiles, _, _ = node_day_statistics(dataset)
    real = profiles[dataset.validation_rows].transpose(0, 2, 1)  # (V, T, D) data units
    mean, std = (torch.tensor(pipe.config[k]).view(1, -1, 1) for k in ("feature_mean", "feature_std"))
    real_normalised = (torch.from_numpy(real).float().transpose(1, 2) - mean) / std  # (V, D, T)
    with torch.no_grad():
        donors = pipe.prior(nodes)[0]
    donor_miss = np.abs(pipe._to_data_units(donors).numpy() - real).mean(axis=(1, 2))

    def chosen(learned: torch.Tensor) -> float:
        pipe.meta_pattern.forward = lambda phi: learned
        return choose_prior_blend(pipe, dataset)[0]

    # A regression that knows every validation node's mean day wins beyond any noise.
    assert chosen(real_normalised) == 0.0
    # Right where the donors are furthest off, twice as wrong at the next node: the mean MAE prefers f(phi), by a
    # gain smaller than its standard error over the validation nodes, so the donors stay.
    first, second = np.argsort(-donor_miss)[:2]
    learned = donors.clone()
    learned[first] = real_normalised[first]
    learned[second] = 2 * donors[second] - real_normalised[second]

    def mean_error(b: float) -> float:
        blended = pipe._clip_to_range(pipe._to_data_units(b * donors + (1 - b) * learned)).numpy()
        return float(np.abs(blended - real).mean())

    assert mean_error(0.0) < mean_error(1.0)  # the old rule, the lowest mean, would have taken f(phi)
    assert chosen(learned) == 1.0 == _blend_by_one_standard_error(pipe, donors, learned, real)
    # One validation node cannot measure the noise: the donors stay even against a perfect regression.
    single = city.with_split(city.test_node_ids, validation[:1])
    pipe = build_pipeline(single, KGDiffModelConfig(**SMALL))
    pipe.meta_pattern.forward = lambda phi: real_normalised[:1]
    assert choose_prior_blend(pipe, single) == [1.0]
    pipe.meta_pattern.forward = lambda phi: torch.full_like(real_normalised[:1], float("nan"))
    with pytest.raises(ValueError, match="validation errors are not finite"):
        choose_prior_blend(pipe, single)


def _candidate_days(pipe: KGDiffPipeline, dataset, row: int) -> np.ndarray:
    """``(M, T, D)`` every valid day of the candidate donors of node ``row``."""
    bank = torch.nonzero(pipe.donor_prior.node_bank_row >= 0).squeeze(1).numpy()
    donors = bank[pipe.donor_prior.candidate_index[row].numpy()]
    return np.concatenate([dataset.days[d][dataset.day_mask[d]] for d in np.unique(donors)])


def test_strength_zero_returns_real_days_of_the_nodes_candidate_donors_rescaled_to_its_level(city):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=64))
    pipe.set_progress_bar_config(disable=True)
    row = int(city.test_rows[0])
    node, candidates = city.node_ids[row], _candidate_days(pipe, city, row)
    pipe.register_to_config(match_donor_mean=False, start_strength=0.0, level_exponent=0.0)
    copied = pipe(node_ids=[node], num_samples=6, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    for day in copied.series[0]:  # a copy of one real day of a candidate (never of the node itself)
        distance = np.abs(candidates - day).max(axis=(1, 2))
        assert distance.min() < 1e-3 * np.abs(candidates).max()
    pipe.register_to_config(level_exponent=1.0)
    rescaled = pipe(node_ids=[node], num_samples=6, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    level = pipe._to_data_units(pipe.prior([node])[0]).mean(dim=1).numpy()  # (1, D)
    ratio = rescaled.series[0] / np.maximum(copied.series[0], 1e-9)  # the same days, drawn by the same streams
    busy = copied.series[0] > 1.0
    for day in range(6):
        np.testing.assert_allclose(ratio[day][busy[day]], np.median(ratio[day][busy[day]]), rtol=1e-3)
    np.testing.assert_allclose(rescaled.series[0].mean(axis=(0, 1)), level[0], rtol=0.5)


def test_random_donors_replace_a_share_of_the_candidate_days_with_days_of_any_training_node(city, tmp_path):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=64))
    pipe.set_progress_bar_config(disable=True)
    row = int(city.test_rows[0])
    node, candidates = city.node_ids[row], _candidate_days(pipe, city, row)
    train_days = np.concatenate([city.days[r][city.day_mask[r]] for r in city.train_rows])

    def sample(p):
        return p(node_ids=[node], num_samples=40, num_inference_steps=4,
                 generator=torch.Generator().manual_seed(0)).series[0]

    pipe.register_to_config(match_donor_mean=False, start_strength=0.0, level_exponent=0.0, random_donor_share=0.5)
    mixed = sample(pipe)
    scale = 1e-3 * np.abs(train_days).max()
    for day in mixed:  # every day: a real day of some training node
        assert np.abs(train_days - day).max(axis=(1, 2)).min() < scale
    outside = [np.abs(candidates - day).max(axis=(1, 2)).min() > scale for day in mixed]
    assert 1 <= sum(outside) <= 20  # ... not only of the node's candidates; at most the 20 random donors' days
    pipe.save_pretrained(tmp_path)
    reloaded = KGDiffPipeline.from_pretrained(tmp_path, local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.config.random_donor_share == 0.5
    np.testing.assert_array_equal(mixed, sample(reloaded))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="random_donor_share"):
            KGDiffPipeline(**reloaded.components, **{**_own_config(reloaded), "random_donor_share": bad})
    prior = reloaded.donor_prior
    with pytest.raises(ValueError, match="random_donor_share"):
        prior.donor_days(prior.candidate_index[:1], torch.zeros(1, 1, city.steps_per_day), 1.0, None, None, 2.0)


def _donor_of_each_day(prior, days: torch.Tensor) -> list[int]:
    """The bank row whose stored days hold each of ``(B, D, T)`` normalised days (copied at its own level)."""
    return _donor_of_each_data_day(prior, days * prior.feature_std_ + prior.feature_mean_)


def _donor_of_each_data_day(prior, data: torch.Tensor) -> list[int]:
    stored = prior.bank_days[: prior.config.num_bank]  # (num_bank, num_bank_days, D, T), data units
    distance = (stored[None] - data[:, None, None]).abs().amax(dim=(-2, -1)).amin(dim=2)  # (B, num_bank)
    assert (distance.min(dim=1).values < 1e-3 * stored.abs().max()).all()
    return distance.argmin(dim=1).tolist()


def test_a_places_days_cover_the_donor_mixture_evenly(city):
    prior = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=8)).donor_prior
    row = int(city.test_rows[0])
    slots = prior.candidate_index.shape[1]
    streams = [torch.Generator().manual_seed(day) for day in range(slots)]
    index = prior.candidate_index[[row] * slots]
    mean_day = prior(torch.tensor([row] * slots))[0]
    days = prior.donor_days(index, mean_day, 0.0, streams, sample_index=torch.arange(slots), num_samples=slots)
    assert sorted(_donor_of_each_day(prior, days)) == sorted(prior.candidate_index[row].tolist())  # each slot once
    num_bank = prior.config.num_bank
    streams = [torch.Generator().manual_seed(day) for day in range(num_bank)]
    days = prior.donor_days(prior.candidate_index[[row] * num_bank], mean_day[:1].expand(num_bank, -1, -1), 0.0,
                            streams, random_donor_share=1.0, sample_index=torch.arange(num_bank), num_samples=num_bank)
    assert sorted(_donor_of_each_day(prior, days)) == list(range(num_bank))  # any donor: each training node once
    iid = prior.donor_days(index, mean_day, 0.0, [torch.Generator().manual_seed(day) for day in range(slots)])
    assert len(set(_donor_of_each_day(prior, iid))) < len(set(prior.candidate_index[row].tolist()))  # by chance
    with pytest.raises(ValueError, match="sample_index"):
        prior.donor_days(index, mean_day, 0.0, None, sample_index=torch.arange(slots) + 1, num_samples=slots)


def _drawn_level_errors(prior, days: torch.Tensor, copies: torch.Tensor, level_noise: float) -> np.ndarray:
    """``(B,)`` the bank row of the level error each day was spread by (multiplicative level noise)."""
    days, copies = ((x * prior.feature_std_ + prior.feature_mean_).numpy() for x in (days, copies))
    busy = copies > 1e-3 * np.abs(copies).max()
    ratio = np.nanmedian(np.where(busy, days / np.where(busy, copies, 1.0), np.nan), axis=-1)  # (B, D)
    errors = prior.level_error.numpy()  # (num_bank, D)
    factors = np.exp(level_noise * errors) / np.exp(level_noise * errors).mean(axis=0)
    distance = np.abs(np.log(ratio)[:, None] - np.log(factors)[None]).max(axis=-1)  # (B, num_bank)
    assert (distance.min(axis=1) < 1e-3).all()
    return distance.argmin(axis=1)


def test_a_places_level_errors_are_stratified_apart_from_its_donors(city):
    prior = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=8)).donor_prior
    assert prior.config.level_mode == "multiplicative" and prior.config.has_level_errors
    row, num_bank = int(city.test_rows[0]), prior.config.num_bank
    index = prior.candidate_index[[row] * num_bank]
    mean_day = prior(torch.tensor([row] * num_bank))[0]

    def draw(sample_index):
        streams = [torch.Generator().manual_seed(day) for day in range(num_bank)]
        return prior.donor_days(index, mean_day, 0.0, streams, level_noise=0.7, sample_index=sample_index,
                                num_samples=num_bank, return_copies=True)

    days, copies = draw(torch.arange(num_bank))
    drawn = _drawn_level_errors(prior, days, copies, 0.7)
    assert sorted(drawn.tolist()) == list(range(num_bank))  # as many days as donors: each donor's error once
    for num_samples in (5, 8, 15, 20, 40):  # a day's slice of errors does not follow its slice of donors
        donor_slices, error_slices = (_spread_order(num_samples, "cpu", base).numpy() for base in (2, 3))
        assert abs(np.corrcoef(donor_slices, error_slices)[0, 1]) < 0.3
    iid = _drawn_level_errors(prior, *draw(None), 0.7)
    assert len(set(iid.tolist())) < num_bank  # independent draws repeat some errors by chance


def test_the_pipeline_copies_each_candidate_once_when_asked_for_as_many_days(city):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=8))
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(match_donor_mean=False, start_strength=0.0, level_exponent=0.0)
    row = int(city.test_rows[0])
    slots = pipe.donor_prior.candidate_index.shape[1]
    series = pipe(node_ids=[city.node_ids[row]], num_samples=slots, num_inference_steps=4, batch_size=5,
                  generator=torch.Generator().manual_seed(0), output_type="pt").series[0]  # (slots, T, D)
    donors = _donor_of_each_data_day(pipe.donor_prior, series.transpose(1, 2))
    assert sorted(donors) == sorted(pipe.donor_prior.candidate_index[row].tolist())


def test_the_spread_order_is_a_permutation_whose_prefixes_are_spread():
    for num_samples in (1, 2, 5, 16, 20):
        order = _spread_order(num_samples, torch.device("cpu"))
        assert sorted(order.tolist()) == list(range(num_samples))
        for prefix in range(1, num_samples + 1):  # the first n days take slices at most 2 / n apart
            taken = np.sort(order[:prefix].numpy()) / num_samples
            assert np.diff(np.concatenate([taken, [taken[0] + 1]])).max() <= 2.0 / prefix + 1.0 / num_samples


def test_level_errors_are_each_donors_own_level_against_its_candidates_geometric_mean(city):
    prior = build_pipeline(city, KGDiffModelConfig(**SMALL)).donor_prior
    bank_nodes = torch.nonzero(prior.node_bank_row >= 0).squeeze(1)
    levels = prior.bank_profile.mean(-1).numpy()  # (num_bank, D) data units
    candidates = prior.candidate_index[bank_nodes].numpy()  # (num_bank, 2K), never the donor itself
    assert not (candidates == prior.node_bank_row[bank_nodes].numpy()[:, None]).any()
    expected = np.log(levels) - np.log(levels[candidates]).mean(axis=1)
    np.testing.assert_allclose(prior.level_error.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_level_noise_spreads_each_copy_by_a_donors_level_error_and_keeps_the_mean_level(city, tmp_path):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=64))
    pipe.set_progress_bar_config(disable=True)
    node = city.node_ids[int(city.test_rows[0])]

    def sample(p):
        return p(node_ids=[node], num_samples=40, num_inference_steps=4,
                 generator=torch.Generator().manual_seed(0)).series[0]

    pipe.register_to_config(match_donor_mean=False, start_strength=0.0, level_exponent=1.0, random_donor_share=0.25)
    plain = sample(pipe)
    pipe.register_to_config(level_noise=0.0)
    np.testing.assert_array_equal(plain, sample(pipe))  # lam = 0 is the plain copies, same streams
    pipe.register_to_config(level_noise=0.5)
    noisy = sample(pipe)
    errors = pipe.donor_prior.level_error.numpy()  # (num_bank, D)
    factors = np.exp(0.5 * errors) / np.exp(0.5 * errors).mean(axis=0)  # the possible level factors
    busy = plain > 1.0
    for day in range(len(plain)):  # the same day of the same donor, times one donor's factor per feature
        for feature in range(plain.shape[-1]):
            steps = busy[day, :, feature]
            ratio = noisy[day, steps, feature] / plain[day, steps, feature]
            np.testing.assert_allclose(ratio, np.median(ratio), rtol=1e-3)
            assert np.abs(factors[:, feature] - np.median(ratio)).min() < 1e-3 * np.median(ratio)
    assert np.ptp(noisy.mean(axis=1) / plain.mean(axis=1)) > 0.05  # the days' levels do differ
    pipe.save_pretrained(tmp_path)
    reloaded = KGDiffPipeline.from_pretrained(tmp_path, local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.config.level_noise == 0.5
    np.testing.assert_array_equal(noisy, sample(reloaded))
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="level_noise"):
            KGDiffPipeline(**reloaded.components, **{**_own_config(reloaded), "level_noise": bad})


def test_the_expected_donor_day_is_the_mean_of_many_copies(city):
    prior = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=8)).donor_prior
    row, draws = int(city.test_rows[0]), 6000
    index = prior.candidate_index[[row] * draws]
    mean_day = prior(torch.tensor([row] * draws))[0]
    for exponent, share in ((0.0, 0.0), (0.5, 0.3), (1.0, 1.0)):
        copies = prior.donor_days(index, mean_day, exponent, torch.Generator().manual_seed(0),
                                  random_donor_share=share, level_noise=0.8)  # level noise keeps the mean
        expected = prior.expected_donor_day(index[:1], mean_day[:1], exponent, random_donor_share=share)[0]
        generated = (copies * prior.feature_std_ + prior.feature_mean_).mean(0).numpy()
        expected = (expected * prior.feature_std_ + prior.feature_mean_).numpy()
        np.testing.assert_allclose(generated, expected, rtol=0.06)
        assert np.abs(generated - expected).mean() < 0.02 * expected.mean()


def test_a_nodes_days_are_shifted_together_to_the_expected_donor_day(city, tmp_path):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=8))
    assert pipe.config.match_donor_mean and pipe.config.mean_match_strength == 0.75  # a new pipeline's default
    pipe.set_progress_bar_config(disable=True)
    nodes = [city.node_ids[r] for r in city.test_rows]

    def sample(p, num_samples=12, batch_size=256):
        return p(node_ids=nodes, num_samples=num_samples, num_inference_steps=4, batch_size=batch_size,
                 generator=torch.Generator().manual_seed(2)).series

    pipe.register_to_config(start_strength=0.0, level_exponent=1.0, random_donor_share=0.25, level_noise=0.0)
    partly_matched = sample(pipe)
    pipe.register_to_config(mean_match_strength=1.0)
    matched = sample(pipe)
    prior = pipe.donor_prior
    rows = torch.tensor([pipe._row_of_node[n] for n in nodes])
    expected = pipe._to_data_units(prior.expected_donor_day(
        prior.candidate_index[rows], prior(rows)[0], 1.0, random_donor_share=0.25)).numpy()  # (N, T, D)
    unclipped = matched > 0
    assert unclipped.mean() > 0.9
    np.testing.assert_allclose(matched.mean(axis=1)[unclipped.all(axis=1)], expected[unclipped.all(axis=1)],
                               rtol=1e-4, atol=1e-3)  # the set's mean is the expected copy
    np.testing.assert_allclose(matched, sample(pipe, batch_size=5), rtol=1e-5, atol=1e-4)
    pipe.register_to_config(match_donor_mean=False)
    copied = sample(pipe)
    gap = matched - copied  # one shift per node and step, the same for all of its days
    both = unclipped & (copied > 0)
    np.testing.assert_allclose(np.where(both, gap, 0), np.where(both, np.nanmedian(
        np.where(both, gap, np.nan), axis=1, keepdims=True), 0), atol=1e-3)
    assert np.abs(copied.mean(axis=1) - expected).mean() > 10 * np.abs(matched.mean(axis=1) - expected).mean()
    # strength 0.75 shifts each day by 0.75 of the full shift: the set's gap to the expected copy is a quarter
    kept = both & (partly_matched > 0)
    np.testing.assert_allclose(np.where(kept, partly_matched - copied, 0), np.where(kept, 0.75 * gap, 0), atol=1e-3)
    whole = kept.all(axis=1)
    np.testing.assert_allclose((expected - partly_matched.mean(axis=1))[whole],
                               0.25 * (expected - copied.mean(axis=1))[whole], rtol=1e-3, atol=1e-3)
    # with level noise, the shift is that of the copies before it (the same streams): the levels stay drawn
    pipe.register_to_config(level_noise=1.0)
    noisy = sample(pipe)
    pipe.register_to_config(match_donor_mean=True)
    noisy_matched = sample(pipe)
    pipe.register_to_config(level_noise=0.0)
    kept = both & (noisy > 0) & (noisy_matched > 0)
    np.testing.assert_allclose(np.where(kept, noisy_matched - noisy, 0), np.where(kept, gap, 0), atol=1e-3)
    # one day per call cannot be matched: it is the plain copy
    pipe.register_to_config(match_donor_mean=True)
    single = sample(pipe, num_samples=1)
    pipe.register_to_config(match_donor_mean=False)
    np.testing.assert_array_equal(single, sample(pipe, num_samples=1))
    pipe.register_to_config(match_donor_mean=True, mean_match_strength=0.75)
    pipe.save_pretrained(tmp_path)
    reloaded = KGDiffPipeline.from_pretrained(tmp_path, local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.config.match_donor_mean and reloaded.config.mean_match_strength == 0.75
    np.testing.assert_array_equal(partly_matched, sample(reloaded))
    for bad in ("false", 1, None):
        with pytest.raises(ValueError, match="match_donor_mean"):
            KGDiffPipeline(**reloaded.components, **{**_own_config(reloaded), "match_donor_mean": bad})
    for bad in (1.5, -0.1, float("nan"), True, "0.5", None):
        with pytest.raises(ValueError, match="mean_match_strength"):
            KGDiffPipeline(**reloaded.components, **{**_own_config(reloaded), "mean_match_strength": bad})


def test_days_around_a_blended_mean_vary_at_its_level(city, tmp_path):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=8))
    assert pipe.config.residual_at_blend_level  # a new pipeline's default
    pipe.set_progress_bar_config(disable=True)
    nodes = [city.node_ids[r] for r in city.test_rows]
    with torch.no_grad():
        pipe.meta_pattern.heads[0][2].bias += 2.0  # f(phi) two standard deviations above the donors' mean day

    def sample(p, **config):
        p.register_to_config(**config)
        return p(node_ids=nodes, num_samples=8, num_inference_steps=4, generator=torch.Generator().manual_seed(3))

    days = dict(start_strength=0.0, level_exponent=1.0, random_donor_share=0.0, level_noise=0.0)
    donors_only = sample(pipe, prior_blend=[1.0], match_donor_mean=False, **days).series
    pipe.register_to_config(residual_at_blend_level=False)
    np.testing.assert_array_equal(donors_only, sample(pipe).series)  # b = 1: the ratio is exactly 1
    at_donor_level = sample(pipe, prior_blend=[0.5])
    at_blend_level = sample(pipe, residual_at_blend_level=True)
    with torch.no_grad():
        donor_mean = pipe._to_data_units(pipe.prior(nodes)[0]).numpy()  # (N, T, D)
    blended = at_blend_level.meta_pattern  # (N, T, D) data units, 0.5 donors + 0.5 f(phi)
    elasticity = pipe.donor_prior.spread_level_elasticity().numpy()  # (D,)
    assert elasticity[0] > 0.9  # the synthetic counts' spread grows with their level
    ratio = (blended.mean(axis=1) / donor_mean.mean(axis=1)) ** elasticity  # (N, D)
    assert ratio.min() > 1.2  # f sits well above the donors' level
    deviation = at_donor_level.series - blended[:, None]  # the copies' deviations from the donors' mean day
    unclipped = (at_donor_level.series > 0) & (at_blend_level.series > 0)
    assert unclipped.mean() > 0.95
    np.testing.assert_allclose(np.where(unclipped, at_blend_level.series - blended[:, None], 0),
                               np.where(unclipped, ratio[:, None, None] * deviation, 0), rtol=1e-4, atol=1e-3)
    # where spread does not grow with level (speeds), nothing changes
    prior = pipe.donor_prior
    spread = prior.bank_spread.clone()
    prior.bank_spread.copy_(spread.mean() * prior.bank_level.mean() / prior.bank_level)
    np.testing.assert_array_equal(sample(pipe).series, sample(pipe, residual_at_blend_level=False).series)
    prior.bank_spread.copy_(spread)
    pipe.register_to_config(residual_at_blend_level=True)
    # the mean match's shift scales with the deviations: the set's mean stays f + ratio * (expected - donor mean)
    matched = sample(pipe, match_donor_mean=True, mean_match_strength=1.0).series
    rows = torch.tensor([pipe._row_of_node[n] for n in nodes])
    expected = pipe._to_data_units(prior.expected_donor_day(prior.candidate_index[rows], prior(rows)[0], 1.0)).numpy()
    whole = (matched > 0).all(axis=1)
    np.testing.assert_allclose(matched.mean(axis=1)[whole], (blended + ratio[:, None] * (expected - donor_mean))[whole],
                               rtol=1e-4, atol=1e-3)
    pipe.save_pretrained(tmp_path)
    reloaded = KGDiffPipeline.from_pretrained(tmp_path, local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(matched, sample(reloaded).series)
    for bad in ("true", 1, None):
        with pytest.raises(ValueError, match="residual_at_blend_level"):
            KGDiffPipeline(**reloaded.components, **{**_own_config(reloaded), "residual_at_blend_level": bad})


def test_the_spread_level_elasticity_is_the_clipped_log_log_slope_over_donors(city):
    prior = build_pipeline(city, KGDiffModelConfig(**SMALL)).donor_prior
    level = torch.linspace(1.0, 50.0, prior.config.num_bank).unsqueeze(1)
    prior.bank_level.copy_(level)
    for power, expected in ((0.6, 0.6), (1.5, 1.0), (-2.0, 0.0), (0.0, 0.0)):
        prior.bank_spread.copy_(3.0 * level**power)
        np.testing.assert_allclose(prior.spread_level_elasticity().numpy(), [expected], atol=1e-4)
    prior.bank_spread.copy_(3.0 * level**0.6)
    prior.bank_spread[2:] = 0.0  # donors without spread are left out: two remain
    np.testing.assert_allclose(prior.spread_level_elasticity().numpy(), [0.6], atol=1e-4)
    prior.bank_spread[1:] = 0.0  # one donor: no slope
    assert prior.spread_level_elasticity().tolist() == [0.0]
    prior.bank_spread.copy_(3.0 * level**0.6)
    prior.bank_level.fill_(7.0)  # one level: no slope
    assert prior.spread_level_elasticity().tolist() == [0.0]


def test_pipelines_saved_before_level_errors_load_sample_as_before_and_refuse_level_noise(city, tmp_path):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=16))
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(start_strength=0.0, level_exponent=1.0)
    nodes = [city.node_ids[r] for r in city.test_rows]

    def sample(p):
        return p(node_ids=nodes, num_samples=3, num_inference_steps=4, generator=torch.Generator().manual_seed(0))

    expected = sample(pipe).series
    pipe.save_pretrained(tmp_path)
    # What the previous version wrote: no level_error buffer, no has_level_errors / level_noise entries.
    weights = tmp_path / "donor_prior" / "diffusion_pytorch_model.safetensors"
    state = safetensors.torch.load_file(weights)
    del state["level_error"]
    safetensors.torch.save_file(state, weights)
    index = json.loads((tmp_path / "model_index.json").read_text())
    config_path = tmp_path / "donor_prior" / "config.json"
    config = json.loads(config_path.read_text())
    del config["has_level_errors"]
    config_path.write_text(json.dumps(config))
    index["config_sha256"]["donor_prior"] = config_digest(_without_added_defaults(config))
    del index["level_noise"]
    own = {k: v for k, v in index.items() if k not in pipe.components and k != "config_sha256"}
    index["config_sha256"]["model_index"] = config_digest(_without_added_defaults(own))
    (tmp_path / "model_index.json").write_text(json.dumps(index))

    old = KGDiffPipeline.from_pretrained(tmp_path, local_files_only=True)
    old.set_progress_bar_config(disable=True)
    assert not hasattr(old.donor_prior, "level_error") and old.config.level_noise is None
    np.testing.assert_array_equal(sample(old).series, expected)
    with pytest.raises(ValueError, match="level errors"):
        KGDiffPipeline(**old.components, **{**_own_config(old), "level_noise": 0.5})
    old.register_to_config(level_noise=0.5)
    with pytest.raises(ValueError, match="level errors"):
        sample(old)


def test_a_donor_day_start_is_reproducible_batch_independent_and_reloads_bit_identical(city, tmp_path):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL))
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(start_strength=0.5, level_exponent=0.5)
    nodes = [city.node_ids[r] for r in city.test_rows]

    def sample(p, batch_size=256):
        return p(node_ids=nodes, num_samples=5, num_inference_steps=6, generator=torch.Generator().manual_seed(3),
                 batch_size=batch_size).series

    out = sample(pipe)
    assert np.isfinite(out).all() and out.min() >= 0.0
    np.testing.assert_allclose(out, sample(pipe, batch_size=7), rtol=1e-5)  # same streams, other batches
    pipe.register_to_config(start_strength=None)
    assert np.abs(sample(pipe) - out).max() > 1e-3  # pure noise is another process
    pipe.register_to_config(start_strength=0.5)
    pipe.save_pretrained(tmp_path)
    reloaded = KGDiffPipeline.from_pretrained(tmp_path, local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.config.start_strength == 0.5 and reloaded.config.level_exponent == 0.5
    np.testing.assert_array_equal(out, sample(reloaded))
    for sampler in ("ddpm", "dpm++", "unipc"):  # multistep solvers start mid-chain too
        use_sampler(reloaded, sampler)
        assert np.isfinite(sample(reloaded)).all(), sampler


def test_a_pipeline_without_stored_days_samples_from_noise_and_refuses_a_day_start(city, tmp_path):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=0))
    assert not hasattr(pipe.donor_prior, "bank_days")  # the layout of pipelines saved before the day bank
    assert choose_donor_day_start(pipe, city) is None
    pipe.save_pretrained(tmp_path)
    reloaded = KGDiffPipeline.from_pretrained(tmp_path, local_files_only=True)
    assert reloaded.config.start_strength is None
    for setting in ({"start_strength": 0.5}, {"random_donor_share": 0.5}):
        with pytest.raises(ValueError, match="stores days"):
            KGDiffPipeline(**reloaded.components, **{**_own_config(reloaded), **setting})
    for bad in ({"start_strength": 1.5}, {"start_strength": float("nan")}, {"level_exponent": float("nan")}):
        with pytest.raises(ValueError, match="start_strength|level_exponent"):
            KGDiffPipeline(**reloaded.components, **{**_own_config(reloaded), **bad})


def _own_config(pipe: KGDiffPipeline) -> dict:
    return {k: v for k, v in pipe.config.items() if k not in pipe.components and not k.startswith("_")}


def test_the_day_start_is_chosen_by_validation_crps_from_the_grids(city):
    _, validation = split_validation_nodes(city.node_table, city.train_node_ids, 0.25)
    dataset = city.with_split(city.test_node_ids, validation)
    pipe = build_pipeline(dataset, KGDiffModelConfig(**SMALL))
    pipe.set_progress_bar_config(disable=True)
    choice = choose_donor_day_start(pipe, dataset, num_inference_steps=4, max_days_per_node=4)
    assert choice["level_exponent"] in LEVEL_EXPONENTS and choice["start_strength"] in START_STRENGTHS
    assert choice["random_donor_share"] in RANDOM_DONOR_SHARES and choice["level_noise"] in LEVEL_NOISES
    for key in ("level_exponent", "random_donor_share", "level_noise", "start_strength"):
        assert pipe.config[key] == choice[key]
    scores = choice["validation_crps"]
    num_copies = len(LEVEL_EXPONENTS) * len(RANDOM_DONOR_SHARES)
    assert len(scores) == num_copies + len(LEVEL_NOISES) - 1 + len(START_STRENGTHS) - 1
    copies = {k: v for k, v in scores.items() if k.endswith("strength=0") and "level noise" not in k}
    assert len(copies) == num_copies
    best_copy = min(copies, key=copies.get).rsplit(", strength=", 1)[0]
    assert best_copy == f"a={choice['level_exponent']:g}, random donors={choice['random_donor_share']:g}"
    noises = {k: v for k, v in scores.items() if k.endswith("strength=0") and k.startswith(best_copy + ",")}
    assert len(noises) == len(LEVEL_NOISES)  # each level noise scored on the best copies, without denoising
    noise = f", level noise={choice['level_noise']:g}" if choice["level_noise"] else ""
    chosen = f"{best_copy}{noise}, strength={choice['start_strength']:g}"
    assert scores[chosen] == min(scores.values())
    assert pipe.config.match_donor_mean  # left as it was, but the settings were scored on unmatched days:
    pipe.register_to_config(match_donor_mean=False)
    unmatched = choose_donor_day_start(pipe, dataset, num_inference_steps=4, max_days_per_node=4)
    assert unmatched["validation_crps"] == scores and not pipe.config.match_donor_mean
    assert choose_donor_day_start(build_pipeline(city, KGDiffModelConfig(**SMALL)), city) is None  # no validation


def test_a_huge_level_noise_stays_finite(city):
    prior = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=8)).donor_prior
    rows = torch.as_tensor(city.test_rows)
    mean_day, _ = prior(rows)
    days = prior.donor_days(prior.candidate_index[rows], mean_day, 1.0, torch.Generator().manual_seed(0),
                            level_noise=1e4)
    assert torch.isfinite(days).all()


def test_a_checkpoint_state_without_level_errors_resumes_with_the_computed_ones(city):
    prior = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=8)).donor_prior
    computed = prior.level_error.clone()
    state = {k: v for k, v in prior.state_dict().items() if k != "level_error"}  # what a checkpoint held before
    prior.load_state_dict(state, strict=True)
    torch.testing.assert_close(prior.level_error, computed, rtol=0, atol=0)


def test_signed_data_level_noise_adds_a_donors_level_error():
    # 4 signed donors + 1 query on a line (additive mode): e_j = own mean - mean of the candidates' means.
    shape = np.array([1.0, -2.0, 3.0, -2.0], np.float32)
    profiles = np.stack([np.full((1, 4), v, np.float32) + shape for v in (-3.0, 0.0, 2.0, 7.0, 0.0)])
    days = np.repeat(profiles.transpose(0, 2, 1)[:, None], 3, axis=1)  # (5, 3, T, D): every day = the mean day
    locations = np.array([[0.0, 0.00], [0.0, 0.01], [0.0, 0.02], [0.0, 0.03], [0.0, 0.015]])
    prior = KGDiffDonorPrior.from_training_data(
        profiles, np.ones((5, 1), np.float32), np.arange(4), locations, np.arange(5), np.zeros(5, np.int64),
        np.zeros(5, np.int64), num_entities=1, num_relations=1, feature_mean=np.array([0.0]),
        feature_std=np.array([1.0]), num_donors=2, days=days, day_masks=np.ones((5, 3), bool), num_bank_days=3,
    )
    assert prior.config.level_mode == "additive"
    levels = profiles[:4, 0].mean(axis=1)
    candidates = prior.candidate_index[:4].numpy()
    expected = levels - levels[candidates].mean(axis=1)
    np.testing.assert_allclose(prior.level_error.numpy()[:, 0], expected, rtol=1e-5, atol=1e-5)
    mean_day, _ = prior(torch.tensor([4] * 20))
    index = prior.candidate_index[[4] * 20]

    def streams():  # one per day, as the pipeline draws them
        return [torch.Generator().manual_seed(day) for day in range(20)]

    plain = prior.donor_days(index, mean_day, 0.0, streams(), random_donor_share=0.5)
    noisy = prior.donor_days(index, mean_day, 0.0, streams(), random_donor_share=0.5, level_noise=2.0)
    shift = (noisy - plain)[:, 0].numpy()  # (20, T): one constant per day
    np.testing.assert_allclose(shift, shift[:, :1].repeat(4, axis=1), atol=1e-5)
    possible = 2.0 * (expected - expected.mean())
    assert np.abs(shift[:, :1] - possible[None]).min(axis=1).max() < 1e-4
    assert np.ptp(shift) > 1.0  # the days do get different levels
    many = prior.donor_days(prior.candidate_index[[4] * 4000], mean_day[:1].expand(4000, -1, -1), 0.5,
                            torch.Generator().manual_seed(0), random_donor_share=0.5, level_noise=2.0)
    expected = prior.expected_donor_day(index[:1], mean_day[:1], 0.5, random_donor_share=0.5)[0]
    np.testing.assert_allclose(many.mean(0).numpy(), expected.numpy(), atol=0.15)  # level noise adds mean 0


def test_the_day_start_choice_averages_validation_draws(city):
    _, validation = split_validation_nodes(city.node_table, city.train_node_ids, 0.25)
    dataset = city.with_split(city.test_node_ids, validation)
    pipe = build_pipeline(dataset, KGDiffModelConfig(**SMALL))
    pipe.set_progress_bar_config(disable=True)

    def scores(**kwargs) -> dict:
        return choose_donor_day_start(pipe, dataset, num_inference_steps=4, max_days_per_node=4, **kwargs)[
            "validation_crps"]

    first, second = scores(seed=0, num_draws=1), scores(seed=VALIDATION_DRAW_STRIDE, num_draws=1)
    both = scores(seed=0, num_draws=2)
    copies = [k for k in both if k.endswith("strength=0") and "level noise" not in k]
    assert len(copies) == len(LEVEL_EXPONENTS) * len(RANDOM_DONOR_SHARES)
    assert any(first[k] != pytest.approx(second[k]) for k in copies)  # the draws differ
    for key in copies:
        assert both[key] == pytest.approx((first[key] + second[key]) / 2, rel=1e-9)
    with pytest.raises(ValueError, match="num_draws"):
        scores(num_draws=0)
