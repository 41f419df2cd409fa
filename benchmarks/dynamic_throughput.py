"""Measured throughput of batched dynamic inference vs the full static model (issue #4, docs/algorithms.md §9).

On a run's dev set cut into length-bucketed batches (sorted by length, `--batch-size` rows), every variant below runs
the whole dev set once per round; rounds interleave the variants so machine noise hits them alike, and the report
gives medians:
  static     the full model, plain forward (the baseline)
  engine     `dynamic_forward`: rows that exit leave the batch, padding trimmed after each layer
  all_exit   the batch stops at the first ramp where *every* row may exit (DeeBERT/PABEE batched behaviour); rows
             answer from their own first confident ramp, so predictions equal the engine's and only speed differs
  batch1     the engine, one example at a time (how the papers evaluate)
  gated      the engine with the model's width gates too (rows grouped by width), when it has gates
  static_w   the static model at each narrower training width (how efficiently narrow layers run on these batches)
  geep       GEEP: exit layers predicted from tokens (table fit on training examples' engine exits at the same
             threshold), one full batch per predicted layer (FLOPs-ideal speed-up from its own FLOPs)
For each exit threshold the FLOPs-ideal speed-up (full-model FLOPs / FLOPs spent) is reported next to the measured
one. Writes JSON (with versions and machine) and prints a Markdown table.

    python benchmarks/dynamic_throughput.py --run runs/dynamic/sst2 --thresholds 0.208 0.347 0.485 \
        --batch1-threshold-index 1 --rounds 7 --output benchmarks/results/dynamic_throughput_sst2_cpu.json

The run's own data (any `transformers-flex train` run of a classification task), dev set as the run split it; the
model is the run's final stage (`--stage` picks another: it needs off-ramps). GEEP's table is fit on the first
`--geep-train-examples` of the run's training split, shuffled with seed 0.
"""

import argparse

import torch
from common import add_run_arguments, parse_or_show, run_record, run_splits, write_report
from dynamic_tradeoffs import geep_train_batches

from transformers_flex import FlexBertForSequenceClassification, subnet_flops
from transformers_flex.evaluation import interleaved_medians
from transformers_flex.inference import bucketed_forward, fit_exit_predictor
from transformers_flex.utils import load_tokenizer


@torch.no_grad()
def exit_when_all_rows_may(model, batch: dict, threshold: float) -> torch.Tensor:
    """The naive batched early exit, on the engine without compaction: the whole batch runs until a ramp where every
    row's entropy is below the threshold (or the last layer); each row answers from its own first confident ramp."""
    return model.dynamic_forward(
        **batch, criterion="entropy", threshold=threshold, use_gates=False, exit_together=True
    ).logits


@torch.no_grad()
def run_static(model, batches, width: float = 1.0):
    with model.subnet(width=width):
        return [model(**batch).logits for batch in batches]


@torch.no_grad()
def run_engine(model, batches, threshold, use_gates=False):
    return [
        model.dynamic_forward(**batch, criterion="entropy", threshold=threshold, use_gates=use_gates)
        for batch in batches
    ]


@torch.no_grad()
def run_batch1(model, singles, threshold):
    return [
        model.dynamic_forward(**single, criterion="entropy", threshold=threshold, use_gates=False)
        for single in singles
    ]


@torch.no_grad()
def run_geep(model, batches, predictor):
    outputs = []
    for batch in batches:
        predicted = predictor.predict(batch["input_ids"], batch["attention_mask"])
        types = batch.get("token_type_ids")
        outputs.append(bucketed_forward(model, batch["input_ids"], predicted, batch["attention_mask"], types))
    return outputs


