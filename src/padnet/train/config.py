"""Typed run configuration: pydantic models loaded from YAML, with ``--set key=value`` overrides.

One config = one run. The top level holds the run settings (seed, epochs, batch size, run_dir) and the
sections ``dynamic``, ``partition`` and ``optim``; the task named by ``task`` adds its own sections
(``image_classification``: ``data`` and ``model``), dataclasses declared where the task is registered
(``padnet.train.tasks``) and read with ``config.section(name, cls)``. The ``dynamic`` section holds
every setting of ``padnet.convert`` (``padnet.layers.ConvertOptions``) beside the run's own keys.
``load_config`` validates every key before any work starts (unknown keys, wrong types, out-of-range
values, cross-field rules, and the task's own pre-flight checks such as "is the data there") and raises
one ``ConfigError`` listing all problems, each naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import pydantic
from pydantic import AfterValidator, Field, create_model, model_validator
from ruamel.yaml import YAMLError

from ..distributed import DEVICES
from ..errors import ConfigError
from ..layers import ConvertConfig, ConvertOptions
from ..layers.conv_strategy import STRATEGY_MODES
from ..layers.conversions import conversion_kinds, get_conversion
from ..layers.settings import ConvertSettings, convert_options
from ..partition import SCHEDULES, SCOPES, scorer_names
from ..plugins import PluginError, import_plugins
from ..strict_yaml import load_yaml, read_yaml
from ..validation import Section, fields_of, one_of, refuse, validate
from .tasks import get_task

T = TypeVar("T")

LrScheduler = Literal["cosine", "constant"]  # after the warm-up: per-step cosine decay to 0, or constant
# Upper bounds on sizes a config can set, checked before anything is built (a value past them is a typo
# or an attack, and would otherwise surface as an out-of-memory kill or a raw RuntimeError).
MAX_SEED = 2**32 - 1
MAX_BATCH = 2**20
MAX_STEPS = 10**7
MAX_WIDTH = 4096
SECTIONS = ("dynamic", "partition", "optim")  # the trainer's sections; a task adds its own


@functools.cache
def _model_of(cls: type) -> type[Section]:
    """A task section's dataclass as a ``Section`` with its fields, running its ``problems()`` if it has one."""
    def task_rules(section: Section) -> Section:
        refuse(getattr(cls(**dict(section)), "problems", list)())
        return section
    validators: dict[str, Any] = {"task_rules": model_validator(mode="after")(task_rules)}
    return create_model(cls.__name__, __base__=Section, **fields_of(cls), __validators__=validators)


class RunDynamicKeys(Section):
    """The ``dynamic`` section's keys that only a run has (``DynamicConfig`` adds the convert settings), and
    the rules of them all."""

    mode: Literal["static", "dynamic", "pad"] = "static"  # static (untouched), dynamic (fully, kappa = 1) or pad
    # padnet.convert's ``dynamic``: conv (DY-Conv / CondConv in place of convolutions), moe (FFN outputs as
    # MoE), or another registered kind (padnet.layers.conversions)
    kind: Annotated[str, one_of(conversion_kinds)] = "conv"
    dynamic_ratio: Annotated[float, Field(gt=0, le=1)] = 0.3  # kappa, for mode=pad
    temperature_start: Annotated[float, Field(gt=0)] = 30.0  # DY-Conv softmax temperature, annealed linearly ...
    temperature_end: Annotated[float, Field(gt=0)] = 1.0  # ... to this temperature ...
    temperature_epochs: Annotated[float, Field(ge=0)] = 10.0  # ... over this many epochs

    def convert_config(self) -> ConvertConfig | None:
        """What ``padnet.convert`` is given for this run; None for mode=static (nothing is converted)."""
        return None if self.mode == "static" else ConvertConfig(dynamic=self.kind, pad=self.mode == "pad",
                                                                 **convert_options(self))

    @model_validator(mode="after")
    def _kind_rules(self) -> RunDynamicKeys:
        # The kind's own rules (e.g. conv: upcycle needs softmax), once the settings they read are valid.
        config = self.convert_config()
        refuse(get_conversion(self.kind).problems(config, "dynamic.") if config is not None else [])
        return self


class DynamicConfig(ConvertSettings, RunDynamicKeys):  # type: ignore[misc, valid-type]  # a pydantic create_model
    """How the model is made dynamic: every setting of ``padnet.convert`` under its name there, declared once
    (``padnet.layers.ConvertOptions``), and the run's keys, the base listed last so that they come first
    in config.yaml and in messages."""

    padnet_field_sources: ClassVar[tuple[type, ...]] = (ConvertOptions,)  # where padnet config --explain reads


