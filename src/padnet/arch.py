"""The architecture registry: how a model file names the base model it is rebuilt from.

``register_arch(name, builder)`` adds a builder (a name ending in ``"."`` adds a prefix resolver);
``tag_arch(model, name, **kwargs)`` records on a model how to rebuild it; ``build_arch`` builds and tags.
Built in: ``"torchvision.<builder>"`` (torchvision's registered builders, every weights argument forced
off); ``padnet.models`` registers ``"padnet.<name>"`` and ``padnet.models.transformers_models`` the
Hugging Face records.
Only registered builders run when a file is loaded: a file never names code to import.

``detect_arch(model)`` finds the record of a model built elsewhere, through the detectors registered
with ``register_arch_detector``: built in, a model of a torchvision class that one of torchvision's
builders rebuilds exactly (``torchvision.models.resnet18(num_classes=10)``); ``padnet.models.transformers_models``
adds Hugging Face models (their config, stored as JSON). ``padnet.convert`` and ``padnet.save`` call it,
so ``padnet.load(path)`` alone rebuilds such models.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from typing import TypeVar, overload

import torch
from torch import nn

from .errors import UsageError

_ARCHS: dict[str, Callable[..., nn.Module]] = {}
_ARCH_PREFIXES: dict[str, Callable[[str], Callable[..., nn.Module]]] = {}
_DETECTORS: list[Callable[[nn.Module], dict | None]] = []

# What a model without a record needs (named by the errors of save/load).
HOW_TO_RECORD = (
    "record how to rebuild the model: build it with padnet.build_arch(name, **kwargs) (e.g. "
    "'torchvision.resnet18', num_classes=10), or call padnet.tag_arch(model, name, **kwargs) before "
    "padnet.convert, or pass padnet.save(model, path, arch={'name': ..., 'kwargs': {...}}) (a registered "
    "name, see padnet.register_arch); or load it with padnet.load(path, model_factory=...)"
)

# ----------------------------------------------------------------------------- architecture registry
# A builder: builder(**kwargs) -> nn.Module; a prefix's resolver: resolver(rest) -> the builder of prefix + rest.
Builder = Callable[..., nn.Module]
Resolver = Callable[[str], Builder]


F = TypeVar("F", Builder, Resolver)


@overload
def register_arch(name: str, builder: F) -> F: ...


@overload
def register_arch(name: str, builder: None = None) -> Callable[[F], F]: ...


def register_arch(name: str, builder: Builder | Resolver | None = None):
    """Register ``builder(**kwargs) -> nn.Module`` under ``name``; usable as a decorator.

    A name ending in ``"."`` registers a prefix resolver instead: ``builder(rest)`` must return the
    builder for ``name + rest`` (or raise KeyError)."""

    def add(fn):
        if not isinstance(name, str) or not name:
            raise UsageError(f"arch name must be a non-empty string; got {name!r}")
        (_ARCH_PREFIXES if name.endswith(".") else _ARCHS)[name] = fn
        return fn

    return add(builder) if builder is not None else add


BUILT_IN_PREFIXES = ("torchvision.", "padnet.", "transformers.")


def is_user_arch(name: str) -> bool:
    """Whether ``name`` is a builder registered by name outside padnet's own families (trusted user code,
    which may not run on the meta device)."""
    return name in _ARCHS and not name.startswith(BUILT_IN_PREFIXES)


# Keys of a record's arch kwargs that would fetch pretrained weights (a file holds every weight itself).
WEIGHT_KEYS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")


def check_no_weight_keys(name: str, kwargs: dict) -> None:
    found = [k for k in kwargs if k in WEIGHT_KEYS]
    if found:
        raise UsageError(f"arch {name!r}: {', '.join(found)} is not allowed (a model file holds every weight; "
                         "padnet never downloads weights while loading)")


def _torchvision_builder(rest: str) -> Callable[..., nn.Module]:
    import inspect

    import torchvision.models as tvm

    if rest not in tvm.list_models():  # the allow-list: torchvision's registered model builders
        raise KeyError(f"{rest!r} is not a torchvision model builder (torchvision.models.list_models())")
    builder = tvm.get_model_builder(rest)
    params = inspect.signature(builder).parameters
    forced = {k: None for k in ("weights", "weights_backbone") if k in params}

    def build(**kwargs):
        check_no_weight_keys(f"torchvision.{rest}", kwargs)
        return builder(**kwargs, **forced)

    return build


register_arch("torchvision.", _torchvision_builder)


def resolve_arch(name: str) -> Callable[..., nn.Module]:
    """The builder registered for ``name`` (exact names first, then prefixes)."""
    if name in _ARCHS:
        return _ARCHS[name]
    for prefix, resolver in _ARCH_PREFIXES.items():
        if name.startswith(prefix):
            try:
                return resolver(name[len(prefix):])
            except KeyError as exc:
                raise UsageError(f"arch {name!r}: {exc}") from None
    known = sorted(_ARCHS) + [p + "*" for p in sorted(_ARCH_PREFIXES)]
    raise UsageError(f"arch {name!r} is not registered; known: {', '.join(known)} (see padnet.register_arch)")


def tag_arch(model: nn.Module, name: str, **kwargs) -> nn.Module:
    """Record on ``model`` how to rebuild its base architecture (JSON-serialisable kwargs only)."""
    try:
        json.dumps(kwargs)
    except TypeError as exc:
        raise UsageError(f"arch kwargs for {name!r} must be JSON-serialisable: {exc}") from None
    setattr(model, "padnet_arch", {"name": name, "kwargs": dict(kwargs)})  # a plain attribute, not a tensor
    return model


def build_arch(name: str, **kwargs) -> nn.Module:
    """Build a registered base architecture (no pretrained weights) and tag it for ``save``."""
    return tag_arch(resolve_arch(name)(**kwargs), name, **kwargs)


def build_on_meta(builder: Callable[..., nn.Module], **kwargs) -> nn.Module:
    """``builder(**kwargs)`` with its parameters and buffers on the meta device (no memory).

    Most builders run under a meta default device. A few compute their layout with tensors they read
    back (torchvision's RegNet rounds its stage widths with torch ops and ``.tolist()``s them), which
    a meta tensor cannot give; for those only the parameters are created on meta (accelerate's
    ``init_empty_weights``) and the buffers (normalisation statistics, a small fraction of the
    parameters) are moved there after."""
    try:
        with on_meta():
            return builder(**kwargs)
    except NotImplementedError:  # "Cannot copy out of meta tensor; no data!"
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False), skip_init():
            model = builder(**kwargs)
        return model.to("meta")


# torch.nn.init's in-place initialisers (what modules' reset_parameters call).
_INITS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
          "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def on_meta():
    """Build modules on the meta device, without running their initialisers (``skip_init``)."""
    with torch.device("meta"), skip_init():
        yield


@contextlib.contextmanager
def skip_init():
    """``torch.nn.init``'s initialisers leave tensors as they are (the way transformers builds a model whose
    weights come from a file). On the meta device there are no values to set, so the initialisers are
    skipped rather than run through torch's Python meta kernels."""
    saved = {name: getattr(torch.nn.init, name) for name in _INITS}
    try:
        for name in _INITS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


