"""MoE layers in the modes beside eager training and inference (issue 26): graph captures
(``torch.jit.trace``, ``torch.export``, ``torch.compile``) serve every batch size with the eager layer's
outputs; copies (deepcopy, pickle) of a layer that ran a training step; the meta device; empty batches."""

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F

import padnet
from padnet.errors import ModeError
from padnet.layers import MoELinear, PADMoELinear
from padnet.layers.deployed_moe import DeployedPADMoELinear
from padnet.layers.pad_experts import PADExperts, PADExpertWeights
from tests.helpers import assert_close_f64, random_mask

IN, OUT, EXPERTS, TOP_K, SEQ = 8, 6, 4, 2, 5
FORMS = ["moe", "element", "channel", "element-compacted", "channel-compacted", "element-deployed", "channel-deployed"]


def moe_layer(form: str, **settings):
    """A layer of ``form`` with a random router and distinct experts, so tokens spread over the experts and
    a wrong routing shows; PAD forms partitioned by hand (kappa about 0.4), phi != 0."""
    torch.manual_seed(0)
    if form == "moe":
        layer = MoELinear(IN, OUT, EXPERTS, TOP_K, **settings)
    else:
        granularity = form.split("-")[0]
        layer = PADMoELinear(IN, OUT, EXPERTS, TOP_K, granularity=granularity, **settings)
        with torch.no_grad():
            layer.weight.add_(0.3 * torch.randn_like(layer.weight))
            layer.phi.fill_(0.3)
        if granularity == "channel":
            layer.set_mask(random_mask((OUT, 1), 0.4, seed=1).expand(OUT, IN).clone())
        else:
            layer.set_mask(random_mask((OUT, IN), 0.4))
        if form.endswith(("compacted", "deployed")):
            layer.compact()
        if form.endswith("deployed"):
            layer = layer.to_deployed()
    with torch.no_grad():
        torch.nn.init.normal_(layer.router.w_gate)
    return layer.eval()


def batch(size: int) -> torch.Tensor:
    return torch.randn(size, SEQ, IN)


def assert_serves_other_batches(captured, layer, sizes=(1, 3, 8)):
    with torch.no_grad():
        for size in sizes:
            x = batch(size)
            assert_close_f64(captured(x), layer(x), msg=f"batch {size}")


# ----------------------------------------------------------------------------- graph captures (items 1, 2)
@pytest.mark.usefixtures("float64")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("form", FORMS)
def test_jit_trace_at_batch_2_serves_other_batch_sizes(form):
    layer = moe_layer(form)
    with torch.no_grad():
        traced = torch.jit.trace(layer, batch(2))
    assert_serves_other_batches(traced, layer)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("form", FORMS)
def test_torch_export_with_a_dynamic_batch_serves_other_batch_sizes(form):
    layer = moe_layer(form)
    layer(batch(2))
    aux_before = layer.last_aux_loss
    program = torch.export.export(layer, (batch(2),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert layer.last_aux_loss is aux_before  # export leaves no traced tensor behind on the layer
    assert_serves_other_batches(program.module(), layer)


# Compile tests are slow (dynamo's start alone takes seconds); the trace and export tests above cover
# the static dispatch in the fast lane (export fails on a data-dependent shape as dynamo does).
@pytest.mark.slow
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("form", FORMS)
def test_torch_compile_fullgraph_captures_every_form(form):
    # backend "eager": dynamo's capture (fullgraph: no graph break, no guard on data), where every
    # data-dependent shape or host read fails, without inductor's code generation (up to a minute a layer
    # on a shared CPU); the tests below run inductor and AOTAutograd. (Batch 1 would recompile: dynamic
    # dimensions of size 1 are specialised.)
    torch._dynamo.reset()
    layer = moe_layer(form)
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend="eager")
    assert_serves_other_batches(compiled, layer, sizes=(3, 8))


@pytest.mark.slow
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("fullgraph", [True, False])
def test_torch_compile_with_inductor(fullgraph):
    torch._dynamo.reset()
    layer = moe_layer("element-deployed" if fullgraph else "channel")
    compiled = torch.compile(layer, fullgraph=fullgraph, dynamic=True)
    assert_serves_other_batches(compiled, layer, sizes=(3, 8))


@pytest.mark.slow
@pytest.mark.usefixtures("float64")
def test_torch_compile_trains_with_the_eager_outputs_gradients_and_aux_loss():
    torch._dynamo.reset()
    layer = moe_layer("element", noisy_gating=False, aux_loss_coef=0.5).train()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend="aot_eager")
    x = batch(3)
    results = []
    for run in (compiled, layer):
        layer.zero_grad()
        layer.last_aux_loss = None
        y = run(x)
        aux = padnet.aux_loss(layer)
        assert aux.grad_fn is not None  # the compiled forward records the loss, with its graph
        (y.square().sum() + aux).backward()
        results.append([y, aux.double()] + [p.grad for p in layer.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1]) > 4
    for captured, eager in zip(*results):
        assert_close_f64(captured, eager)


@pytest.mark.parametrize("capture", ["trace", "export"])
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_training_mode_under_trace_or_export_is_refused_naming_the_alternative(capture):
    layer = moe_layer("element").train()
    with pytest.raises(ModeError, match=r"training mode cannot run under torch\.(jit\.trace|export).*model\.eval"):
        if capture == "trace":
            torch.jit.trace(layer, batch(2))
        else:
            torch.export.export(layer, (batch(2),))


