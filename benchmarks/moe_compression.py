"""PAD experts against the MoE-compression methods people use (issue 31), at equal stored bytes.

The tiny Mixtral-style byte LM of benchmarks/pretrained_moe.py (issue 18) is pretrained, then its experts
are compressed to 75 %, 50 % and 30 % of their stored bytes by:

- ``drop``: expert dropping by router load (keep the most used experts of each layer, the router keeps
  their rows, so its softmax and top-k renormalise over the kept ones);
- ``merge``: expert merging (MC-SMoE style: the most used experts are group centres, every other
  expert joins the centre whose router logits it resembles most, members' FFN neurons are aligned to
  the centre's by a linear assignment, the group's weight is the usage-weighted average, the router is
  unchanged and maps each expert to its group);
- ``prune_magnitude`` / ``prune_wanda``: unstructured pruning inside every expert (smallest |W| per
  expert matrix; Wanda's |W| * ||x|| per output row, x the inputs the expert sees on calibration
  tokens), stored as the kept values plus a packed bitmask;
- ``lowrank``: a shared base plus a low-rank delta per expert (the experts' mean plus a rank-r SVD of
  each difference, U S and V^T stored);
- ``pad_element`` / ``pad_channel``: PAD experts (``padnet.convert(dynamic="experts")``, taylor
  partition, compacted; deployed as padnet stores them: N - nnz static values, E x nnz dynamic values
  and an int32 index per dynamic entry).

Stored bytes are counted from the tensors each form would write to a file (``stored_tensors``), at
their dtype; resident bytes (what the module holds in memory) are recorded beside them. Every row is
evaluated (held-out loss) right after compression and after the same short fine-tune (same batches per
seed), over several seeds; the compressed MoE blocks are also timed per token (one thread,
interleaved). Results are appended to the JSON after every row, so a rerun continues where it stopped.

    nice -n 5 taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/moe_compression.py --glue-dir DIR --seed 0

``--render`` rewrites the .md and .png from the existing .json only.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark scripts are not a package
import pretrained_moe as pm
from common import add_glue_dir, time_variants

import padnet
from padnet.files import atomic_write_bytes
from padnet.layers.protocol import PADExperts, PartiallyDynamic
from padnet.report.stats import Stat, paired_difference

METHODS = ["drop", "merge", "prune_magnitude", "prune_wanda", "lowrank", "pad_element", "pad_channel"]
LABELS = {"original": "MoE (original)", "drop": "expert dropping", "merge": "expert merging",
          "prune_magnitude": "pruning, magnitude", "prune_wanda": "pruning, Wanda", "lowrank": "base + low-rank",
          "pad_element": "PAD experts, element", "pad_channel": "PAD experts, channel",
          "pad_element_bitmask": "PAD element, bitmask (counted)"}
SIZES = {"small": {"layers": 2, "experts": 8}, "large": {"layers": 4, "experts": 16}}
BUDGETS = [0.75, 0.5, 0.3]
BITMASK = 1 / 32  # a packed bitmask costs 1 bit per entry: 1/32 of a float32


# ----------------------------------------------------------------------------------- model access
def moe_blocks(model) -> list[nn.Module]:
    """The sparse MoE blocks (router ``gate`` + ``experts``) in layer order."""
    return [layer.mlp for layer in model.model.layers]


def expert_weights_of(experts: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate_up (E, 2I, H), down (E, H, I)) of transformers' fused experts or a ``CompressedExperts``."""
    if isinstance(experts, CompressedExperts):
        return experts.weights()
    return experts.gate_up_proj, experts.down_proj


