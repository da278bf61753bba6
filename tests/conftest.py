import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from kgdiff_diffusers import (
    KGConditionEncoder,
    KGDiffMetaPattern,
    KGDiffPipeline,
    KGDiffScheduler,
    KGDiffUNet2DModel,
)

# Test tensors are tiny: one thread avoids OpenMP start-up and barrier costs, which dominate on a busy 2-core box.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_module(name: str):
    """``bench/<name>.py`` as the module ``bench_<name>`` (with bench/ importable while it loads)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"bench_{name}"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def make_tiny_pipeline(num_nodes: int = 6, num_features: int = 1, seed: int = 0) -> KGDiffPipeline:
    """A small untrained pipeline on a random KG: 48-step days, 16x16 images."""
    generator = torch.Generator().manual_seed(seed)
    num_entities, num_relations, dim = 40, 8, 16
    edge_node = torch.arange(num_nodes).repeat_interleave(3)
    edge_relation = torch.randint(0, num_relations, (len(edge_node),), generator=generator)
    edge_neighbor = torch.randint(num_nodes, num_entities, (len(edge_node),), generator=generator)
    torch.manual_seed(seed)
    encoder = KGConditionEncoder.from_knowledge_graph(
        torch.randn(num_entities, dim, generator=generator),
        torch.randn(num_relations, dim, generator=generator),
        edge_node,
        edge_relation,
        edge_neighbor,
        num_nodes,
        condition_dim=16,
    )
    unet = KGDiffUNet2DModel(
        sample_size=16,
        num_features=num_features,
        condition_dim=16,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    meta_pattern = KGDiffMetaPattern(condition_dim=16, seq_len=48, num_features=num_features, hidden_dim=32)
    pipe = KGDiffPipeline(
        unet=unet,
        condition_encoder=encoder,
        scheduler=KGDiffScheduler(num_train_timesteps=50),
        meta_pattern=meta_pattern,
        node_ids=[f"node{i}" for i in range(num_nodes)],
        feature_names=[f"f{i}" for i in range(num_features)],
        feature_mean=[50.0] * num_features,
        feature_std=[10.0] * num_features,
        seq_len=48,
        delay_window=16,
        delay_stride=3,
        entity_names=[f"E{i}" for i in range(num_entities)],
        relation_names=[f"R{i}" for i in range(num_relations)],
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_pipeline() -> KGDiffPipeline:
    return make_tiny_pipeline()