class PartitionConfig(Section):
    """Iterative Mode Partition before training (mode=pad only)."""

    scorer: Annotated[str, one_of(scorer_names)] = "taylor"  # how entries are ranked: the method, or a baseline
    rounds: Annotated[int, Field(ge=1, le=1000)] = 5  # partition rounds (1: one-shot)
    schedule: Annotated[str, one_of(SCHEDULES)] = "exponential"  # how kappa falls from 1 over the rounds
    scope: Annotated[str, one_of(SCOPES)] = "global"  # rank entries across all layers, or per layer
    scoring_batches: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 10  # scoring set: this many training batches
    # scoring batch size; None: the training batch size (it may not exceed the training set either)
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] | None = None
    # fully dynamic training steps before partitioning (needed for upcycled MoE)
    warmup_steps: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 0
    compact: bool = True  # drop the unused entries after partitioning, so optimizer state shrinks
    # What W_s holds at the entries the partition makes static (docs/method.md, Iterative Mode Partition).
    # "keep": W_s as it is (initialised independently, or the pretrained weight for an upcycled MoE; it gets
    # no gradient while the mask is all ones, so it misses the warm-up). "dynamic_mean": lambda_d / lambda_s
    # x the mean of the K dynamic kernels there, so the partition changes a warmed-up model's function as
    # little as it can.
    static_init: Literal["keep", "dynamic_mean"] = "keep"


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"  # the optimizer
    lr: Annotated[float, Field(gt=0)] = 0.1  # base learning rate (after the warm-up)
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # sgd: the momentum factor
    nesterov: bool = False  # sgd: Nesterov momentum
    # adamw: the decay rates of the running averages of the gradient and of its square
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [0.9, 0.999])
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4  # L2 (sgd) or decoupled (adamw) weight decay
    scheduler: LrScheduler = "cosine"  # after the warm-up: per-step cosine decay to 0, or constant
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.0  # linear warm-up (fraction of epochs allowed)
    grad_clip: Annotated[float, Field(gt=0)] | None = None  # max gradient norm; None: no clipping

    @model_validator(mode="after")
    def _nesterov(self) -> OptimConfig:
        refuse(["optim.nesterov=true needs optim.momentum > 0"] if self.nesterov and self.momentum == 0 else [])
        return self


class EmaConfig(Section):
    """An exponential moving average of the weights (timm's ``--model-ema``): after every optimizer step
    ``ema = decay * ema + (1 - decay) * weights`` (``torch.optim.swa_utils``); buffers (BatchNorm
    statistics, PAD masks) are copied. When set, the run evaluates, checkpoints and exports the average."""

    decay: Annotated[float, Field(gt=0, lt=1)] = 0.9998  # the share of the average kept at each step


def _own_directory(run_dir: str) -> str:
    if Path(run_dir.strip()) == Path("."):  # also "" and "  "
        refuse([f"run_dir={run_dir!r} must name a directory of its own (not empty, not the current directory); "
                 "e.g. runs/my-run"])
    return run_dir


