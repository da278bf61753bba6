import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from kgdiff_diffusers import KGDiffScheduler
from kgdiff_diffusers.schedulers.scheduling_kgdiff import make_sampler

SHAPE = (4, 2, 16, 16)


def paired_schedulers(**config):
    kgdiff = KGDiffScheduler(num_train_timesteps=200, **config)
    ddpm = DDPMScheduler(
        num_train_timesteps=200, beta_schedule=kgdiff.config.beta_schedule, clip_sample=False,
        variance_type=kgdiff.config.variance_type, timestep_spacing=kgdiff.config.timestep_spacing,
    )
    return kgdiff, ddpm


@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "linear"])
def test_add_noise_equals_ddpm_when_meta_pattern_is_zero(beta_schedule):
    kgdiff, ddpm = paired_schedulers(beta_schedule=beta_schedule)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([0, 17, 120, 199])
    expected = ddpm.add_noise(x0, noise, t)
    assert torch.equal(kgdiff.add_noise(x0, noise, t), expected)
    assert torch.equal(kgdiff.add_noise(x0, noise, t, meta_pattern=torch.zeros(SHAPE)), expected)


@pytest.mark.parametrize("num_inference_steps", [None, 20])
def test_step_equals_ddpm_when_meta_pattern_is_zero(num_inference_steps):
    kgdiff, ddpm = paired_schedulers()
    if num_inference_steps:
        kgdiff.set_timesteps(num_inference_steps)
        ddpm.set_timesteps(num_inference_steps)
    assert torch.equal(kgdiff.timesteps, ddpm.timesteps)
    sample_k = sample_d = torch.randn(SHAPE)
    gen_k, gen_d = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for i, t in enumerate(kgdiff.timesteps):
        eps = torch.sin(sample_k * (i + 1))  # any deterministic "model"
        out_k = kgdiff.step(eps, t, sample_k, meta_pattern=torch.zeros(SHAPE), generator=gen_k)
        out_d = ddpm.step(eps, t, sample_d, generator=gen_d)
        assert torch.equal(out_k.prev_sample, out_d.prev_sample), f"diverged at t={int(t)}"
        assert torch.equal(out_k.pred_original_sample, out_d.pred_original_sample)
        sample_k, sample_d = out_k.prev_sample, out_d.prev_sample


@pytest.mark.parametrize("num_inference_steps", [None, 25])
def test_gamma_coefficients_sum_to_one_and_match_card(num_inference_steps):
    scheduler = KGDiffScheduler(num_train_timesteps=200)
    if num_inference_steps:
        scheduler.set_timesteps(num_inference_steps)
    abar = scheduler.alphas_cumprod.double()
    for t in scheduler.timesteps[:-1]:
        t, prev = int(t), scheduler.previous_timestep(int(t))
        c = scheduler.posterior_coefficients(t)
        assert abs(float(c.g0 + c.g1 + c.g2) - 1.0) < 1e-4  # float32: 1 - abar_i loses digits at small i
        alpha = abar[t] / abar[prev]
        beta = 1 - alpha
        g0 = beta * abar[prev].sqrt() / (1 - abar[t])
        g1 = (1 - abar[prev]) * alpha.sqrt() / (1 - abar[t])
        g2 = 1 + (abar[t].sqrt() - 1) * (alpha.sqrt() + abar[prev].sqrt()) / (1 - abar[t])
        assert abs(float(g0 + g1 + g2) - 1.0) < 1e-12  # the identity itself, in float64
        assert float(c.g2) == pytest.approx(float(g2), rel=1e-5, abs=1e-9)
        assert float(c.g0) == pytest.approx(float(beta * abar[prev].sqrt() / (1 - abar[t])), rel=1e-4)
        assert float(c.g1) == pytest.approx(float((1 - abar[prev]) * alpha.sqrt() / (1 - abar[t])), rel=1e-4)
        assert float(c.variance) == pytest.approx(float((1 - abar[prev]) / (1 - abar[t]) * beta), rel=1e-4)


def test_forward_marginal_mean_and_variance_by_monte_carlo():
    scheduler = KGDiffScheduler(num_train_timesteps=200)
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0, f = torch.tensor(2.0), torch.tensor(-3.0)
    for t in (10, 80, 150):
        noise = torch.randn(n, 1, 1, 1, generator=gen)
        x_t = scheduler.add_noise(x0.expand(n, 1, 1, 1), noise, torch.full((n,), t), f.expand(n, 1, 1, 1))
        abar = scheduler.alphas_cumprod[t]
        mean = abar.sqrt() * x0 + (1 - abar.sqrt()) * f
        assert float(x_t.mean()) == pytest.approx(float(mean), abs=0.01)
        assert float(x_t.var()) == pytest.approx(float(1 - abar), rel=0.02)