# ----------------------------------------------------------------------------------- stored forms
def packbits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as a flat uint8 bitmask (8 entries a byte, the last byte zero-padded)."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)]).view(-1, 8)
    return (flat << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def unpackbits(bits: torch.Tensor, numel: int) -> torch.Tensor:
    return ((bits.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)[:numel].bool()


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class CompressedExperts(nn.Module):
    """A drop-in for transformers' fused experts module: ``forward(hidden_states, top_k_index,
    top_k_weights)`` runs transformers' eager loop (experts in ascending order, ``index_add_``) over the
    dense weights that ``weights()`` builds from the stored form; ``route`` maps the router's expert
    indices to stored experts (the identity but for merging)."""

    def __init__(self, act_fn):
        super().__init__()
        self.act_fn = act_fn

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """What a file holds for this module: name -> tensor at the dtype it is written in."""
        raise NotImplementedError

    def route(self, top_k_index: torch.Tensor) -> torch.Tensor:
        return top_k_index

    def forward(self, hidden_states, top_k_index, top_k_weights):
        gate_up, down = self.weights()
        top_k_index = self.route(top_k_index)
        out = torch.zeros_like(hidden_states)
        for expert in top_k_index.unique().tolist():
            if not 0 <= expert < gate_up.shape[0]:
                continue
            slot, token = torch.where(top_k_index.t() == expert)
            gate, up = F.linear(hidden_states[token], gate_up[expert]).chunk(2, dim=-1)
            y = F.linear(self.act_fn(gate) * up, down[expert]) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


class DenseExperts(CompressedExperts):
    """Fewer dense experts (dropping, merging); ``group_of`` (E,) maps the router's experts to them."""

    def __init__(self, gate_up, down, act_fn, group_of: torch.Tensor | None = None):
        super().__init__(act_fn)
        self.gate_up = nn.Parameter(gate_up.detach().clone())
        self.down = nn.Parameter(down.detach().clone())
        self.register_buffer("group_of", None if group_of is None else group_of.long().clone())

    def weights(self):
        return self.gate_up, self.down

    def route(self, top_k_index):
        return top_k_index if self.group_of is None else self.group_of[top_k_index]

    def stored_tensors(self):
        out = {"gate_up": self.gate_up.detach(), "down": self.down.detach()}
        if self.group_of is not None:
            out["group_of"] = self.group_of.to(torch.int32)
        return out


class PrunedExperts(CompressedExperts):
    """Unstructured sparse experts: the kept values (1-D, trainable) and the fixed masks."""

    def __init__(self, gate_up, down, gate_up_mask, down_mask, act_fn):
        super().__init__(act_fn)
        self.register_buffer("gate_up_mask", gate_up_mask.bool().clone())
        self.register_buffer("down_mask", down_mask.bool().clone())
        self.gate_up_values = nn.Parameter(gate_up.detach()[gate_up_mask].clone())
        self.down_values = nn.Parameter(down.detach()[down_mask].clone())

    def weights(self):
        return tuple(torch.zeros(mask.shape, dtype=values.dtype).masked_scatter(mask, values)
                     for mask, values in ((self.gate_up_mask, self.gate_up_values),
                                          (self.down_mask, self.down_values)))

    def stored_tensors(self):
        return {"gate_up_values": self.gate_up_values.detach(), "gate_up_mask": packbits(self.gate_up_mask),
                "down_values": self.down_values.detach(), "down_mask": packbits(self.down_mask)}


class LowRankExperts(CompressedExperts):
    """W_i = base + U_i V_i per fused weight (base (out, in), U (E, out, r), V (E, r, in))."""

    def __init__(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], act_fn):
        super().__init__(act_fn)
        for name, (base, u, v) in factors.items():
            self.register_parameter(f"{name}_base", nn.Parameter(base.detach().clone()))
            self.register_parameter(f"{name}_u", nn.Parameter(u.detach().clone()))
            self.register_parameter(f"{name}_v", nn.Parameter(v.detach().clone()))

    def weights(self):
        return tuple(getattr(self, f"{n}_base") + torch.bmm(getattr(self, f"{n}_u"), getattr(self, f"{n}_v"))
                     for n in ("gate_up", "down"))

    def stored_tensors(self):
        return {name: p.detach() for name, p in self.named_parameters()}


def pad_stored_tensors(experts: nn.Module) -> dict[str, torch.Tensor]:
    """A PAD experts module's file form: its deployed state dict (static values, E x nnz dynamic values,
    the int32 index list), deploying a copy first if it is not deployed yet."""
    if any(isinstance(m, PartiallyDynamic) for m in experts.modules()):
        holder = nn.Module()
        holder.experts = copy.deepcopy(experts)
        padnet.deploy(holder, allow_unpartitioned=True)
        experts = holder.experts
    return dict(experts.state_dict())


def stored_tensors(experts: nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(experts, CompressedExperts):
        return experts.stored_tensors()
    if isinstance(experts, PADExperts):
        return pad_stored_tensors(experts)
    return {"gate_up_proj": experts.gate_up_proj.detach(), "down_proj": experts.down_proj.detach()}


def stored_bytes(model) -> int:
    """Bytes a file holds for all expert modules (the routers and the rest of the model excluded)."""
    return sum(tensor_bytes(stored_tensors(b.experts).values()) for b in moe_blocks(model))


def stored_values(model) -> int:
    """Float values among the stored tensors (the rest of the stored bytes are indices, masks, maps)."""
    return sum(t.numel() for b in moe_blocks(model) for t in stored_tensors(b.experts).values()
               if t.is_floating_point())


def resident_bytes(model) -> int:
    """Bytes the expert modules hold in memory (parameters and buffers, PAD deployed: a dense static
    kernel and an int64 index; pruning: a bool mask byte per entry)."""
    return sum(tensor_bytes([*b.experts.parameters(), *b.experts.buffers()]) for b in moe_blocks(model))


# ----------------------------------------------------------------------------------- calibration
@torch.no_grad()
def calibrate(model, batches) -> list[dict]:
    """Per MoE block, on the calibration batches: how often the router picks each expert (``count``),
    the router logits (``logits``, tokens x E), and per expert the summed squares of the inputs of its two
    weights (``x2_in`` (E, H), ``x2_mid`` (E, I): Wanda's ||x||^2 over the tokens routed to it)."""
    stats, hooks = [], []
    for block in moe_blocks(model):
        gate_up, down = expert_weights_of(block.experts)
        num, hidden, inter = gate_up.shape[0], gate_up.shape[2], down.shape[2]
        st = {"count": torch.zeros(num), "logits": [], "x2_in": torch.zeros(num, hidden),
              "x2_mid": torch.zeros(num, inter)}

        def on_experts(module, args, output, st=st):
            hidden_states, top_k_index, _ = args
            gate_up, _ = expert_weights_of(module)
            for expert in range(gate_up.shape[0]):
                token = (top_k_index == expert).any(1)
                x = hidden_states[token]
                st["count"][expert] += int(token.sum())
                st["x2_in"][expert] += (x.float() ** 2).sum(0)
                gate, up = F.linear(x, gate_up[expert]).chunk(2, dim=-1)
                st["x2_mid"][expert] += ((module.act_fn(gate) * up).float() ** 2).sum(0)

        def on_router(module, args, output, st=st):
            st["logits"].append(output[0].float())

        hooks += [block.experts.register_forward_hook(on_experts), block.gate.register_forward_hook(on_router)]
        stats.append(st)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for st in stats:
        st["logits"] = torch.cat(st["logits"])
    return stats


def usage_order(count: torch.Tensor) -> list[int]:
    """Experts from most to least used (ties: lower index first)."""
    return sorted(range(len(count)), key=lambda e: (-float(count[e]), e))


# ----------------------------------------------------------------------------------- compressors
@torch.no_grad()
def drop_experts(model, keep: int, stats: list[dict]) -> nn.Module:
    """Keep the ``keep`` most used experts of every block (in their original order); the router keeps
    their rows, so its softmax and top-k renormalise over them."""
    model = copy.deepcopy(model)
    for block, st in zip(moe_blocks(model), stats):
        if keep < block.gate.top_k:
            raise ValueError(f"keep={keep} experts is fewer than the router's top_k={block.gate.top_k}")
        kept = torch.tensor(sorted(usage_order(st["count"])[:keep]))
        gate_up, down = expert_weights_of(block.experts)
        block.experts = DenseExperts(gate_up[kept], down[kept], block.experts.act_fn)
        block.gate.weight = nn.Parameter(block.gate.weight[kept].clone())
        block.gate.num_experts = keep
    return model


def neuron_permutation(centre: tuple[torch.Tensor, torch.Tensor], member: tuple[torch.Tensor, torch.Tensor]):
    """The permutation of ``member``'s FFN neurons that best matches ``centre``'s (max total dot product of
    each neuron's gate row, up row and down column; a linear assignment)."""
    from scipy.optimize import linear_sum_assignment

    def features(gate_up, down):
        inter = down.shape[1]
        return torch.cat([gate_up[:inter], gate_up[inter:], down.t()], dim=1)

    score = features(*centre) @ features(*member).t()
    _, perm = linear_sum_assignment(score.double().numpy(), maximize=True)
    return torch.as_tensor(perm, dtype=torch.long)


@torch.no_grad()
def merge_experts(model, keep: int, stats: list[dict]) -> nn.Module:
    """Merge every block's experts into ``keep`` groups: the most used experts are the centres, each other
    expert joins the centre with the most similar router logits (cosine over the calibration tokens);
    members are neuron-aligned to their centre and averaged with weights 1 + their usage count. The router
    stays; ``group_of`` sends each expert's tokens to its group."""
    model = copy.deepcopy(model)
    for block, st in zip(moe_blocks(model), stats):
        gate_up, down = expert_weights_of(block.experts)
        num, inter = gate_up.shape[0], down.shape[2]
        centres = sorted(usage_order(st["count"])[:keep])
        logits = F.normalize(st["logits"], dim=0)
        similarity = logits.t() @ logits
        group_of = torch.tensor([centres.index(e) if e in centres else
                                 max(range(keep), key=lambda g, e=e: (float(similarity[e, centres[g]]), -g))
                                 for e in range(num)])
        merged_gate_up, merged_down = [], []
        for g, centre in enumerate(centres):
            members = [e for e in range(num) if int(group_of[e]) == g]
            if members == [centre]:
                merged_gate_up.append(gate_up[centre].clone())
                merged_down.append(down[centre].clone())
                continue
            total_gate_up, total_down, total = torch.zeros_like(gate_up[0]), torch.zeros_like(down[0]), 0.0
            for e in members:
                perm = (torch.arange(inter) if e == centre else
                        neuron_permutation((gate_up[centre], down[centre]), (gate_up[e], down[e])))
                weight = 1.0 + float(st["count"][e])
                total_gate_up += weight * gate_up[e][torch.cat([perm, perm + inter])]
                total_down += weight * down[e][:, perm]
                total += weight
            merged_gate_up.append(total_gate_up / total)
            merged_down.append(total_down / total)
        block.experts = DenseExperts(torch.stack(merged_gate_up), torch.stack(merged_down), block.experts.act_fn,
                                     group_of=group_of)
    return model


def top_mask(score: torch.Tensor, keep: int) -> torch.Tensor:
    """True at the ``keep`` largest entries of each row of ``score`` (2-D)."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    if keep:
        mask.scatter_(1, score.topk(keep, dim=1).indices, True)
    return mask


@torch.no_grad()
def prune_experts(model, density: float, stats: list[dict] | None, score: str = "magnitude") -> nn.Module:
    """Unstructured pruning inside every expert to ``density`` of its entries: ``"magnitude"`` keeps the
    floor(density N) largest |W| of each expert matrix; ``"wanda"`` keeps the floor(density * in) largest
    |W_ij| * ||x_j|| of each output row (x: the inputs the expert saw on the calibration tokens)."""
    model = copy.deepcopy(model)
    for i, block in enumerate(moe_blocks(model)):
        gate_up, down = expert_weights_of(block.experts)
        masks = []
        for weight, x2 in ((gate_up, None if stats is None else stats[i]["x2_in"]),
                           (down, None if stats is None else stats[i]["x2_mid"])):
            num, rows, cols = weight.shape
            if score == "magnitude":
                mask = top_mask(weight.abs().reshape(num, -1), math.floor(density * rows * cols + 1e-9))
            elif score == "wanda":
                s = weight.abs() * x2.sqrt().unsqueeze(1)
                mask = top_mask(s.reshape(num * rows, cols), math.floor(density * cols + 1e-9))
            else:
                raise ValueError(f"score={score!r}: 'magnitude' or 'wanda'")
            masks.append(mask.reshape(weight.shape))
        block.experts = PrunedExperts(gate_up, down, *masks, block.experts.act_fn)
    return model


@torch.no_grad()
def lowrank_experts(model, ranks: tuple[int, int]) -> nn.Module:
    """Each fused weight as the experts' mean plus a rank-r SVD of every expert's difference from it
    (``ranks`` for gate_up and down); U holds U_r S_r, V holds V_r^T."""
    model = copy.deepcopy(model)
    for block in moe_blocks(model):
        factors = {}
        for name, weight, rank in zip(("gate_up", "down"), expert_weights_of(block.experts), ranks):
            base = weight.mean(0)
            u, s, vh = torch.linalg.svd(weight - base, full_matrices=False)
            factors[name] = (base, u[..., :rank] * s[:, None, :rank], vh[:, :rank])
        block.experts = LowRankExperts(factors, block.experts.act_fn)
    return model


def pad_experts(model, kappa: float, batches, granularity: str, seed: int) -> nn.Module:
    """PAD experts: convert, taylor partition to ``kappa`` (element: one global ranking; channel: kappa of
    every weight's rows), compact."""
    model = padnet.convert(copy.deepcopy(model), dynamic="experts", pad=True)
    padnet.partition(model, batches, pm.lm_loss, dynamic_ratio=kappa, seed=seed, granularity=granularity,
                     scope="global" if granularity == "element" else "local")
    return padnet.compact(model, allow_unpartitioned=kappa >= 1)


# ----------------------------------------------------------------------------------- budgets
def shapes_of(model) -> list[tuple[int, int, int]]:
    """(E, out, in) of each block's two fused weights (the same in every block)."""
    return [tuple(w.shape) for w in expert_weights_of(moe_blocks(model)[0].experts)]


def setting_for(method: str, budget: float, shapes) -> dict:
    """The method's knob that fills at most ``budget`` of the original expert bytes (float32 values):
    drop/merge keep floor(budget E) experts; pruning keeps density budget - 1/32 (the bitmask is 1/32 of
    the values' bytes); low-rank keeps rank floor(N (budget E - 1) / (E (out + in))) per weight; PAD keeps
    kappa = budget - 1/E dynamic (4 bytes per entry of the static kernel, 4 E per dynamic entry, 4 per
    int32 index: 4 (N + E nnz)); the bitmask count gives PAD kappa = (budget E - 1 - 1/32) / (E - 1)."""
    num = shapes[0][0]
    if method in ("drop", "merge"):
        return {"keep": max(2, math.floor(budget * num + 1e-9))}
    if method in ("prune_magnitude", "prune_wanda"):
        return {"density": budget - BITMASK}
    if method == "lowrank":
        return {"ranks": [max(0, min(min(o, i), math.floor(o * i * (budget * e - 1) / (e * (o + i)) + 1e-9)))
                          for e, o, i in shapes]}
    if method in ("pad_element", "pad_channel"):
        return {"kappa": round(budget - 1 / num, 6)}
    if method == "pad_element_bitmask":
        return {"kappa": round((budget * num - 1 - BITMASK) / (num - 1), 6)}
    raise ValueError(f"unknown method {method!r}")


def compress(model, method: str, setting: dict, stats, batches, seed: int) -> nn.Module:
    if method == "drop":
        return drop_experts(model, setting["keep"], stats)
    if method == "merge":
        return merge_experts(model, setting["keep"], stats)
    if method.startswith("prune_"):
        return prune_experts(model, setting["density"], stats, method.removeprefix("prune_"))
    if method == "lowrank":
        return lowrank_experts(model, tuple(setting["ranks"]))
    if method.startswith("pad_"):
        return pad_experts(model, setting["kappa"], batches, "channel" if method == "pad_channel" else "element",
                           seed)
    raise ValueError(f"unknown method {method!r}")


def counted_bytes(method: str, model) -> int:
    """Stored bytes; for ``pad_element_bitmask`` the PAD form counted with a packed bitmask in place of
    padnet's int32 index list (padnet does not write that form)."""
    nbytes = stored_bytes(model)
    if method == "pad_element_bitmask":
        for block in moe_blocks(model):
            tensors = stored_tensors(block.experts)
            for name, t in tensors.items():
                if name.endswith("dynamic_index"):  # N entries = static values + dynamic positions
                    numel = tensors[name.replace("dynamic_index", "static_values")].numel() + t.numel()
                    nbytes += math.ceil(numel / 8) - tensor_bytes([t])
    return nbytes


# ----------------------------------------------------------------------------------- the study
def load_result(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"rows": [], "pretrain": {}, "timing": {}}


def save_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(result, indent=1).encode())


def pretrained(size: str, model_seed: int, steps: int, data, cache: Path, result: dict):
    """The pretrained model of ``size`` (cached in ``cache`` as a state dict, so reruns skip it)."""
    model = pm.build_model(model_seed, **SIZES[size])
    file = cache / f"{size}_seed{model_seed}_steps{steps}.pt"
    key = f"{size}/{model_seed}"
    if file.exists():
        model.load_state_dict(torch.load(file, weights_only=True))
    else:
        start = time.process_time()
        pm.train(model, data["train"], model_seed, steps, None, f"pretrain {size} seed {model_seed}")
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), file)
        result["pretrain"][key] = {"steps": steps, "cpu_s": time.process_time() - start}
    return model


