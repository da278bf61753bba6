import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D

from kgdiff_diffusers import DelayEmbedding, KGDiffUNet2DModel
from kgdiff_diffusers.training import kgdiff_loss

from .conftest import make_tiny_pipeline


def test_step_and_condition_embeddings_reach_every_block():
    unet = KGDiffUNet2DModel(sample_size=16, condition_dim=8, block_out_channels=(16, 32, 32), norm_num_groups=8)
    seen = []
    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            module.time_emb_proj.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    sample = torch.randn(2, 1, 16, 16)
    unet(sample, torch.tensor([5, 5]), torch.zeros(2, 8))
    without = list(seen)
    seen.clear()
    unet(sample, torch.tensor([5, 5]), torch.ones(2, 8))
    with_condition = list(seen)
    seen.clear()
    unet(sample, torch.tensor([9, 9]), torch.ones(2, 8))
    other_step = list(seen)
    num_blocks = len([m for m in unet.modules() if isinstance(m, ResnetBlock2D)])
    assert num_blocks >= 6 and len(without) == num_blocks
    # the embedding added in each block = act(step embedding + condition projection): both change it everywhere
    assert all(not torch.allclose(a, b) for a, b in zip(without, with_condition))
    assert all(not torch.allclose(a, b) for a, b in zip(with_condition, other_step))


def test_unet_rejects_a_wrong_condition_shape():
    unet = KGDiffUNet2DModel(
        sample_size=16,
        condition_dim=8,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )
    with pytest.raises(ValueError, match="condition must be"):
        unet(torch.randn(2, 1, 16, 16), 3, torch.zeros(3, 8))


def test_joint_training_lowers_the_loss_and_pulls_the_meta_pattern_to_the_node_profile():
    torch.manual_seed(0)
    pipe = make_tiny_pipeline(num_nodes=4)
    emb = DelayEmbedding(48, 16, 3)
    hours = torch.arange(48) / 2
    profiles = torch.stack([torch.sin(hours / 24 * 6.283 * (k + 1)) for k in range(4)])  # one shape per node
    modules = torch.nn.ModuleList([pipe.unet, pipe.condition_encoder, pipe.meta_pattern])
    optimiser = torch.optim.Adam(modules.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        rows = torch.randint(0, 4, (32,), generator=gen)
        days = (profiles[rows] + 0.1 * torch.randn(32, 48, generator=gen)).unsqueeze(1)
        out = kgdiff_loss(
            pipe.unet, pipe.condition_encoder, pipe.meta_pattern, pipe.scheduler, emb, days, rows, generator=gen
        )
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        losses.append((float(out.noise_loss), float(out.meta_pattern_loss)))
    first, last = torch.tensor(losses[:10]).mean(0), torch.tensor(losses[-10:]).mean(0)
    assert last[0] < 0.7 * first[0]
    assert last[1] < 0.2 * first[1]
    with torch.no_grad():
        meta = pipe.meta_pattern(pipe.condition_encoder(torch.arange(4)))[:, 0]
    assert (meta - profiles).abs().mean() < 0.25  # f became each node's own daily trend


def test_loss_without_meta_pattern_has_no_meta_term():
    pipe = make_tiny_pipeline(num_nodes=3)
    emb = DelayEmbedding(48, 16, 3)
    out = kgdiff_loss(
        pipe.unet,
        pipe.condition_encoder,
        None,
        pipe.scheduler,
        emb,
        torch.randn(5, 1, 48),
        torch.tensor([0, 1, 2, 0, 1]),
    )
    assert float(out.meta_pattern_loss) == 0.0 and torch.equal(out.loss, out.noise_loss)


def test_meta_pattern_is_an_input_channel():
    unet = KGDiffUNet2DModel(
        sample_size=16,
        num_features=2,
        condition_dim=8,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )
    assert unet.unet.config.in_channels == 4 and unet.unet.config.out_channels == 2
    sample, condition = torch.randn(3, 2, 16, 16), torch.randn(3, 8)
    without = unet(sample, 4, condition).sample
    assert torch.equal(without, unet(sample, 4, condition, meta_pattern=torch.zeros_like(sample)).sample)
    assert not torch.allclose(without, unet(sample, 4, condition, meta_pattern=torch.ones_like(sample)).sample)
