"""The architecture registry: how a model file names the base model it is rebuilt from.

``register_arch(name, builder)`` adds a builder (a name ending in ``"."`` adds a prefix resolver);
``tag_arch(model, name, **kwargs)`` records on a model how to rebuild it; ``build_arch`` builds and tags.
Built in: ``"torchvision.<builder>"`` (torchvision's registered builders, every weights argument forced
off); ``padnet.models`` registers ``"padnet.<name>"`` and ``padnet.models.hf`` the Hugging Face records.
Only registered builders run when a file is loaded: a file never names code to import.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from torch import nn

_ARCHS: dict[str, Callable[..., nn.Module]] = {}
_ARCH_PREFIXES: dict[str, Callable[[str], Callable[..., nn.Module]]] = {}




# ----------------------------------------------------------------------------- architecture registry
def register_arch(name: str, builder: Callable[..., nn.Module] | None = None):
    """Register ``builder(**kwargs) -> nn.Module`` under ``name``; usable as a decorator.

    A name ending in ``"."`` registers a prefix resolver instead: ``builder(rest)`` must return the
    builder for ``name + rest`` (or raise KeyError)."""

    def add(fn):
        if not isinstance(name, str) or not name:
            raise ValueError(f"arch name must be a non-empty string; got {name!r}")
        (_ARCH_PREFIXES if name.endswith(".") else _ARCHS)[name] = fn
        return fn

    return add(builder) if builder is not None else add


# Keys of a record's arch kwargs that would fetch pretrained weights (a file holds every weight itself).
WEIGHT_KEYS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")


def check_no_weight_keys(name: str, kwargs: dict) -> None:
    found = [k for k in kwargs if k in WEIGHT_KEYS]
    if found:
        raise ValueError(f"arch {name!r}: {', '.join(found)} is not allowed (a model file holds every weight; "
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
                raise ValueError(f"arch {name!r}: {exc}") from None
    known = sorted(_ARCHS) + [p + "*" for p in sorted(_ARCH_PREFIXES)]
    raise ValueError(f"arch {name!r} is not registered; known: {', '.join(known)} (see padnet.register_arch)")


def tag_arch(model: nn.Module, name: str, **kwargs) -> nn.Module:
    """Record on ``model`` how to rebuild its base architecture (JSON-serialisable kwargs only)."""
    try:
        json.dumps(kwargs)
    except TypeError as exc:
        raise ValueError(f"arch kwargs for {name!r} must be JSON-serialisable: {exc}") from None
    model.padnet_arch = {"name": name, "kwargs": dict(kwargs)}
    return model


def build_arch(name: str, **kwargs) -> nn.Module:
    """Build a registered base architecture (no pretrained weights) and tag it for ``save``."""
    return tag_arch(resolve_arch(name)(**kwargs), name, **kwargs)