def row_key(row: dict) -> tuple:
    return row["size"], row["seed"], row["method"], row["budget"]


def run_rows(args, data, result: dict, out: Path) -> None:
    done = {row_key(r) for r in result["rows"]}
    for size in args.sizes:
        steps = args.steps if size == "small" else args.large_steps
        seeds = [args.seed + i for i in range(args.seeds if size == "small" else args.large_seeds)]
        for seed in seeds:
            todo = [("original", 1.0)] + [(m, b) for b in args.budgets for m in args.methods]
            todo = [t for t in todo if (size, seed, *t) not in done]
            if not todo:
                continue
            model_seed = seed if args.seed_kind == "pretrain" else args.seed
            base = pretrained(size, model_seed, steps, data, Path(args.cache), result)
            save_result(out, result)
            generator = torch.Generator().manual_seed(seed + 1)
            batches = [pm.random_batch(data["train"], generator) for _ in range(args.calib_batches)]
            stats = calibrate(base, batches)
            original_bytes = stored_bytes(base)
            for method, budget in tqdm(todo, desc=f"{size} seed {seed}"):
                start = time.process_time()
                setting = {} if method == "original" else setting_for(method, budget, shapes_of(base))
                model = copy.deepcopy(base) if method == "original" else compress(
                    base, method, setting, stats, batches, seed)
                nbytes = counted_bytes(method, model)
                row = {"size": size, "seed": seed, "method": method, "budget": budget, "setting": setting,
                       "stored_bytes": nbytes, "fraction": nbytes / original_bytes,
                       "stored_values": stored_values(model), "original_bytes": original_bytes,
                       "resident_bytes": resident_bytes(model), "loss_before_ft": pm.heldout_loss(model, data["dev"])}
                pm.train(model, data["train"], seed + 2, args.finetune_steps, None, f"fine-tune {method} {budget}")
                row["loss_after_ft"] = pm.heldout_loss(model, data["dev"])
                if method.startswith("pad_"):
                    padnet.deploy(model, allow_unpartitioned=True)
                    row["loss_deployed"] = pm.heldout_loss(model, data["dev"])
                    row["stored_bytes_deployed"] = counted_bytes(method, model)
                    row["resident_bytes"] = resident_bytes(model)
                row["cpu_s"] = time.process_time() - start
                result["rows"].append(row)
                save_result(out, result)