def without_labels(batches: list[dict]) -> list[dict]:
    """The batches without their labels (the engine would compute a loss: not part of serving)."""
    return [{key: value for key, value in batch.items() if key != "labels"} for batch in batches]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, stage_help="the run's final one; it needs off-ramps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch1-threshold-index", type=int, default=0, help="Which threshold batch size 1 runs.")
    parser.add_argument("--geep-train-examples", type=int, default=2000, help="Training examples for GEEP's table.")
    parser.add_argument("--output", help="Where to write the JSON.")
    args = parse_or_show(parser, table, required=("run", "output"))
    if args is None:
        return

    data = run_splits(args.run, args.max_eval_samples)
    checkpoint = data.checkpoint(args.stage)
    tokenizer = load_tokenizer(checkpoint)
    batches = without_labels(data.batches("dev", tokenizer, args.batch_size))
    train_batches = geep_train_batches(data, tokenizer, args.batch_size, args.geep_train_examples)
    singles = without_labels(data.batches("dev", tokenizer, 1))
    model = FlexBertForSequenceClassification.from_pretrained(checkpoint).eval()
    lengths = torch.cat([batch["attention_mask"].sum(dim=1) for batch in batches]).tolist()
    full_flops = sum(subnet_flops(model.config, 1.0, 1.0, length) for length in lengths)

    runners = {"static": lambda: run_static(model, batches)}
    flops_ratio, exits = {}, {}
    variants = ["engine", "geep", "gated"] if len(model.width_gates) else ["engine", "geep"]
    for threshold in args.thresholds:
        predictor = fit_exit_predictor(model, train_batches, threshold=threshold)
        for variant in variants:
            if variant == "geep":
                runners[variant, threshold] = lambda p=predictor: run_geep(model, batches, p)
            else:
                runners[variant, threshold] = lambda t=threshold, g=variant == "gated": run_engine(
                    model, batches, t, g
                )
            outputs = runners[variant, threshold]()
            flops_ratio[variant, threshold] = full_flops / float(sum(out.flops.sum() for out in outputs))
            exits[variant, threshold] = torch.cat([out.exit_layers for out in outputs]).float().mean().item()
        runners[("all_exit", threshold)] = lambda t=threshold: [exit_when_all_rows_may(model, b, t) for b in batches]
    narrow = [width for width in model.config.width_mults if width < 1.0]
    for width in narrow:
        runners["static_w", width] = lambda w=width: run_static(model, batches, w)
        flops_ratio["static_w", width] = full_flops / sum(subnet_flops(model.config, width, 1.0, n) for n in lengths)
    batch1_threshold = args.thresholds[args.batch1_threshold_index]
    runners[("batch1", batch1_threshold)] = lambda: run_batch1(model, singles, batch1_threshold)
    seconds = interleaved_medians(runners, rounds=args.rounds, show_progress=True)

    static = seconds["static"]
    rows = []
    for threshold in args.thresholds:
        for variant in variants:
            row = {
                "variant": variant,
                "threshold": threshold,
                "mean_exit_layer": exits[variant, threshold],
                "flops_ideal_speedup": flops_ratio[variant, threshold],
                "measured_speedup": static / seconds[variant, threshold],
            }
            row["fraction_of_ideal"] = row["measured_speedup"] / row["flops_ideal_speedup"]
            if variant == "engine":
                row["all_exit_speedup"] = static / seconds[("all_exit", threshold)]
                if threshold == batch1_threshold:
                    row["batch1_speedup"] = static / seconds[("batch1", threshold)]
            rows.append(row)
    for width in narrow:
        speedup = static / seconds["static_w", width]
        ideal = flops_ratio["static_w", width]
        rows.append(
            {
                "variant": f"static width {width}",
                "flops_ideal_speedup": ideal,
                "measured_speedup": speedup,
                "fraction_of_ideal": speedup / ideal,
            }
        )
    report = run_record(
        task=data.task.name,
        checkpoint=str(checkpoint),
        dev_examples=len(singles),
        batch_size=args.batch_size,
        rounds=args.rounds,
        static_examples_per_second=len(singles) / static,
        median_seconds={str(key): value for key, value in seconds.items()},
        rows=rows,
    )
    write_report(args.output, report)
    print(table(report))


def table(report: dict) -> str:
    """Measured against FLOPs-ideal speed-up per variant and threshold (the engine's rows are followed by the batch
    that exits only when all its rows may and, at one threshold, batch size 1: measured only), and the baseline."""
    lines = [
        "| entropy threshold | variant | mean exit layer | FLOPs-ideal | measured | measured / ideal |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        threshold = row.get("threshold", "–")  # static widths run no ramps
        exit_layer = f"{row['mean_exit_layer']:.2f}" if "mean_exit_layer" in row else ""
        lines.append(
            f"| {threshold} | {row['variant']} | {exit_layer} | {row['flops_ideal_speedup']:.2f}× | "
            f"{row['measured_speedup']:.2f}× | {row['fraction_of_ideal']:.2f} |"
        )
        for key, variant in (("all_exit_speedup", "exit when all rows may"), ("batch1_speedup", "batch size 1")):
            if key in row:
                lines.append(f"| {threshold} | {variant} | | | {row[key]:.2f}× | |")
    lines.append(
        f"\nThe full static model: {report['static_examples_per_second']:.0f} examples/s ({report['dev_examples']} "
        f"dev examples, batches of {report['batch_size']}, medians of {report['rounds']} rounds)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
