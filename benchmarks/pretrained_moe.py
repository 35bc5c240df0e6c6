"""PAD compression of a pretrained fused-expert MoE (issue 18): a tiny Mixtral-style byte-level causal
LM trained on GLUE sentences, its experts converted with ``dynamic="experts"`` and partitioned to
kappa 0.3 / 0.5 (taylor, no warm-up), held-out loss before and after a short fine-tune, beside the
original MoE fine-tuned for the same steps, and the experts' deployed storage.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/pretrained_moe.py --glue-dir DIR --minutes 3

``--glue-dir`` (default ``$PADNET_GLUE_DIR``) is a folder in GLUE's TSV layout (``SST-2/{train,dev}.tsv``,
``CoLA/{train,dev}.tsv``), as ``padnet.data.glue`` reads it.

Training for ``--minutes`` stops on the clock, so the step count can differ between runs; the number
of steps taken is recorded and ``--steps N`` reruns exactly that (same seed, same result).
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
import transformers
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark scripts are not a package
from common import add_glue_dir

import padnet
from padnet.files import atomic_write_bytes

CONTEXT = 64
BATCH = 32
LR = 1e-3


def sentences(glue_dir: Path, split: str) -> list[str]:
    """SST-2 and CoLA sentences of one split (SST-2: column 0 after the header; CoLA: column 3, no header)."""
    sst = [line.split("\t")[0] for line in (glue_dir / "SST-2" / f"{split}.tsv").read_text().splitlines()[1:]]
    cola = [line.split("\t")[3] for line in (glue_dir / "CoLA" / f"{split}.tsv").read_text().splitlines()]
    return sst + cola


def byte_stream(glue_dir: Path, split: str) -> torch.Tensor:
    return torch.tensor(list("\n".join(sentences(glue_dir, split)).encode("utf-8")), dtype=torch.long)


def build_model(seed: int, vocab: int = 256, layers: int = 2, experts: int = 8) -> transformers.MixtralForCausalLM:
    """A 2-layer, 8-expert top-2 Mixtral over bytes (hidden 64, expert FFN 192); ``layers`` and
    ``experts`` scale it up (benchmarks/moe_compression.py's larger model)."""
    torch.manual_seed(seed)
    config = transformers.MixtralConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=192, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=4, num_local_experts=experts, num_experts_per_tok=2, max_position_embeddings=CONTEXT,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    if hasattr(config, "_experts_implementation"):
        config._experts_implementation = "eager"  # the loop PADExperts follows step by step
    return transformers.MixtralForCausalLM(config)


def random_batch(stream: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - CONTEXT, (BATCH,), generator=generator)
    return torch.stack([stream[s:s + CONTEXT] for s in starts.tolist()])


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    return model(batch, labels=batch).loss


@torch.no_grad()
def heldout_loss(model, stream: torch.Tensor) -> float:
    """Mean token cross-entropy over every non-overlapping window of the dev stream."""
    windows = stream[: len(stream) // CONTEXT * CONTEXT].view(-1, CONTEXT)
    model.eval()
    total = 0.0
    for chunk in windows.split(128):
        total += float(lm_loss(model, chunk)) * len(chunk)
    model.train()
    return total / len(windows)


def train(model, stream, seed: int, steps: int | None, seconds: float | None, desc: str) -> int:
    """AdamW on random windows; stops after ``steps`` or on the clock. Returns the steps taken."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.01)
    model.train()
    start, done = time.monotonic(), 0
    bar = tqdm(total=steps, desc=desc, leave=False)
    while (steps is None or done < steps) and (seconds is None or time.monotonic() - start < seconds):
        loss = lm_loss(model, random_batch(stream, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return done


def expert_storage(model) -> tuple[int, int]:
    """(values, bytes) of the fused-expert modules. Values: the original's parameters, or for a deployed
    PAD model (1 - kappa) N static + kappa K N dynamic per weight (docs/method.md#storage; ``padnet.summary``
    does not list the deployed expert weights, see the notes). Bytes: everything the modules hold,
    parameters and buffers (the deployed form keeps a dense static kernel and an int64 index list)."""
    experts = [module for name, module in model.named_modules() if name.endswith("mlp.experts")]
    nbytes = sum(t.numel() * t.element_size() for m in experts for t in [*m.parameters(), *m.buffers()])
    deployed = [m for e in experts for m in e.modules() if hasattr(m, "dynamic_values")]
    if deployed:
        values = sum(m.dynamic_values.numel() + m.static_kernel.numel() - m.num_dynamic for m in deployed)
    else:
        values = sum(p.numel() for m in experts for p in m.parameters())
    return values, nbytes


def pad_row(trained, kappa, data, args) -> dict:
    """Convert, partition (taylor, a few training batches), compact; loss before/after fine-tune; deploy."""
    model = padnet.convert(copy.deepcopy(trained), dynamic="experts", pad=True)
    generator = torch.Generator().manual_seed(args.seed + 1)
    scoring = [random_batch(data["train"], generator) for _ in range(args.score_batches)]
    report = padnet.partition(model, scoring, lm_loss, dynamic_ratio=kappa, seed=args.seed)
    padnet.compact(model)
    before = heldout_loss(model, data["dev"])
    train(model, data["train"], args.seed + 2, args.finetune_steps, None, f"fine-tune PAD {kappa}")
    after = heldout_loss(model, data["dev"])
    padnet.deploy(model)
    deployed = heldout_loss(model, data["dev"])
    values, nbytes = expert_storage(model)
    return {"method": "PAD experts", "kappa": kappa, "expert_params": values, "expert_bytes": nbytes,
            "loss_before_ft": before, "loss_after_ft": after, "loss_deployed": deployed,
            "scoring_loss_before": report.loss_before, "scoring_loss_after": report.loss_after}


def run(args) -> dict:
    data = {split: byte_stream(Path(args.glue_dir), split) for split in ("train", "dev")}
    model = build_model(args.seed)
    seconds = None if args.steps is not None else args.minutes * 60
    steps = train(model, data["train"], args.seed, args.steps, seconds, "pretrain MoE")
    values, nbytes = expert_storage(model)
    moe = {"method": "MoE (original)", "kappa": 1.0, "expert_params": values, "expert_bytes": nbytes,
           "loss_before_ft": heldout_loss(model, data["dev"])}
    rows = [pad_row(model, kappa, data, args) for kappa in args.kappas]
    tuned = copy.deepcopy(model)
    train(tuned, data["train"], args.seed + 2, args.finetune_steps, None, "fine-tune MoE")
    moe["loss_after_ft"] = heldout_loss(tuned, data["dev"])
    for row in [moe, *rows]:
        row["memory_saved"] = 1 - row["expert_bytes"] / moe["expert_bytes"]
        row["params_saved"] = 1 - row["expert_params"] / moe["expert_params"]
    return {"pretrain_steps": steps, "seed": args.seed, "finetune_steps": args.finetune_steps,
            "train_bytes": len(data["train"]), "dev_bytes": len(data["dev"]), "rows": [moe, *rows]}


def markdown(result: dict, command: str) -> str:
    lines = ["# Pretrained MoE compressed with PAD experts (issue 18)", "",
             f"Command: `{command}`", "",
             f"Tiny Mixtral-style byte-level LM (2 layers, 8 experts top-2, hidden 64, expert FFN 192, context "
             f"{CONTEXT}) trained {result['pretrain_steps']} AdamW steps (batch {BATCH}, lr {LR}) on the SST-2 + "
             f"CoLA train sentences ({result['train_bytes']:,} bytes); held-out = their dev sentences "
             f"({result['dev_bytes']:,} bytes), loss = mean token cross-entropy (nats). Fine-tune: "
             f"{result['finetune_steps']} steps, same optimizer settings, same batches for every row.", "",
             "| method | kappa | expert params | params saved | expert bytes | memory saved | held-out loss before "
             "fine-tune | after fine-tune |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['kappa']:.1f} | {r['expert_params']:,} | {r['params_saved']:.1%} | "
                     f"{r['expert_bytes']:,} | {r['memory_saved']:.1%} | {r['loss_before_ft']:.4f} | "
                     f"{r['loss_after_ft']:.4f} |")
    lines += ["", "Expert params are the deployable values ((1 - kappa) N static + kappa K N dynamic, "
              "docs/method.md#storage); "
              "expert bytes are what the deployed expert modules hold (float32 parameters and buffers: a dense "
              "static kernel of N values and an int64 index list), so memory saved is below params saved; "
              "the rest of the model (attention, router, embeddings) is the same in every row. "
              "PAD's 'before fine-tune' is right after the partition (taylor, no warm-up) and compaction; the "
              "deployed model gives the fine-tuned loss (json: `loss_deployed`).", "", *reading(result["rows"]), ""]
    return "\n".join(lines)


def reading(rows: list[dict]) -> list[str]:
    """A plain reading, from the numbers: PAD's cost against the MoE before and after the same fine-tune."""
    moe = rows[0]
    out = ["Reading:", ""]
    for r in rows[1:]:
        out.append(f"- kappa {r['kappa']:.1f}: {r['params_saved']:.0%} fewer expert values "
                   f"({r['memory_saved']:.0%} fewer bytes); right after the partition the held-out loss is "
                   f"{r['loss_before_ft'] - moe['loss_before_ft']:+.4f} "
                   f"nats from the MoE's, after the fine-tune "
                   f"{r['loss_after_ft'] - moe['loss_after_ft']:+.4f} nats from the MoE fine-tuned alike.")
    out += ["- Shown: on this tiny model, one seed, making 50-70% of each expert weight's entries shared (the "
            "experts' mean) costs the held-out loss listed above, and a short fine-tune recovers what it can.",
            "- Not shown: any scale beyond a 0.6M-parameter expert set, more than one seed (no spread), "
            "downstream task quality, speed; nor a comparison with other expert-compression methods "
            "(expert pruning/merging). The int64 index list is counted as stored (int32 would save more)."]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_glue_dir(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=3.0, help="pretraining time budget")
    parser.add_argument("--steps", type=int, default=None,
                        help="pretrain exactly this many steps (overrides --minutes)")
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--score-batches", type=int, default=8)
    parser.add_argument("--kappas", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--out", default="docs/results/pretrained_moe")
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the existing .json only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render:
        result = json.loads(out.with_suffix(".json").read_text())
        atomic_write_bytes(out.with_suffix(".md"), markdown(result, result["command"]).encode())
        return
    if args.glue_dir is None or not (Path(args.glue_dir) / "SST-2").is_dir():
        parser.error(f"--glue-dir {args.glue_dir}: need a folder in GLUE's TSV layout holding SST-2/ and CoLA/ "
                     "(or set $PADNET_GLUE_DIR)")
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    result = run(args)
    command = (f"python benchmarks/pretrained_moe.py --glue-dir GLUE --seed {args.seed} "
               f"--steps {result['pretrain_steps']}")
    result["command"] = command
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out.with_suffix(".json"), json.dumps(result, indent=2).encode())
    text = markdown(result, command)
    atomic_write_bytes(out.with_suffix(".md"), text.encode())
    print(text)
    assert all(math.isfinite(r["loss_after_ft"]) for r in result["rows"])


if __name__ == "__main__":
    main()