def time_blocks(args, data, result: dict, out: Path) -> None:
    """Seconds per token of layer 0's MoE block (router + experts) of every compressed form at every budget,
    one thread, interleaved rounds (benchmarks/common.py's ``time_variants``), for 2048 and 64 tokens."""
    for size in args.sizes:
        if size in result["timing"]:
            continue
        steps = args.steps if size == "small" else args.large_steps
        base = pretrained(size, args.seed, steps, data, Path(args.cache), result)
        generator = torch.Generator().manual_seed(args.seed + 1)
        batches = [pm.random_batch(data["train"], generator) for _ in range(args.calib_batches)]
        stats = calibrate(base, batches)
        # the original, and the same experts through this benchmark's own loop (``CompressedExperts``)
        num = shapes_of(base)[0][0]
        blocks = {"original": moe_blocks(base)[0].eval(), "drop@1.0": moe_blocks(drop_experts(base, num, stats))[0]}
        for method in tqdm([m for m in args.methods], desc=f"compress for timing ({size})"):
            for budget in args.budgets:
                model = compress(base, method, setting_for(method, budget, shapes_of(base)), stats, batches, args.seed)
                if method.startswith("pad_"):
                    padnet.deploy(model)
                blocks[f"{method}@{budget}"] = moe_blocks(model)[0].eval()
        captured = {}
        hook = moe_blocks(base)[0].register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0].detach()))
        windows = data["train"][: 32 * pm.CONTEXT].view(32, pm.CONTEXT)
        with torch.no_grad():
            base.eval()(windows)
        hook.remove()
        timing = {}
        for tokens, x in ((2048, captured["x"]), (64, captured["x"][:1])):
            fns = {name: (lambda b=block, x=x: _infer(b, x)) for name, block in blocks.items()}
            seconds = time_variants(fns, min_run_time=args.time_per_variant, rounds=3)
            timing[str(tokens)] = {name: s / tokens for name, s in seconds.items()}
        result["timing"][size] = timing
        save_result(out, result)