def tiny_moe_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=2)
    model = padnet.convert(transformers.BertForSequenceClassification(config), dynamic="moe", pad=False,
                           num_experts=4, top_k=2)
    with torch.no_grad():  # trained-looking: routers that spread the tokens, experts that differ
        for layer in model.modules():
            if isinstance(layer, MoELinear):
                torch.nn.init.normal_(layer.router.w_gate)
                layer.weight.mul_(1 + 0.5 * torch.randn_like(layer.weight))
    return model.eval()


@pytest.mark.usefixtures("float64")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_moe_bert_traced_at_batch_2_is_right_at_batch_3():
    model = tiny_moe_bert()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (ids,), strict=False)
        other = torch.randint(0, 50, (3, 7))
        assert_close_f64(traced(other)["logits"], model(input_ids=other).logits)


def pad_experts(deployed=False):
    torch.manual_seed(0)
    hidden, inter = 8, 5
    experts = PADExperts(PADExpertWeights.from_experts(torch.randn(EXPERTS, 2 * inter, hidden)),
                         PADExpertWeights.from_experts(torch.randn(EXPERTS, hidden, inter)), F.silu)
    for i, name in enumerate(["gate_up_proj", "down_proj"]):
        weights = experts.get_submodule(name)
        weights.set_mask(random_mask(weights.kernel_shape, 0.4, seed=i))
        with torch.no_grad():
            weights.phi.fill_(0.3)
        if deployed:
            setattr(experts, name, weights.to_deployed())
    return experts.eval()


def routed(tokens, experts=EXPERTS):
    """(hidden_states, top_k_index, top_k_weights) as a transformers MoE block passes them, routed to the
    first ``experts`` experts; the last token's second slot dropped (index E, as transformers marks it)."""
    hidden = torch.randn(tokens, 8)
    logits = torch.randn(tokens, EXPERTS)
    logits[:, experts:] = -torch.inf
    weights, index = logits.softmax(1).topk(TOP_K, dim=1)
    index[-1, 1] = EXPERTS
    return hidden, index, weights


@pytest.mark.usefixtures("float64")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("capture", ["trace", "export", pytest.param("compile", marks=pytest.mark.slow)])
@pytest.mark.parametrize("deployed", [False, True])
def test_pad_experts_captured_serve_other_token_counts(capture, deployed):
    experts = pad_experts(deployed)
    example = routed(6, experts=2)  # a capture that held the example's routing would miss experts 2 and 3
    with torch.no_grad():
        if capture == "trace":
            captured = torch.jit.trace(experts, example)
        elif capture == "export":
            tokens = torch.export.Dim("tokens")
            captured = torch.export.export(experts, example, dynamic_shapes=({0: tokens},) * 3).module()
        else:
            torch._dynamo.reset()
            captured = torch.compile(experts, fullgraph=True, dynamic=True, backend="eager")
        for tokens in (1, 3, 10) if capture != "compile" else (3, 10):
            inputs = routed(tokens)
            assert_close_f64(captured(*inputs), experts(*inputs), msg=f"{tokens} tokens")


# ----------------------------------------------------------------------------- copies (item 3)
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("form", ["moe", "element", "channel-compacted", "element-deployed"])
def test_deepcopy_and_pickle_after_a_training_forward_and_backward(form):
    layer = moe_layer(form, aux_loss_coef=0.5).train()
    x = batch(2)
    loss = layer(x).square().sum() + padnet.aux_loss(layer)
    assert layer.last_aux_loss is not None and layer.last_aux_loss.grad_fn is not None
    for when in ("after forward", "after backward"):
        snapshot = copy.deepcopy(layer)
        restored = pickle.loads(pickle.dumps(layer))
        for twin in (snapshot, restored):
            assert twin.last_aux_loss is None, when  # a copy starts without the step's loss
            assert float(padnet.aux_loss(twin)) == 0.0
            with torch.no_grad():
                assert_close_f64(twin.eval()(x), layer.eval()(x), msg=when)
            layer.train()
        assert layer.last_aux_loss is not None, when
        if when == "after forward":
            loss.backward()  # the original's loss still carries the graph of the step that made it
            router_grad = layer.router.w_gate.grad
            assert router_grad is not None and router_grad.abs().sum() > 0


# ----------------------------------------------------------------------------- meta device, empty batches (item 4)
@pytest.mark.parametrize("form", ["moe", "element", "channel", "deployed", "deployed-channel"])
@pytest.mark.parametrize("training", [False, True])
def test_meta_forward_gives_the_output_shape(form, training):
    with torch.device("meta"):
        if form == "moe":
            layer = MoELinear(IN, OUT, EXPERTS, TOP_K)
        elif form.startswith("deployed"):
            layer = DeployedPADMoELinear(IN, OUT, EXPERTS, TOP_K, granularity=form.partition("-")[2] or "element")
        else:
            layer = PADMoELinear(IN, OUT, EXPERTS, TOP_K, granularity=form)
        y = layer.train(training)(torch.empty(2, SEQ, IN))
    assert y.is_meta and y.shape == (2, SEQ, OUT)


def test_meta_pad_experts_give_the_output_shape():
    experts = pad_experts().to("meta")
    hidden, index, weights = (t.to("meta") for t in routed(6))
    y = experts(hidden, index, weights)
    assert y.is_meta and y.shape == (6, 8)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("training", [False, True])
def test_an_empty_batch_gives_the_empty_output(form, training):
    layer = moe_layer(form).train(training)
    x = torch.empty(0, SEQ, IN, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, SEQ, OUT)
    if training:
        (y.sum() + padnet.aux_loss(layer)).backward()
        assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("deployed", [False, True])
def test_pad_experts_take_an_empty_batch(deployed):
    hidden, index, weights = routed(3)
    y = pad_experts(deployed)(hidden[:0], index[:0], weights[:0])
    assert y.shape == (0, 8)