def test_posterior_step_is_ddpm_on_the_residual():
    """X - f follows plain DDPM: step(X, f) - f == DDPM.step(X - f) for the same noise."""
    kgdiff, ddpm = paired_schedulers()
    f = torch.randn(SHAPE) * 3
    x = torch.randn(SHAPE) + f
    for t in (150, 40, 1):
        eps = torch.randn(SHAPE)
        ours = kgdiff.step(eps, t, x, meta_pattern=f, generator=torch.Generator().manual_seed(t))
        plain = ddpm.step(eps, t, x - f, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(ours.prev_sample - f, plain.prev_sample, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(ours.pred_original_sample - f, plain.pred_original_sample, atol=2e-5, rtol=1e-5)


def oracle_sampling(scheduler, x0, f, steps, shifted):
    """Sample with the exact noise predictor for a point mass at x0; returns the final sample."""
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(3)
    abar = scheduler.alphas_cumprod
    x = f + torch.randn(x0.shape, generator=gen) if shifted else torch.randn(x0.shape, generator=gen)
    for t in scheduler.timesteps:
        model_input = x if shifted else x + f
        eps = (model_input - abar[t].sqrt() * x0 - (1 - abar[t].sqrt()) * f) / (1 - abar[t]).sqrt()
        if shifted:
            x = scheduler.step(eps, t, x, meta_pattern=f, generator=gen).prev_sample
        else:
            x = scheduler.step(eps, t, x, generator=gen).prev_sample
    return x if shifted else x + f


@pytest.mark.parametrize("sampler", ["kgdiff", "ddim", "dpm++"])
def test_fast_samplers_run_the_shifted_process_on_the_residual(sampler):
    x0, f = torch.randn(SHAPE), torch.randn(SHAPE) * 2
    base = KGDiffScheduler(num_train_timesteps=200)
    if sampler == "kgdiff":
        out = oracle_sampling(base, x0, f, 20, shifted=True)
    else:
        fast = make_sampler(sampler, base.config)
        assert isinstance(fast, DDIMScheduler if sampler == "ddim" else DPMSolverMultistepScheduler)
        assert torch.equal(fast.alphas_cumprod, base.alphas_cumprod)
        out = oracle_sampling(fast, x0, f, 20, shifted=False)
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)


def test_initial_sample_is_meta_pattern_plus_noise_and_config_round_trip(tmp_path):
    scheduler = KGDiffScheduler(num_train_timesteps=120, beta_schedule="linear", beta_end=0.05)
    f = torch.full(SHAPE, 7.0)
    start = scheduler.initial_sample(SHAPE, f, generator=torch.Generator().manual_seed(0))
    assert torch.equal(start - f, torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) + 7.0 - f)
    scheduler.save_pretrained(tmp_path)
    loaded = KGDiffScheduler.from_pretrained(tmp_path)
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in scheduler.config.items() if not k.startswith("_")
    }
    assert torch.equal(loaded.alphas_cumprod, scheduler.alphas_cumprod)


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="beta_schedule"):
        KGDiffScheduler(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("euler-magic", KGDiffScheduler().config)
    with pytest.raises(ValueError, match="num_inference_steps"):
        KGDiffScheduler(num_train_timesteps=50).set_timesteps(60)


def test_every_sampler_starts_a_chain_near_the_top_for_any_step_count():
    """diffusers' leading spacing starts 67 of 200 steps at t = 132 (and DPM-Solver++ 50 steps at t = 150)."""
    base = KGDiffScheduler(num_train_timesteps=200)
    reference, _ = paired_schedulers()
    for num_inference_steps in (20, 50, 100, 200):  # divisors: the DDPM chain is diffusers' own
        base.set_timesteps(num_inference_steps)
        reference.set_timesteps(num_inference_steps)
        assert torch.equal(base.timesteps, reference.timesteps)
    for name in ("ddpm", "dpm++", "unipc"):
        sampler = make_sampler(name, base.config)
        for num_inference_steps in (3, 50, 67, 101, 150, 200):
            sampler.set_timesteps(num_inference_steps)
            steps = sampler.timesteps
            assert int(steps[0]) >= 199 - 200 / num_inference_steps, (name, num_inference_steps, int(steps[0]))
            assert len(set(steps.tolist())) == len(steps) and bool((steps[:-1] > steps[1:]).all())
