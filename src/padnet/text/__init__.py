"""Text pipeline: BERT-family models on GLUE, with FFN outputs as (PAD) MoE.

Importing this package registers the ``glue`` task with the trainer (``padnet.train.tasks``);
transformers is imported only when a run is built.
"""

from .glue_task import GlueConfig, build_glue, check_glue

__all__ = ["GlueConfig", "build_glue", "check_glue"]