class RunConfig(Section):
    """A whole run. Task sections (e.g. ``data``, ``model``) live in ``sections``, each the dataclass its
    task declared: ``config.section("data", DataConfig).root``."""

    task: str = "image_classification"  # a registered task (padnet.train.tasks); it adds its own sections
    name: str | None = None  # label of the run in reports, e.g. "pad-0.3"; default: derived
    run_dir: Annotated[str, AfterValidator(_own_directory)] = "runs/default"  # where the run writes its files
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0  # the same seed gives the same partition and metrics
    epochs: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 3  # training epochs
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 128  # training batch size (per process)
    eval_batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 256  # evaluation batch size
    eval_every: Annotated[int, Field(ge=1)] = 1  # evaluate every N epochs (the last epoch always)
    num_workers: Annotated[int, Field(ge=0, le=256)] = 0  # DataLoader worker processes
    device: Annotated[str, one_of(DEVICES)] = "cpu"  # auto: CUDA when available (cuda:LOCAL_RANK under torchrun)
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None  # torch.set_num_threads; None: torch's default
    # How dynamic convs compute (padnet.layers.conv_strategy): "heuristic" (default) is a deterministic
    # rule, so the same seed gives the same metrics; "autotune" times the strategies per shape on this
    # machine (the picks go into the checkpoint, so a resumed run computes as before); or pin a strategy.
    conv_strategy: Annotated[str, one_of(STRATEGY_MODES)] = "heuristic"
    # Mixed precision: torch.autocast on the run's device in training and evaluation, with float16 scaled
    # by a GradScaler (its state in the checkpoint); padnet's routers and attention softmaxes run in
    # float32 inside it (docs/usage.md#machines)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # micro-batches of batch_size per optimizer step (the effective batch is batch_size x this x processes);
    # the learning-rate and temperature schedules count optimizer steps
    accumulate_steps: Annotated[int, Field(ge=1, le=4096)] = 1
    # torch.compile the model for training and evaluation (Inductor); on a CPU it slows dynamic layers
    # (docs/results/efficiency.md)
    compile: bool = False
    channels_last: bool = False  # the model and its image batches in the channels_last memory format
    ema: EmaConfig | None = None  # an exponential moving average of the weights; null: none
    progress: bool = True  # tqdm bars
    tensorboard: bool = True  # if tensorboard is importable
    log_every: Annotated[int, Field(ge=1)] = 50  # steps between loss lines in the log file
    imports: list[str] = Field(default_factory=list)  # plug-in modules imported first (padnet.plugins)
    dynamic: DynamicConfig = Field(default_factory=DynamicConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    _sections: dict[str, Any] = pydantic.PrivateAttr(default_factory=dict)

    @property
    def sections(self) -> dict[str, Any]:
        """The task's sections by name, each an instance of the dataclass the task declared."""
        return self._sections

    def section(self, name: str, cls: type[T]) -> T:
        """The task section ``name`` (one the task declared with ``register_task(sections=...)``), checked
        to be a ``cls`` and typed as one: ``config.section("data", DataConfig)``."""
        if name not in self.sections:
            raise KeyError(f"task {self.task!r} has no config section {name!r}; its sections: "
                           f"{', '.join(self.sections) or 'none'}")
        value = self.sections[name]
        if not isinstance(value, cls):
            raise TypeError(f"config section {name!r} holds a {type(value).__name__}; expected a {cls.__name__}")
        return value

    @property
    def label(self) -> str:
        d = self.dynamic
        if self.name or d.mode != "pad":
            return self.name or ("static" if d.mode == "static" else f"dynamic-{d.kind}")
        channel = "-channel" if d.granularity == "channel" else ""
        return f"pad-{d.dynamic_ratio:g}{channel}-{self.partition.scorer}"

    def to_dict(self) -> dict:
        """Plain values (config.yaml, checkpoints): the run's keys, then the task's sections."""
        return {**self.model_dump(), **{name: dataclasses.asdict(s) for name, s in self.sections.items()}}


def parse_overrides(overrides: list[str] | None, problems: list[str]) -> dict:
    """``["optim.lr=0.05", "data.root=/x"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    nested: dict = {}
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r} must look like key=value (e.g. optim.lr=0.05)")
            continue
        try:
            value = load_yaml(text) if text.strip() else ""
        except YAMLError:
            value = text
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {item!r}: {part!r} is both a value and a section")
                break
        else:
            node[parts[-1]] = value
    return nested


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge (``update`` wins); returns a new dict."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(raw: dict, overrides: list[str] | None = None, source: str | None = None,
                     preflight: bool = True, stored: bool = False) -> RunConfig:
    """Validate ``raw`` (plus ``--set`` overrides) into a ``RunConfig``; raise ``ConfigError`` with all
    problems. ``preflight`` also runs the task's checks (e.g. that the data exists), with defaults in place
    of bad values. ``stored``: ``raw`` is a stored run's config (eval, export): its ``imports`` are never looked for
    as files (a run directory from elsewhere could carry code that its own config imports); ``source``'s
    directory resolves them only for a config the user passes."""
    if isinstance(raw, dict) and "runs" in raw:  # a sweep's key, no run config's
        raise ConfigError([f"this is a sweep config (it has runs:), not a run config; run it with padnet sweep "
                           f"--config {source or 'FILE'}"], source)
    problems: list[str] = []
    raw = merge(raw or {}, parse_overrides(overrides, problems))
    _import_plugins(raw.get("imports"), source, stored, problems)
    try:
        task = get_task(raw.get("task", "image_classification"))
    except (KeyError, TypeError) as err:
        problems.append(str(err.args[0]) if err.args else str(err))
        task = None
    section_types = task.sections if task else {}
    # A section with nothing under it (``optim:``) holds the defaults, as an absent one does.
    top = {k: v for k, v in raw.items() if k not in section_types and (v is not None or k not in SECTIONS)}
    if task is None:
        # The task's own sections are unknown: do not call them unknown keys (the task problem says it).
        top = {k: v for k, v in top.items() if k in RunConfig.model_fields or not isinstance(v, dict)}
    config = validate(RunConfig, top, problems, extra_keys=section_types)
    sections = {name: validate(_model_of(cls), {} if raw.get(name) is None else raw[name], problems, name)
                for name, cls in section_types.items()}
    valid = {name: section for name, section in sections.items() if section is not None}
    if config is not None and len(valid) == len(sections):
        config.sections.update({name: section_types[name](**dict(section)) for name, section in valid.items()})
        if task is not None and task.check is not None and preflight:
            try:
                problems.extend(task.check(config))
            except Exception as err:  # a check must never hide the problems already found
                problems.append(f"task {task.name!r} pre-flight check failed: {err}")
    if problems or config is None:
        raise ConfigError(problems, source)
    return config


def _import_plugins(names, source: str | None, stored: bool, problems: list[str]) -> None:
    """Import the config's ``imports`` (modules that register tasks) before its task is looked up: for a
    config the user passes, files are resolved against its directory; for a stored run's config, only
    installed modules and plug-ins named again with ``--import`` (``padnet.plugins``)."""
    if not isinstance(names, list):  # nothing to import; or not a list, which the validation reports
        return
    base = Path(source).parent if source and not stored and Path(source).is_file() else None
    try:
        import_plugins(names, base, key="imports", stored=stored)
    except PluginError as err:
        problems.append(str(err))


def load_config(path: str | Path, overrides: list[str] | None = None, preflight: bool = True) -> RunConfig:
    return config_from_dict(read_yaml(path), overrides, str(path), preflight)
