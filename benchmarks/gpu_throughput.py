"""Throughput on a lent H100/H200: every static sub-network, the batched early-exit engine, the gated engine and
GEEP, in bf16 at batch 256 — the same ratios as the CPU tables (`dynamic_throughput.py`), measured as medians of
interleaved rounds with the GPU synchronised after each variant.

The device image has torch and transformers but no `datasets` and no package registry, and at most 64 MiB travels
with a call. So this runs in two steps: `--pack` (here) writes a run's dynamic checkpoint in bf16 and its dev (and
GEEP training) examples, already tokenized, as parquet files into a folder to carry; `--packed` (there) reads them
with pyarrow. Without CUDA, `--packed` runs a tiny CPU fallback (fp32, the first examples, batch 8, one round) that
checks the script end to end and prints what it would measure on a GPU.

    python benchmarks/gpu_throughput.py --pack runs/dynamic/sst2 --stage gates --into device_pack
    PYTHONPATH=src python benchmarks/gpu_throughput.py --packed device_pack --output $OUT/gpu_throughput.json
    python benchmarks/gpu_throughput.py --show benchmarks/results/gpu_throughput_sst2.json
"""

import argparse
import json
from pathlib import Path

import torch
from common import add_run_arguments, parse_or_show, run_record, run_splits, write_report

from transformers_flex import FlexBertForSequenceClassification, subnet_flops
from transformers_flex.evaluation import interleaved_medians, subnet_grid
from transformers_flex.inference import bucketed_forward, fit_exit_predictor

PACKED_SPLITS = ("dev", "train")  # train: the examples GEEP's token table is fitted on
GPU_SETTINGS = {"batch_size": 256, "rounds": 7, "dtype": "bfloat16", "max_examples": None}
FALLBACK_SETTINGS = {"batch_size": 8, "rounds": 1, "dtype": "float32", "max_examples": 16}
WOULD_MEASURE = (
    "On a GPU this measures, in bf16 at batch 256 over the whole packed dev set: examples/s of the full model and "
    "the speed-up (with its FLOPs-ideal value) of every static sub-network, the early-exit engine and the gated "
    "engine at each threshold, and GEEP."
)


def pack(args) -> None:
    """The run's checkpoint in bf16 and its dev/train examples tokenized, into `args.into` (small enough to carry)."""
    data = run_splits(args.run, args.max_eval_samples)
    checkpoint = data.checkpoint(args.stage)
    model = FlexBertForSequenceClassification.from_pretrained(checkpoint, dtype=torch.bfloat16)
    folder = Path(args.into)
    model.save_pretrained(folder / "model")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.save_pretrained(folder / "model")
    limits = {"dev": args.max_eval_samples, "train": args.geep_train_examples}
    for split in PACKED_SPLITS:
        examples = data.splits[split]
        if split == "train":
            examples = examples.shuffle(seed=0)  # GEEP's table from a random slice, as the CPU scripts take it
        if limits[split] is not None:
            examples = examples.select(range(min(limits[split], len(examples))))
        tokenized = data.task.tokenize(examples, tokenizer, data.max_seq_length)
        tokenized.to_parquet(str(folder / f"{split}.parquet"))
    source = {"run": str(args.run), "stage": args.stage or data.run.final_stage, "task": data.run.results["task"]}
    (folder / "pack.json").write_text(json.dumps(source, indent=2) + "\n")
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    print(f"packed {folder} ({size / 2**20:.1f} MiB; a device call carries at most 64 MiB)")


def packed_batches(path: Path, batch_size: int, max_examples: int | None, device) -> list[dict]:
    """Tokenized examples from parquet (pyarrow only), sorted by length and padded per batch (length bucketing)."""
    import pyarrow.parquet as pq

    columns = pq.read_table(path).to_pydict()
    ids = columns["input_ids"][:max_examples]
    types = columns.get("token_type_ids", [None] * len(ids))[:max_examples]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        length = max(len(ids[i]) for i in rows)
        batch = {"input_ids": torch.zeros(len(rows), length, dtype=torch.long)}
        batch["attention_mask"] = torch.zeros(len(rows), length, dtype=torch.long)
        if types[0] is not None:
            batch["token_type_ids"] = torch.zeros(len(rows), length, dtype=torch.long)
        for row, index in enumerate(rows):
            size = len(ids[index])
            batch["input_ids"][row, :size] = torch.tensor(ids[index])
            batch["attention_mask"][row, :size] = 1
            if types[0] is not None:
                batch["token_type_ids"][row, :size] = torch.tensor(types[index])
        batches.append({name: tensor.to(device) for name, tensor in batch.items()})
    return batches


def synchronised(run, device):
    """`run` followed by a wait for the GPU, so the wall clock covers the kernels it queued."""

    def timed():
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return timed


