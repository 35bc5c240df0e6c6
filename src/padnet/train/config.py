"""Typed run configuration: dataclasses loaded from YAML, with ``--set key=value`` overrides.

One config = one run. The top level holds the run settings (seed, epochs, batch size, run_dir) and the
sections ``dynamic``, ``partition`` and ``optim``; the task named by ``task`` adds its own sections
(``image_classification``: ``data`` and ``model``), declared where the task is registered
(``padnet.train.tasks``) and read with ``config.section(name, cls)``. The ``dynamic`` section holds
every setting of ``padnet.convert`` (``padnet.convert.ConvertOptions``) beside the run's own keys.
``load_config`` validates every key before any work starts (unknown keys, wrong types, out-of-range
values, cross-field rules, and the task's own pre-flight checks such as "is the data there") and raises
one ``ConfigError`` listing all problems, each naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..errors import ConfigError, cut, shorten
from ..layers import ConvertConfig, ConvertOptions
from ..layers._validate import choice_problem, int_problem
from ..layers.conv_strategy import STRATEGY_MODES
from ..layers.conversions import conversion_kinds, get_conversion
from ..partition import SCHEDULES, SCOPES, scorer_names
from ..plugins import PluginError, import_plugins
from .strict_yaml import load_yaml
from .tasks import get_task

T = TypeVar("T")

MODES = ("static", "dynamic", "pad")
STATIC_INITS = ("keep", "dynamic_mean")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULERS = ("cosine", "constant")
DEVICES = ("cpu", "cuda", "auto")
MAX_CONFIG_BYTES = 1024 * 1024
# Upper bounds on sizes a config can set, checked before anything is built (a value past them is a typo
# or an attack, and would otherwise surface as an out-of-memory kill or a raw RuntimeError).
MAX_SEED = 2**32 - 1
MAX_BATCH = 2**20
MAX_STEPS = 10**7
MAX_KERNELS = 64
MAX_EXPERTS = 1024
MAX_WIDTH = 4096




@dataclass(kw_only=True)
class RunDynamicKeys:
    """The ``dynamic`` section's keys that only a run has (``DynamicConfig`` adds the convert settings)."""

    mode: str = "static"  # static (untouched), dynamic (fully, kappa = 1) or pad
    kind: str = "conv"  # padnet.convert's ``dynamic``: conv (DY-Conv / CondConv in place of convolutions),
    # moe (FFN outputs as MoE), or another registered kind (padnet.layers.conversions)
    dynamic_ratio: float = 0.3  # kappa, for mode=pad
    temperature_start: float = 30.0  # DY-Conv softmax temperature, annealed linearly ...
    temperature_end: float = 1.0
    temperature_epochs: float = 10.0  # ... over this many epochs


# The run's own keys are the base listed last so that they come first in config.yaml and in messages.
@dataclass(kw_only=True)
class DynamicConfig(ConvertOptions, RunDynamicKeys):
    """How the model is made dynamic: the run's keys (``RunDynamicKeys``) and every setting of
    ``padnet.convert`` (``padnet.convert.ConvertOptions``: num_kernels, routing, ..., include, exclude),
    under the names ``padnet.convert`` gives them."""

    def convert_config(self) -> ConvertConfig | None:
        """What ``padnet.convert`` is given for this run; None for mode=static (nothing is converted)."""
        if self.mode == "static":
            return None
        return ConvertConfig(dynamic=self.kind, pad=self.mode == "pad", **self.options())

    def problems(self) -> list[str]:
        out = _choices("dynamic", self, mode=MODES, kind=conversion_kinds())
        out += ConvertOptions.problems(self, "dynamic.")
        if not out and self.mode != "static":
            # The kind's own rules (e.g. conv: upcycle needs softmax), once the settings they read are valid.
            out += get_conversion(self.kind).problems(self.convert_config(), "dynamic.")
        out += _at_most("dynamic", self, num_kernels=MAX_KERNELS, reduction=MAX_WIDTH, num_experts=MAX_EXPERTS)
        if not 0 < self.dynamic_ratio <= 1:
            out.append(f"dynamic.dynamic_ratio={self.dynamic_ratio!r} must be in (0, 1]")
        for key in ("temperature_start", "temperature_end"):
            if not getattr(self, key) > 0:
                out.append(f"dynamic.{key}={getattr(self, key)!r} must be > 0")
        if not self.temperature_epochs >= 0:
            out.append(f"dynamic.temperature_epochs={self.temperature_epochs!r} must be >= 0")
        return out


