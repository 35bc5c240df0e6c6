"""Training: typed configs, the task registry, the trainer, and sweeps.

    from padnet.train import load_config, Trainer
    results = Trainer(load_config("configs/fmnist_demo.yaml", ["seed=1"])).train()
"""

from .config import RunConfig, config_from_dict, load_config
from .rebuild import ExportCheckError, evaluate_run, export_run
from .tasks import TaskParts, get_task, known_tasks, register_task
from .trainer import RunDirError, Trainer

__all__ = [
    "ExportCheckError",
    "RunConfig",
    "RunDirError",
    "TaskParts",
    "Trainer",
    "config_from_dict",
    "evaluate_run",
    "export_run",
    "get_task",
    "known_tasks",
    "load_config",
    "register_task",
]