@torch.no_grad()
def shared_energy(model) -> list[float]:
    """Per block and fused weight: E ||mean||^2 / sum_i ||W_i||^2, the share of the experts' energy their
    mean (the shared kernel PAD and base + low-rank start from) carries; 1/E for unrelated experts, 1 for
    identical ones (an MoE upcycled from one dense FFN starts at 1)."""
    out = []
    for block in moe_blocks(model):
        for weight in expert_weights_of(block.experts):
            out.append(float(weight.mean(0).pow(2).sum() * weight.shape[0] / weight.pow(2).sum()))
    return out


def record_shared_energy(args, data, result: dict) -> None:
    for size in args.sizes:
        if size not in result.setdefault("shared_energy", {}):
            steps = args.steps if size == "small" else args.large_steps
            base = pretrained(size, args.seed, steps, data, Path(args.cache), result)
            result["shared_energy"][size] = shared_energy(base)


def _infer(block, x):
    with torch.inference_mode():
        return block(x)


# ----------------------------------------------------------------------------------- report
def summarise(result: dict) -> dict:
    """(size, method, budget) -> {seeds: row} and the statistics over seeds."""
    groups: dict[tuple, dict[int, dict]] = {}
    for r in result["rows"]:
        groups.setdefault((r["size"], r["method"], r["budget"]), {})[r["seed"]] = r
    return groups


def fmt_stat(values) -> str:
    stat = Stat.of(values)
    return f"{stat.mean:.4f}" + ("" if stat.n < 2 else f" ± {stat.std:.4f}")


def fmt_diff(rows: dict, pad: dict | None, key: str) -> str:
    if pad is None:
        return ""
    d = paired_difference({s: r[key] for s, r in rows.items()}, {s: r[key] for s, r in pad.items()})
    if d is None:
        return ""
    if d.n < 2:
        return f"{d.mean:+.4f}"
    return f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"


def size_text(size: str) -> str:
    s = SIZES[size]
    return f"{s['layers']} layers x {s['experts']} experts (top-2, hidden 64, expert FFN 192)"