# ----------------------------------------------------------------------------- detection
def register_arch_detector(detector: Callable[[nn.Module], dict | None]):
    """Register ``detector(model) -> {"name": ..., "kwargs": {...}} | None``: the record that rebuilds a
    model built without ``build_arch``, or None when it is not one the detector knows. Usable as a
    decorator."""
    _DETECTORS.append(detector)
    return detector


def detect_arch(model: nn.Module) -> dict | None:
    """``model.padnet_arch`` if set, else the first record a registered detector finds (None: none)."""
    arch = getattr(model, "padnet_arch", None)
    if arch is not None:
        return arch
    for detector in _DETECTORS:
        arch = detector(model)
        if arch is not None:
            return arch
    return None


def _signature(model: nn.Module) -> tuple:
    """What a rebuilt model must reproduce: every tensor's name and shape, and the modules' settings
    (``repr`` shows kernel sizes, norm epsilons, dropout rates, activations)."""
    shapes = tuple((k, tuple(v.shape)) for k, v in model.state_dict(keep_vars=True).items())
    return shapes, repr(model)


@register_arch_detector
def _torchvision_arch(model: nn.Module) -> dict | None:
    """``torchvision.<builder>`` with ``num_classes`` when the model is of a torchvision class and one of
    the builders of its module rebuilds it exactly (same tensors and shapes, same module settings)."""
    module = type(model).__module__
    if not module.startswith("torchvision.models.") or "torchvision.models" not in sys.modules:
        return None
    shapes, text = _signature(model)
    found = _match_torchvision(module, shapes, text)
    return {"name": f"torchvision.{found[0]}", "kwargs": dict(found[1])} if found else None


@functools.lru_cache(maxsize=64)
def _match_torchvision(module: str, shapes: tuple, text: str) -> tuple[str, tuple] | None:
    """(builder, kwargs) of the single torchvision builder of ``module`` that rebuilds the model, or None
    (no builder, or more than one)."""
    import torchvision.models as tvm

    matches = []
    for name in tvm.list_models():
        if tvm.get_model_builder(name).__module__ != module:
            continue
        try:
            kwargs = _torchvision_kwargs(name, dict(shapes))
        except (TypeError, ValueError, RuntimeError, NotImplementedError):
            continue
        if kwargs is not None:
            candidate = build_on_meta(resolve_arch(f"torchvision.{name}"), **kwargs)
            if _signature(candidate) == (shapes, text):
                matches.append((name, tuple(sorted(kwargs.items()))))
    return matches[0] if len(matches) == 1 else None


def _torchvision_kwargs(name: str, shapes: dict) -> dict | None:
    """The builder's default kwargs, or ``num_classes`` set to the size the model's differing tensors
    (its classifier) share; None when the tensors differ otherwise."""
    default = build_on_meta(resolve_arch(f"torchvision.{name}"))
    own = {k: tuple(v.shape) for k, v in default.state_dict(keep_vars=True).items()}
    if own.keys() != shapes.keys():
        return None
    differ = [(own[k], shapes[k]) for k in own if own[k] != shapes[k]]
    if not differ:
        return {}
    sizes = {theirs[0] for _, theirs in differ if theirs}
    if len(sizes) == 1 and all(len(a) == len(b) and a[1:] == b[1:] for a, b in differ):
        return {"num_classes": sizes.pop()}
    return None