def variants(model, batches, train_batches, thresholds: list[float]) -> tuple[dict, dict]:
    """Runners of every variant, and the FLOPs-ideal speed-up of each (full-model FLOPs / FLOPs it spends)."""
    lengths = torch.cat([batch["attention_mask"].sum(dim=1) for batch in batches]).tolist()
    full_flops = sum(subnet_flops(model.config, 1.0, 1.0, length) for length in lengths)
    runners, ideal = {}, {}
    for width, depth in subnet_grid(model.config):
        runners["static", width, depth] = lambda w=width, d=depth: [
            model(**batch, width=w, depth=d, dynamic=False) for batch in batches
        ]
        spent = sum(subnet_flops(model.config, width, depth, length) for length in lengths)
        ideal["static", width, depth] = full_flops / spent
    engines = {"engine": False, "gated": True} if len(model.width_gates) else {"engine": False}
    for threshold in thresholds:
        for name, use_gates in engines.items():
            outputs = [
                model.dynamic_forward(**batch, criterion="entropy", threshold=threshold, use_gates=use_gates)
                for batch in batches
            ]
            ideal[name, threshold] = full_flops / float(sum(out.flops.sum() for out in outputs))
            runners[name, threshold] = lambda t=threshold, g=use_gates: [
                model.dynamic_forward(**batch, criterion="entropy", threshold=t, use_gates=g) for batch in batches
            ]
        predictor = fit_exit_predictor(model, train_batches, threshold=threshold)
        predicted = [predictor.predict(batch["input_ids"], batch["attention_mask"]) for batch in batches]
        outputs = geep(model, batches, predicted)
        ideal["geep", threshold] = full_flops / float(sum(out.flops.sum() for out in outputs))
        runners["geep", threshold] = lambda p=predicted: geep(model, batches, p)
    return runners, ideal


def geep(model, batches, predicted) -> list:
    """GEEP: each batch split by predicted exit layer, each part run as a full batch to exactly that layer."""
    return [
        bucketed_forward(model, batch["input_ids"], layers, batch["attention_mask"], batch.get("token_type_ids"))
        for batch, layers in zip(batches, predicted)
    ]


def measure(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = GPU_SETTINGS if device.type == "cuda" else FALLBACK_SETTINGS
    if device.type != "cuda":
        print(f"No CUDA here: a tiny CPU fallback ({settings}). {WOULD_MEASURE}")
    folder = Path(args.packed)
    dtype = getattr(torch, settings["dtype"])
    model = FlexBertForSequenceClassification.from_pretrained(folder / "model", dtype=dtype).to(device).eval()
    batch_size = args.batch_size or settings["batch_size"]
    batches = packed_batches(folder / "dev.parquet", batch_size, settings["max_examples"], device)
    train_batches = packed_batches(folder / "train.parquet", batch_size, settings["max_examples"], device)
    with torch.inference_mode():
        runners, ideal = variants(model, batches, train_batches, args.thresholds)
        timed = {key: synchronised(run, device) for key, run in runners.items()}
        seconds = interleaved_medians(timed, rounds=args.rounds or settings["rounds"], warmup=1)
    full = seconds["static", 1.0, 1.0]
    rows = []
    for key, spent in seconds.items():
        variant, *setting = key
        names = ("width", "depth") if variant == "static" else ("threshold",)
        row = {"variant": variant, **dict(zip(names, setting))}
        row |= {"flops_ideal_speedup": ideal[key], "measured_speedup": full / spent}
        row["fraction_of_ideal"] = row["measured_speedup"] / row["flops_ideal_speedup"]
        rows.append(row)
    examples = sum(len(batch["input_ids"]) for batch in batches)
    pack_record = json.loads((folder / "pack.json").read_text())
    settings = settings | {"batch_size": batch_size, "rounds": args.rounds or settings["rounds"]}
    report = run_record(**pack_record, fallback=device.type != "cuda", **settings, dev_examples=examples)
    report |= {"full_examples_per_second": examples / full, "rows": rows}
    write_report(args.output, report)
    print(table(report))


def table(report: dict) -> str:
    where = "CPU fallback (tiny; not a GPU result)" if report["fallback"] else report["machine"]["device"]
    lines = [
        f"{report['task']} dev, {report['dev_examples']} examples, batch {report['batch_size']}, {report['dtype']}, "
        f"{where}: full model {report['full_examples_per_second']:.0f} examples/s",
        "| variant | setting | FLOPs-ideal speed-up | measured speed-up | fraction of ideal |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        setting = (
            f"width {row['width']}, depth {row['depth']}" if row["variant"] == "static" else f"θ {row['threshold']}"
        )
        lines.append(
            f"| {row['variant']} | {setting} | {row['flops_ideal_speedup']:.2f} | {row['measured_speedup']:.2f} "
            f"| {row['fraction_of_ideal']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, stage_help="the run's final one; it needs off-ramps")
    parser.add_argument("--pack", action="store_true", help="Pack --run into --into (here).")
    parser.add_argument("--into", help="Folder to pack into.")
    parser.add_argument("--geep-train-examples", type=int, default=2000, help="Training examples packed for GEEP.")
    parser.add_argument("--packed", help="A packed folder to measure (there).")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.4], help="Entropy thresholds.")
    parser.add_argument("--batch-size", type=int, help="Default 256 on a GPU, 8 in the CPU fallback.")
    parser.add_argument("--rounds", type=int, help="Default 7 on a GPU, 1 in the CPU fallback.")
    parser.add_argument("--output", help="Result JSON (measuring).")
    args = parse_or_show(parser, table, required=())
    if args is None:
        return
    if args.pack:
        if not (args.run and args.into):
            parser.error("--pack needs --run and --into.")
        pack(args)
    elif args.packed and args.output:
        measure(args)
    else:
        parser.error("Either --pack --run RUN --into FOLDER, or --packed FOLDER --output JSON (or --show JSON).")


if __name__ == "__main__":
    main()