def table(result: dict, size: str) -> list[str]:
    groups = summarise(result)
    lines = ["| method | budget | setting | stored bytes (% of original) | of which index/mask/map | in memory | "
             "loss right after (mean ± sd) | vs PAD element (paired, 95 % CI) | after fine-tune (mean ± sd) | "
             "vs PAD element |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    methods = ["original", *[m for m in LABELS if m != "original"]]
    for budget in sorted({k[2] for k in groups if k[0] == size}, reverse=True):
        for method in methods:
            rows = groups.get((size, method, budget))
            if not rows:
                continue
            pad = groups.get((size, "pad_element", budget)) if method != "pad_element" else None
            r0 = next(iter(rows.values()))
            setting = ", ".join(f"{k} {v}" for k, v in r0["setting"].items())
            overhead = r0["stored_bytes"] - 4 * r0["stored_values"]
            lines.append(
                f"| {LABELS[method]} | {budget:.0%} | {setting} | {r0['stored_bytes']:,} ({r0['fraction']:.1%}) | "
                f"{overhead:,} | {r0['resident_bytes'] / r0['original_bytes']:.0%} | "
                f"{fmt_stat([r['loss_before_ft'] for r in rows.values()])} | {fmt_diff(rows, pad, 'loss_before_ft')} | "
                f"{fmt_stat([r['loss_after_ft'] for r in rows.values()])} | {fmt_diff(rows, pad, 'loss_after_ft')} |")
    return lines


def timing_table(result: dict, size: str) -> list[str]:
    timing = result["timing"].get(size)
    if not timing:
        return []
    lines = ["| form | µs/token, 2048 tokens | ratio | µs/token, 64 tokens | ratio |", "|---|---:|---:|---:|---:|"]
    for name in timing["2048"]:
        method, _, budget = name.partition("@")
        label = LABELS[method] + (f" @ {float(budget):.0%}" if budget else "")
        t, s = timing["2048"][name], timing["64"][name]
        lines.append(f"| {label} | {t * 1e6:.2f} | {t / timing['2048']['original']:.2f}x | {s * 1e6:.2f} | "
                     f"{s / timing['64']['original']:.2f}x |")
    return lines


def winners(result: dict, size: str) -> list[str]:
    """Per budget: the method with the lowest mean loss right after compression and after the fine-tune."""
    groups = summarise(result)
    out = []
    for budget in sorted({k[2] for k in groups if k[0] == size and k[1] != "original"}, reverse=True):
        cells = []
        for key, name in (("loss_before_ft", "right after compression"), ("loss_after_ft", "after fine-tune")):
            means = {m: Stat.of([r[key] for r in rows.values()]).mean
                     for (sz, m, b), rows in groups.items() if sz == size and b == budget}
            ranked = sorted(means, key=means.get)
            cells.append(f"{name}: " + " < ".join(f"{LABELS[m]} {means[m]:.3f}" for m in ranked))
        out.append(f"- {size} model, {budget:.0%} budget. " + "; ".join(cells))
    return out


def plot(result: dict, path: Path) -> None:
    """Loss minus the original MoE's (same seed; after fine-tune: minus the original fine-tuned alike)
    against stored bytes, one line per method, mean and sd over seeds; one row of panels per model size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = summarise(result)
    sizes = [s for s in SIZES if any(k[0] == s for k in groups)]
    fig, axes = plt.subplots(len(sizes), 2, figsize=(12, 4.5 * len(sizes)), squeeze=False)
    for row, size in enumerate(sizes):
        original = groups.get((size, "original", 1.0), {})
        for col, (key, title) in enumerate((("loss_before_ft", "right after compression"),
                                            ("loss_after_ft", "after the same fine-tune"))):
            ax = axes[row][col]
            ax.axhline(0, color="k", ls=":", lw=1)
            for method in [m for m in LABELS if m != "original"]:
                points = sorted((b, rows) for (sz, m, b), rows in groups.items() if sz == size and m == method)
                if not points or not original:
                    continue
                xs = [Stat.of([r["fraction"] for r in rows.values()]).mean * 100 for _, rows in points]
                stats = [Stat.of([r[key] - original[s][key] for s, r in rows.items() if s in original])
                         for _, rows in points]
                ax.errorbar(xs, [s.mean for s in stats], yerr=[0 if s.n < 2 else s.std for s in stats],
                            marker="o", capsize=3, label=LABELS[method], ls="-" if "pad" in method else "--")
            ax.set_xlabel("stored expert bytes, % of the original")
            ax.set_ylabel("held-out loss - original MoE's (nats/byte)")
            ax.set_title(f"{size} model ({SIZES[size]['layers']} layers x {SIZES[size]['experts']} experts): {title}",
                         fontsize=9)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def seeds_text(result: dict, size: str) -> str:
    seeds = sorted({r["seed"] for r in result["rows"] if r["size"] == size})
    return ", ".join(map(str, seeds))


def markdown(result: dict) -> str:
    cfg = result["config"]
    sizes = [s for s in SIZES if any(r["size"] == s for r in result["rows"])]
    steps = {"small": cfg["steps"], "large": cfg["large_steps"]}
    seed_kind = ("each seed pretrains its own model" if cfg["seed_kind"] == "pretrain" else
                 f"one pretrained model (seed {cfg['seed']}); the seed draws the calibration batches and the "
                 "fine-tune batches")
    lines = ["# PAD experts against MoE-compression methods at equal stored bytes (issue 31)", "",
             "Regenerate (one core, about 50 minutes; resumable: rows are appended to the .json as they finish, "
             "so rerunning a command continues it; `--render` rewrites this page and the plot from the .json):",
             "", "```", *(f"nice -n 5 taskset -c 1 env OMP_NUM_THREADS=1 {c}" for c in cfg["commands"]),
             "python benchmarks/moe_compression.py --render", "```", "",
             "## Setup", "",
             "- Model: the byte-level Mixtral of `benchmarks/pretrained_moe.py` (issue 18), top-2 routing, "
             "hidden 64, expert FFN 192, context 64, trained with AdamW (lr "
             f"{pm.LR}, batch {pm.BATCH}) on the SST-2 + CoLA train sentences: "
             + "; ".join(f"{s}: {size_text(s)}, {steps[s]} pretraining steps" for s in sizes) + ".",
             "- Loss: mean token cross-entropy (nats per byte) over every 64-byte window of the SST-2 + CoLA dev "
             "sentences" + (f" (first {cfg['dev_bytes']:,} bytes)" if cfg.get("dev_bytes") else "") + ".",
             f"- Seeds: {seed_kind}. Small model seeds {seeds_text(result, 'small')}"
             + (f"; large model seed {seeds_text(result, 'large')}" if "large" in sizes else "") + ". "
             "Every row of a seed sees the same calibration batches and the same fine-tune batches, so "
             "differences between rows are paired by seed.",
             f"- Calibration (router load, router logits, Wanda's input norms, PAD's taylor scores): "
             f"{cfg['calib_batches']} training batches of {pm.BATCH} x {pm.CONTEXT} bytes. Fine-tune: "
             f"{cfg['finetune_steps']} AdamW steps of the whole model, as in pretraining, the compressed form fixed "
             "(kept experts, masks, ranks, PAD masks).",
             "- Budgets: stored bytes of the expert weights, 75 %, 50 % and 30 % of the original float32 experts "
             "(the large model: 50 % and 30 %); "
             "the router, attention and embeddings are the same in every row and not counted. Each method's knob "
             "is set to the largest value whose bytes fit (`setting_for`); dropping and merging can only keep whole "
             "experts, so their 30 % rows keep a quarter.",
             "- Counting (`stored_tensors`: the tensors a file of that form holds, at their dtype): "
             "dropping: the kept experts; merging: the merged experts plus an int32 expert-to-group map (E per "
             "layer); pruning: the kept float32 values plus a packed bitmask (1 bit per entry: 1/32 of the "
             "original bytes); base + low-rank: the mean, U_r S_r and V_r^T per expert; PAD experts: padnet's "
             "deployed file form (`padnet.deploy`, then the state dict): N - nnz static values, E x nnz dynamic "
             "values and an int32 index per dynamic entry, so bytes = 4 (N + E nnz) and the index overhead is "
             "exactly 4 nnz bytes; the channel-granular experts are stored the same way (padnet's deployed "
             "experts keep an entry index, not a row list). 'In memory' is what the modules hold at run time "
             "(deployed PAD: a dense static kernel of N values and an int64 index; pruning: a bool mask byte "
             "per entry).", ""]
    for size in sizes:
        lines += [f"## {size} model: {size_text(size)}", ""]
        energy = result.get("shared_energy", {}).get(size)
        if energy:
            lines += [f"How much the {size} model's experts share (seed {cfg['seed']}): their mean carries "
                      f"{min(energy):.3f} to {max(energy):.3f} of the experts' energy (E ||mean||^2 / sum ||W_i||^2 "
                      f"per fused weight; 1/E = {1 / SIZES[size]['experts']:.3f} for unrelated experts, 1 for "
                      "identical ones).", ""]
        lines += ["Loss right after compression and after the fine-tune: mean ± sd over seeds; 'vs PAD element': "
                  "the paired (same seed) difference to PAD experts (element) at the same budget, mean and 95 % "
                  "t-interval (negative: better than PAD).", "", *table(result, size), ""]
        if result["timing"].get(size):
            lines += [f"Per-token time of layer 0's MoE block (router + experts), each in the form that holds only "
                      f"the stored bytes (dropped/merged experts dense; pruned, low-rank and PAD experts assemble "
                      f"their E dense expert weights in every forward), one thread, interleaved rounds, fastest "
                      f"round's median, seed {cfg['seed']}, {cfg['threads']} thread(s); 2048 tokens is a "
                      "prefill-sized batch, 64 tokens one sequence. 'expert dropping @ 100%' keeps every expert: it is "
                      "this benchmark's own expert loop on the uncompressed weights (transformers' loop is the "
                      "original's), the reference for what the loop itself costs:", "", *timing_table(result, size),
                      ""]
    lines += ["![loss minus the original MoE's, against stored bytes](moe_compression.png)", "",
              "## Ranking by mean loss", "", *winners(result, "small"), *winners(result, "large"), "",
              *READING, ""]
    return "\n".join(lines)


# The plain reading of the committed run (written from its numbers; rerun with other settings, re-read).
READING: list[str] = [
    "## Reading", "",
    "Small model (3 fine-tune seeds on one pretrained model; nats per byte; 'after' = after the same 100-step "
    "fine-tune; differences paired by seed, 95 % intervals):", "",
    "- **Unstructured pruning inside the experts wins at every budget, before and after the fine-tune.** "
    "After it, pruning (magnitude) is 0.049 [0.043, 0.056], 0.111 [0.106, 0.115] and 0.163 [0.158, 0.168] below "
    "PAD experts (element) at 75 %, 50 % and 30 %; at 75 % it is level with the original MoE fine-tuned alike "
    "(1.523 vs 1.527). Wanda's activation-aware score is better than magnitude right after compression at "
    "50 % and 30 % (2.006 vs 2.028 at 30 %) and slightly worse after the fine-tune.",
    "- **PAD experts trail the baselines.** Right after compression PAD (element) is behind all five "
    "baselines at every budget (only PAD at channel granularity is worse). After the fine-tune it trails "
    "expert dropping by 0.019 / 0.043 / 0.052 and expert merging by 0.021 / 0.032 / 0.028 (75 / 50 / 30 %), "
    "is just behind base + low-rank at 75 % and 50 % (low-rank -0.001 [-0.014, +0.011], -0.006 [-0.008, "
    "-0.003]) and beats it only at 30 % (low-rank +0.021 [+0.010, +0.032]). Channel "
    "granularity costs another 0.06 to 0.12 after the fine-tune. Dropping and merging store only 25 % at the "
    "30 % budget and still beat PAD there.",
    "- **Why: these experts share nothing.** Their mean carries 0.125 to 0.127 of their energy, the 1/E = "
    "0.125 of unrelated experts (the line under the model's heading). PAD's static entries take that mean (and so does "
    "low-rank's base), so making an entry static loses the expert's value about as surely as pruning it "
    "would, while PAD must choose the same positions in every expert and pays E + 1 floats and an int32 "
    "index per dynamic entry: at 50 % of the bytes PAD keeps 37.5 % of each expert's entries, chosen jointly, "
    "where pruning keeps 46.9 %, chosen per expert. PAD's premise is a shared kernel worth keeping: an MoE "
    "upcycled from one dense FFN (where the mean starts as the whole weight), as in docs/results/text.md. "
    "This benchmark's MoE is trained from scratch, so it is the unfavourable case for PAD; an upcycled MoE "
    "is not measured here.",
    "- **Index width does not change the ranking.** padnet's deployed experts store an int32 index per "
    "dynamic entry (in memory int64). A packed bitmask (N/8 bytes) is smaller whenever kappa > 1/32 and "
    "would let PAD keep kappa 0.424 instead of 0.375 at the 50 % budget; even PAD at kappa 0.625 (the 75 % "
    "row, 1.572 after the fine-tune) is worse than pruning at 50 % (1.532).",
    "- **Time: only dropping and merging are faster.** Per token on 64 tokens (one sequence), over both "
    "sizes, dropping runs at 0.33x to 0.75x of the original block and merging at 0.36x to 0.75x; PAD experts "
    "(0.91x to 1.35x) and base + low-rank (1.03x to 1.41x) assemble their E dense experts in each forward "
    "and cost about what the original does or a little more; pruning, run from its stored values and "
    "bitmask, costs 1.2x to 2.8x (kept dense in memory it would cost the original's time and save no "
    "memory). On 2048 tokens every form is within 0.57x to 1.22x of the original (the assembly is shared by "
    "more tokens). These are single timings on a shared machine: the same work timed twice (the original, "
    "and 'expert dropping @ 100%' on the same experts) differs by 0.82x to 1.35x, so only differences larger "
    "than about a third mean anything.",
    "- **Memory at run time** is not the stored bytes for the sparse forms: deployed PAD experts hold a "
    "dense static kernel and an int64 index (91 / 59 / 34 % of the original at the 75 / 50 / 30 % budgets), "
    "pruning with a bool mask byte per entry 97 / 72 / 52 % (large model: PAD 55 / 33 %, pruning 72 / 52 % at "
    "50 / 30 %); dropping, merging and low-rank hold what they "
    "store.", "",
    "- **The larger model (4 layers x 16 experts, 800 pretraining steps, one seed, 50 % and 30 % only): PAD "
    "experts move up to third.** After the fine-tune PAD (element) is behind the two prunings (magnitude "
    "-0.022 at 50 %, -0.049 at 30 %) and ahead of base + low-rank (+0.015, +0.039 for low-rank), merging "
    "(+0.024, +0.039) and dropping (+0.026, +0.045); right after compression it is fourth, behind pruning and "
    "low-rank, and ahead of dropping and merging. The experts are still unrelated (their mean carries 0.061 "
    "to 0.064 of their energy, 1/16 = 0.0625), but with E = 16 the shared static kernel costs 1/16 of the "
    "bytes instead of 1/8, so at 50 % PAD keeps kappa 0.4375 of each expert's entries, close to pruning's "
    "density 0.469. Pruning still wins at both budgets; channel granularity is still last. One seed, so no "
    "interval: the small model's per-row spread after the fine-tune was at most 0.007 (sd), below these gaps, "
    "but that is not a test; the larger model is also less trained (original loss 1.655 vs 1.537).", "",
    "What to pick for MoEs like these (experts trained from scratch): at every budget and both sizes, "
    "unstructured pruning inside the experts (magnitude or Wanda) if a sparse format is acceptable. If speed "
    "matters or the experts must stay dense, expert dropping or merging, the only forms that run faster "
    "(after the fine-tune dropping is ahead of merging at 50 % and 30 % on the small model, level at 75 %; "
    "merging is slightly ahead on the larger one). PAD experts are not the pick for 8 unrelated experts; with "
    "16 they come third, ahead of dropping, merging and low-rank after the fine-tune, but at the original's "
    "time. They are worth measuring on an upcycled MoE, whose experts share their parent's weight.",
    "",
    "Not shown: seeds of the pretraining (one pretrained model per size; the spread is that of the "
    "calibration and fine-tune batches, and is 0 before the fine-tune for magnitude pruning and low-rank, which "
    "use no calibration data); a 200-step fine-tune (100 here, to fit the CPU budget); for the larger model "
    "the 75 % budget, more than one seed and the issue's ~30 minutes of pretraining (800 steps, about 4 "
    "minutes, to fit the same budget); an upcycled MoE; sizes "
    "beyond 2.4M expert parameters; sparse kernels for the pruned experts; combinations (e.g. PAD with its "
    "dynamic entries pruned). The original MoE's loss (1.5368) is not the 1.5273 that "
    "docs/results/pretrained_moe.md reports for the same seed and steps (a software-version difference is "
    "the likely cause; not investigated).",
]


def render(result: dict, out: Path) -> None:
    atomic_write_bytes(out.with_suffix(".md"), markdown(result).encode())
    plot(result, out.with_suffix(".png"))


def command_of(args) -> str:
    """The command line that reruns ``args`` (GLUE's folder as a placeholder)."""
    parts = ["python benchmarks/moe_compression.py --glue-dir GLUE", f"--seed {args.seed}", f"--seeds {args.seeds}",
             f"--seed-kind {args.seed_kind}", f"--steps {args.steps}", "--sizes " + " ".join(args.sizes),
             f"--finetune-steps {args.finetune_steps}", f"--calib-batches {args.calib_batches}",
             f"--time-per-variant {args.time_per_variant:g}",
             "--methods " + " ".join(args.methods), "--budgets " + " ".join(f"{b:g}" for b in args.budgets)]
    if "large" in args.sizes:
        parts += [f"--large-steps {args.large_steps}", f"--large-seeds {args.large_seeds}"]
    if args.dev_bytes:
        parts.append(f"--dev-bytes {args.dev_bytes}")
    if args.no_timing:
        parts.append("--no-timing")
    return " ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_glue_dir(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the small model (seed, seed+1, ...)")
    parser.add_argument("--seed-kind", choices=["pretrain", "finetune"], default="pretrain",
                        help="pretrain: each seed pretrains its own model; finetune: one pretrained model "
                             "(--seed), the seed draws calibration and fine-tune batches only")
    parser.add_argument("--steps", type=int, default=2239, help="pretraining steps of the small model")
    parser.add_argument("--sizes", nargs="+", default=["small"], choices=list(SIZES))
    parser.add_argument("--large-steps", type=int, default=1000, help="pretraining steps of the large model")
    parser.add_argument("--large-seeds", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=[*METHODS, "pad_element_bitmask"])
    parser.add_argument("--budgets", type=float, nargs="+", default=BUDGETS)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--dev-bytes", type=int, default=None, help="evaluate on the first N dev bytes only")
    parser.add_argument("--time-per-variant", type=float, default=0.3, help="seconds of timing per form and size")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--cache", default="runs/moe_compression", help="pretrained checkpoints (reused)")
    parser.add_argument("--out", default="docs/results/moe_compression")
    parser.add_argument("--render", action="store_true", help="rewrite the .md and .png from the .json only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    result = load_result(out.with_suffix(".json"))
    if args.render:
        render(result, out)
        return
    if args.glue_dir is None or not (Path(args.glue_dir) / "SST-2").is_dir():
        parser.error(f"--glue-dir {args.glue_dir}: need a folder in GLUE's TSV layout holding SST-2/ and CoLA/ "
                     "(or set $PADNET_GLUE_DIR)")
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    data = {split: pm.byte_stream(Path(args.glue_dir), split) for split in ("train", "dev")}
    if args.dev_bytes:
        data["dev"] = data["dev"][: args.dev_bytes]
    config = {k: v for k, v in vars(args).items() if k not in ("glue_dir", "render", "out", "cache")}
    config["threads"], config["torch"] = torch.get_num_threads(), torch.__version__
    commands = result.get("config", {}).get("commands", [])
    config["commands"] = commands + [command_of(args)] if command_of(args) not in commands else commands
    result["config"] = config
    run_rows(args, data, result, out.with_suffix(".json"))
    record_shared_energy(args, data, result)
    if not args.no_timing:
        time_blocks(args, data, result, out.with_suffix(".json"))
    save_result(out.with_suffix(".json"), result)
    render(result, out)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
