"""Checked by mypy in `make lint`, never run: code a user of the typed API writes must type-check
(padnet ships py.typed). A loss function typed for its own batches is a valid ``loss_fn``."""

import torch
from torch import nn

import padnet


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def partition_typed(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return padnet.partition(model, batches, loss, dynamic_ratio=0.3).dynamic_ratio


def readme_library_example(scoring_batches: list[tuple[torch.Tensor, torch.Tensor]],
                           example_input: torch.Tensor) -> nn.Module:
    """The README's library and deployment blocks, as a typed user writes them."""
    model: nn.Module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    padnet.convert(model)
    report = padnet.partition(model, scoring_batches,
                              loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                              dynamic_ratio=0.3, rounds=5)
    print(report.table())
    print(padnet.summary(model).table())
    padnet.compact(model)
    padnet.deploy(model)
    print(padnet.summary(model, example_input).table())
    padnet.save(model, "model.safetensors")
    loaded: nn.Module = padnet.load("model.safetensors")
    loaded = padnet.load("model.safetensors", model_factory=lambda: nn.Linear(2, 2))
    print(padnet.model_cost(loaded, example_input))
    padnet.set_temperature(loaded, 1.0)
    return loaded


def layers_and_settings() -> None:
    config = padnet.ConvertConfig(dynamic="moe", num_experts=4, top_k=1, target=["up", "down"])
    config.validate()
    padnet.convert(nn.Linear(4, 4), dynamic="conv", pad=False, num_kernels=2)
    conv = padnet.PADConv2d(4, 4, 3, padding=1, num_kernels=2)
    moe = padnet.PADMoELinear(4, 4, num_experts=2, top_k=1)
    out: torch.Tensor = conv(torch.zeros(1, 4, 8, 8)) + moe(torch.zeros(1, 4)).sum()
    total: torch.Tensor = padnet.aux_loss(nn.Sequential(conv, moe)) + out.sum()
    tau = padnet.TemperatureSchedule(30.0, 1.0, 10.0)
    print(total, tau.at_step(5, 100))


def deployment_paths(model: nn.Module, example: torch.Tensor) -> list[dict]:
    from padnet.hf import PartitionCallback, from_pretrained, save_pretrained

    padnet.export_onnx(model, example, "model.onnx")
    directory = save_pretrained(model, "out")
    reloaded: nn.Module = from_pretrained(directory)
    callback = PartitionCallback(dynamic_ratio=0.5, warmup_steps=10)
    print(reloaded, callback.report)
    return padnet.predict("model.safetensors", ["image.png"], batch_size=8)


@padnet.register_arch("mine.tiny")
def tiny(num_classes: int = 2) -> nn.Module:
    return nn.Linear(4, num_classes)


def registered_builders() -> list[nn.Module]:
    builder = padnet.register_arch("mine.other", lambda: nn.Linear(2, 2))  # returns the builder it was given
    return [tiny(3), builder()]
