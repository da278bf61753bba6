"""kgdiff-diffusers: KGDiff (knowledge-graph-guided diffusion for urban spatio-temporal data) for diffusers."""

from .delay_embedding import DelayEmbedding
from .models.condition_encoder import KGConditionEncoder
from .models.meta_pattern import KGDiffMetaPattern
from .models.unet_kgdiff import KGDiffUNet2DModel
from .pipelines.pipeline_kgdiff import KGDiffPipeline, KGDiffPipelineOutput
from .schedulers.scheduling_kgdiff import KGDiffScheduler, KGDiffSchedulerOutput

__version__ = "0.1.0"

__all__ = [
    "DelayEmbedding",
    "KGConditionEncoder",
    "KGDiffMetaPattern",
    "KGDiffPipeline",
    "KGDiffPipelineOutput",
    "KGDiffScheduler",
    "KGDiffSchedulerOutput",
    "KGDiffUNet2DModel",
]