@dataclass
class PartitionConfig:
    """Iterative Mode Partition before training (mode=pad only)."""

    scorer: str = "taylor"
    rounds: int = 5
    schedule: str = "exponential"
    scope: str = "global"
    scoring_batches: int = 10  # scoring set: this many training batches (reference: 10)
    batch_size: int | None = None  # scoring batch size; None: the training batch size
    warmup_steps: int = 0  # fully dynamic training steps before partitioning (needed for upcycled MoE)
    compact: bool = True  # drop the unused entries after partitioning, so optimizer state shrinks
    # What W_s holds at the entries the partition makes static. "keep": W_s as it is (SPEC: initialised
    # independently, or the pretrained weight for an upcycled MoE; it gets no gradient while the mask is
    # all ones, so it misses the warm-up). "dynamic_mean": lambda_d / lambda_s x the mean of the K
    # dynamic kernels there, so the partition changes a warmed-up model's function as little as it can.
    static_init: str = "keep"

    def problems(self) -> list[str]:
        out = _choices("partition", self, scorer=scorer_names(), schedule=SCHEDULES, scope=SCOPES,
                       static_init=STATIC_INITS)
        out += _at_least("partition", self, rounds=1, scoring_batches=1, warmup_steps=0)
        out += _at_most("partition", self, rounds=1000, scoring_batches=MAX_STEPS, warmup_steps=MAX_STEPS)
        if self.batch_size is not None and not 1 <= self.batch_size <= MAX_BATCH:
            out.append(f"partition.batch_size={self.batch_size!r} must be an integer in [1, {MAX_BATCH}] or null "
                       "(the training batch size); it may not exceed the training set either")
        return out


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    weight_decay: float = 5e-4
    scheduler: str = "cosine"  # per-step cosine decay to 0, or constant
    warmup_epochs: float = 0.0  # linear warm-up (fraction of epochs allowed)
    grad_clip: float | None = None  # max gradient norm

    def problems(self) -> list[str]:
        out = _choices("optim", self, name=OPTIMIZERS, scheduler=LR_SCHEDULERS)
        if not self.lr > 0:
            out.append(f"optim.lr={self.lr!r} must be > 0")
        if not 0 <= self.momentum < 1:
            out.append(f"optim.momentum={self.momentum!r} must be in [0, 1)")
        if self.nesterov and self.momentum == 0:
            out.append("optim.nesterov=true needs optim.momentum > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            out.append(f"optim.betas={self.betas!r} must be two numbers in [0, 1)")
        if not self.weight_decay >= 0:
            out.append(f"optim.weight_decay={self.weight_decay!r} must be >= 0")
        if not self.warmup_epochs >= 0:
            out.append(f"optim.warmup_epochs={self.warmup_epochs!r} must be >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            out.append(f"optim.grad_clip={self.grad_clip!r} must be > 0 or null (no clipping)")
        return out


@dataclass
class RunConfig:
    """A whole run. Task sections (e.g. ``data``, ``model``) live in ``sections``, each the dataclass its
    task declared: ``config.section("data", DataConfig).root``."""

    task: str = "image_classification"
    name: str | None = None  # label of the run in reports, e.g. "pad-0.3"; default: derived
    run_dir: str = "runs/default"
    seed: int = 0
    epochs: int = 3
    batch_size: int = 128
    eval_batch_size: int = 256
    eval_every: int = 1  # evaluate every N epochs (the last epoch always)
    num_workers: int = 0  # DataLoader worker processes
    device: str = "cpu"
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    # How dynamic convs compute (padnet.layers.conv_strategy): "heuristic" (default) is a deterministic
    # rule, so the same seed gives the same metrics; "autotune" times the strategies per shape on this
    # machine (the picks go into the checkpoint, so a resumed run computes as before); or pin a strategy.
    conv_strategy: str = "heuristic"
    progress: bool = True  # tqdm bars
    tensorboard: bool = True  # if tensorboard is importable
    log_every: int = 50  # steps between loss lines in the log file
    imports: list[str] = field(default_factory=list)  # plug-in modules imported first (padnet.plugins)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sections: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str, cls: type[T]) -> T:
        """The task section ``name`` (e.g. ``config.section("data", DataConfig)``), checked to be a ``cls``.

        Args:
            name: a section the run's task declares (``padnet.train.tasks.register_task(sections=...)``).
            cls: the dataclass the task declared for it; the result is typed as one.
        """
        if name not in self.sections:
            raise KeyError(f"task {self.task!r} has no config section {name!r}; its sections: "
                           f"{', '.join(self.sections) or 'none'}")
        value = self.sections[name]
        if not isinstance(value, cls):
            raise TypeError(f"config section {name!r} holds a {type(value).__name__}; expected a {cls.__name__}")
        return value

    def problems(self) -> list[str]:
        out = _at_least("", self, epochs=1, batch_size=1, eval_batch_size=1, eval_every=1, log_every=1)
        out += _at_most("", self, epochs=MAX_STEPS, batch_size=MAX_BATCH, eval_batch_size=MAX_BATCH,
                        num_workers=256, threads=1024)
        out += _choices("", self, device=DEVICES, conv_strategy=STRATEGY_MODES)
        if self.num_workers < 0:
            out.append(f"num_workers={self.num_workers!r} must be >= 0")
        if self.threads is not None and self.threads < 1:
            out.append(f"threads={self.threads!r} must be >= 1 or null")
        if self.seed < 0:
            out.append(f"seed={self.seed!r} must be >= 0")
        elif self.seed > MAX_SEED:
            out.append(f"seed={shorten(self.seed)} must be <= {MAX_SEED} (2**32 - 1)")
        if not self.run_dir.strip() or Path(self.run_dir.strip()) in (Path("."), Path("")):
            out.append(f"run_dir={self.run_dir!r} must name a directory of its own (not empty, not the current "
                       "directory); e.g. runs/my-run")
        return out

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        d = self.dynamic
        if d.mode == "static":
            return "static"
        if d.mode == "dynamic":
            return f"dynamic-{d.kind}"
        channel = "-channel" if d.granularity == "channel" else ""
        return f"pad-{d.dynamic_ratio:g}{channel}-{self.partition.scorer}"

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "sections":
                continue
            value = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        for name, section in self.sections.items():
            out[name] = dataclasses.asdict(section)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------- helpers
def _choices(section: str, obj, **allowed) -> list[str]:
    prefix = f"{section}." if section else ""
    problems = [choice_problem(f"{prefix}{key}", getattr(obj, key), values) for key, values in allowed.items()]
    return [p for p in problems if p]


def _at_most(section: str, obj, **maximum) -> list[str]:
    """Upper bounds, so that no config value can ask for an absurd allocation or loop."""
    prefix = f"{section}." if section else ""
    return [
        f"{prefix}{key}={getattr(obj, key)!r} must be an integer <= {high}"
        for key, high in maximum.items()
        if getattr(obj, key) is not None and getattr(obj, key) > high
    ]


def _at_least(section: str, obj, **minimum) -> list[str]:
    prefix = f"{section}." if section else ""
    problems = [int_problem(f"{prefix}{key}", getattr(obj, key), low) for key, low in minimum.items()]
    return [p for p in problems if p]


_MISSING = object()
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _non_finite(value) -> bool:
    """A float (or a list holding one) that is nan or +-inf."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, list) and any(_non_finite(v) for v in value)


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _coerce(value, hint):
    """``value`` as type ``hint``, or _MISSING when it does not fit. ints are accepted for floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            out = _coerce(value, arg)
            if out is not _MISSING:
                return out
        return _MISSING
    if hint is type(None):
        return None if value is None else _MISSING
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return _MISSING
        (item,) = typing.get_args(hint)
        items = [_coerce(v, item) for v in value]
        return _MISSING if any(v is _MISSING for v in items) else items
    if origin is dict or hint is dict:
        return dict(value) if isinstance(value, dict) else _MISSING
    if hint is bool:
        return value if isinstance(value, bool) else _MISSING
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISSING
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads 1e-3 / 5E4 (no dot) as strings; they are plain numbers here.
            return float(value)
        return _MISSING
    if hint is str:
        return value if isinstance(value, str) else _MISSING
    return _MISSING


def build_section(cls, raw, prefix: str, problems: list[str], extra_keys: tuple[str, ...] = ()):
    """An instance of dataclass ``cls`` from dict ``raw``; every problem is appended to ``problems``."""
    hints = typing.get_type_hints(cls)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'} must be a mapping of keys to values; "
                        f"got {type(raw).__name__}")
        return cls()
    names = [f.name for f in dataclasses.fields(cls) if f.name != "sections"]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            where = " in " + prefix.rstrip(".") if prefix else ""
            problems.append(f"unknown key {shorten(f'{prefix}{key}')}; allowed keys{where}: "
                            f"{', '.join(names + list(extra_keys))}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_section(hint, value, f"{prefix}{key}.", problems)
            continue
        out = _coerce(value, hint)
        if out is _MISSING:
            problems.append(f"{prefix}{key}={shorten(value)} has type {type(value).__name__}; "
                            f"expected {_type_name(hint)}")
        elif _non_finite(out):
            problems.append(f"{prefix}{key}={out!r} must be a finite number (not nan or inf)")
        else:
            kwargs[key] = out
    return cls(**kwargs)


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
        except yaml.YAMLError:
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


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML config file, read with the strict loader (``padnet.train.strict_yaml``:
    duplicate keys refused, YAML 1.2 numbers, bounded aliases); every problem is a ``ConfigError``
    naming the file (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {path} does not exist"])
    data = path.read_bytes()
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"config file {path} is {len(data):,} bytes; a config is at most {MAX_CONFIG_BYTES:,}"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start}); save the file as "
                           "UTF-8"]) from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError([f"{path} is not valid YAML: {cut(err, 2000, collapse=False)}"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path} must hold a mapping of keys to values; got {type(raw).__name__}"])
    return raw




def config_from_dict(raw: dict, overrides: list[str] | None = None, source: str | None = None,
                     preflight: bool = True, stored: bool = False) -> RunConfig:
    """Validate ``raw`` (plus ``--set`` overrides) into a ``RunConfig``; raise ``ConfigError`` with
    all problems. ``preflight`` also runs the task's checks (e.g. that the data exists).
    ``stored``: ``raw`` is a stored run's config (eval, export): its ``imports`` are never looked for as
    files (a run directory from elsewhere could carry code that its own config imports); ``source``'s
    directory resolves them only for a config the user passes."""
    problems: list[str] = []
    raw = merge(raw or {}, parse_overrides(overrides, problems))
    _import_plugins(raw.get("imports"), source, stored, problems)
    task_name = raw.get("task", RunConfig.task)
    try:
        task = get_task(task_name)
    except (KeyError, TypeError) as err:
        problems.append(str(err.args[0]) if err.args else str(err))
        task = None
    section_types = task.sections if task else {}
    top = {k: v for k, v in raw.items() if k not in section_types}
    if task is None:
        # The task's own sections are unknown: do not call them unknown keys (the task problem says it).
        run_keys = {f.name for f in dataclasses.fields(RunConfig)} - {"sections"}
        top = {k: v for k, v in top.items() if k in run_keys or not isinstance(v, dict)}
    config = build_section(RunConfig, top, "", problems, tuple(section_types))
    for name, cls in section_types.items():
        config.sections[name] = build_section(cls, raw.get(name), f"{name}.", problems)
    # Range checks only on values that parsed; a wrong type already has its problem listed.
    for part in [config, config.dynamic, config.partition, config.optim, *config.sections.values()]:
        check = getattr(part, "problems", None)
        if check is not None:
            try:
                problems.extend(check())
            except TypeError:
                pass
    if task is not None and task.check is not None and preflight:
        try:
            problems.extend(task.check(config))
        except Exception as err:  # a check must never hide the problems already found
            problems.append(f"task {task.name!r} pre-flight check failed: {err}")
    if problems:
        raise ConfigError(problems, source)
    return config


def _import_plugins(names, source: str | None, stored: bool, problems: list[str]) -> None:
    """Import the config's ``imports`` (modules that register tasks) before its task is looked up: for a
    config the user passes, files are resolved against its directory; for a stored run's config, only
    installed modules and plug-ins named again with ``--import`` (``padnet.plugins``)."""
    if names is None:
        return
    if not isinstance(names, list):
        problems.append(f"imports={shorten(names)} must be a list of module names or files, e.g. [my_tasks]")
        return
    base = Path(source).parent if source and not stored and Path(source).is_file() else None
    try:
        import_plugins(names, base, key="imports", stored=stored)
    except PluginError as err:
        problems.append(str(err))


def load_config(path: str | Path, overrides: list[str] | None = None, preflight: bool = True) -> RunConfig:
    return config_from_dict(read_yaml(path), overrides, str(path), preflight)
