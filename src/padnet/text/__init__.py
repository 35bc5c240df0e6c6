"""Text pipeline: BERT-family models on your own labelled text or GLUE, with FFN outputs as (PAD) MoE.

Importing this package registers the ``text_classification`` and ``glue`` tasks with the trainer
(``padnet.train.tasks``); transformers is imported only when a run is built.
"""

from .classification import TextClassificationConfig
from .glue_task import GlueConfig, build_glue, check_glue

__all__ = ["GlueConfig", "TextClassificationConfig", "build_glue", "check_glue"]
