"""Pipeline parallelism over torch.distributed (see engine.parallel.pipeline)."""

from engine.parallel.pipeline import Pipeline, PipelineConfig, PipelinedGenerator, PipelineError
from engine.parallel.split import balance_layers, split_layers

__all__ = [
    "Pipeline",
    "PipelineConfig",
    "PipelineError",
    "PipelinedGenerator",
    "balance_layers",
    "split_layers",
]
