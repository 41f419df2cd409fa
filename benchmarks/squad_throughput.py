"""Measured throughput of the batched QA engine on a QA run's dev windows (SQuAD v1.1 in docs/RESULTS.md §7), against
the full static model, the FLOPs-ideal speed-up and batch size 1, in one run.

The dev questions' windows are cut into batches of about `--batch-size` windows that keep each question's windows
together (`evaluation.question_batches`); every variant runs all of them once per round, rounds interleave the
variants so machine noise hits them alike, and the report gives medians:
  static       the full model, plain forward (the baseline)
  engine       `dynamic_forward` with off-ramps, the windows of a question exiting together (`exit_groups`); rows
               that exit leave the batch, padding trimmed after each layer
  gated        the engine with the width gates too (rows grouped by width), when the model has gates
  batch1       the engine one question at a time (its windows as one batch), at the first threshold
  static_w     the static model at each narrower width (how efficiently narrow layers run on these batches)
Each variant's FLOPs-ideal speed-up (full-model FLOPs / FLOPs it spent) stands next to the measured one.

    python benchmarks/squad_throughput.py --run runs/squad --stage dynamic/gates --max-eval-samples 500 --rounds 5 \
        --output benchmarks/results/squad/throughput_cpu.json

`--stage` is the model with off-ramps (and gates) of a finished QA run: a stage, or a checkpoint folder in the run
(train_squad.sh trains ramps and gates into dynamic/); the dev questions (the task's first 500 by default) are cut
into windows as the run cut them. Writes JSON (with the command, machine and versions) and prints a Markdown table.
"""

import argparse

import torch
from common import parse_or_show, run_record, run_splits, write_report
from squad_setup import add_qa_run_arguments, load_dev

from transformers_flex import FlexBertForQuestionAnswering, subnet_flops
from transformers_flex.evaluation import MODEL_INPUTS, interleaved_medians, question_batches

DEV_QUESTIONS = 500  # the default: the first 500 dev questions
THRESHOLDS = [1.0, 2.0]  # the default entropy exit thresholds (also gpu_throughput.py's for QA)


def question_groups(example_ids: list[str]) -> list[int]:
    """The question index of each window, in order of first appearance: the engine's `exit_groups`."""
    question_of = {example_id: index for index, example_id in enumerate(dict.fromkeys(example_ids))}
    return [question_of[example_id] for example_id in example_ids]


def collated_batches(dev, batch_size: int) -> tuple[list[dict], list[dict]]:
    """Question-preserving batches of windows, and the same windows one question per batch; each batch carries its
    rows' question index as `exit_groups`."""
    columns = {key: dev.features[key] for key in MODEL_INPUTS if key in dev.features.column_names}
    groups = question_groups(dev.features["example_id"])

    def collate(rows: list[int]) -> dict:
        batch = dict(dev.collate([{key: values[i] for key, values in columns.items()} for i in rows]))
        return {**batch, "exit_groups": torch.tensor([groups[i] for i in rows])}

    batches = [collate(rows) for rows in question_batches(dev.features, batch_size)]
    questions: dict[int, list[int]] = {}
    for row, group in enumerate(groups):
        questions.setdefault(group, []).append(row)
    return batches, [collate(rows) for rows in questions.values()]


@torch.inference_mode()
def run_static(model, batches: list[dict], width: float = 1.0, depth: float = 1.0) -> list:
    """The static sub-network (width, depth) on every batch (any `exit_groups` left out)."""
    inputs = [{key: value for key, value in batch.items() if key != "exit_groups"} for batch in batches]
    return [model(**batch_inputs, width=width, depth=depth, dynamic=False) for batch_inputs in inputs]


@torch.inference_mode()
def run_engine(model, batches: list[dict], threshold: float, use_gates: bool) -> list:
    return [
        model.dynamic_forward(**batch, criterion="entropy", threshold=threshold, use_gates=use_gates)
        for batch in batches
    ]


def variants(model, batches: list[dict], singles: list[dict], thresholds: list[float]) -> tuple[dict, dict, dict]:
    """The runner of every variant, its FLOPs-ideal speed-up, and the engine variants' mean exit layers."""
    lengths = torch.cat([batch["attention_mask"].sum(dim=1) for batch in batches]).tolist()

    def flops_at(width: float) -> float:
        return sum(subnet_flops(model.config, width, 1.0, n, "question_answering") for n in lengths)

    full_flops = flops_at(1.0)
    runners = {"static": lambda: run_static(model, batches)}
    ideal, exits = {}, {}
    engines = ["engine", "gated"] if len(model.width_gates) else ["engine"]
    for threshold in thresholds:
        for variant in engines:
            runners[variant, threshold] = lambda t=threshold, g=variant == "gated": run_engine(model, batches, t, g)
            outputs = runners[variant, threshold]()  # one untimed run for the FLOPs and exit layers
            ideal[variant, threshold] = full_flops / float(sum(out.flops.sum() for out in outputs))
            exits[variant, threshold] = torch.cat([out.exit_layers for out in outputs]).float().mean().item()
    for width in [width for width in model.config.width_mults if width < 1.0]:
        runners["static_w", width] = lambda w=width: run_static(model, batches, w)
        ideal["static_w", width] = full_flops / flops_at(width)
    batch1_threshold = thresholds[0]
    runners["batch1", batch1_threshold] = lambda: run_engine(model, singles, batch1_threshold, False)
    ideal["batch1", batch1_threshold] = ideal["engine", batch1_threshold]  # the same exits, one question at a time
    return runners, ideal, exits


def speedup_rows(seconds: dict, ideal: dict, exits: dict) -> list[dict]:
    """One row per variant: its setting, mean exit layer (engine variants), FLOPs-ideal and measured speed-ups."""
    rows = []
    for key, ideal_speedup in ideal.items():
        variant, setting = key
        measured = seconds["static"] / seconds[key]
        row = {"variant": variant, "width" if variant == "static_w" else "threshold": setting}
        if key in exits:
            row["mean_exit_layer"] = exits[key]
        rows.append(
            {
                **row,
                "flops_ideal_speedup": ideal_speedup,
                "measured_speedup": measured,
                "fraction_of_ideal": measured / ideal_speedup,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_qa_run_arguments(parser, max_eval_samples=DEV_QUESTIONS)
    parser.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS, help="Entropy exit thresholds.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", help="Where to write the JSON.")
    args = parse_or_show(parser, table, required=("run", "output"))
    if args is None:
        return

    data = run_splits(args.run, args.max_eval_samples, whole_dev=True)
    checkpoint = data.checkpoint(args.stage)
    dev = load_dev(data, checkpoint)
    batches, singles = collated_batches(dev, args.batch_size)
    model = FlexBertForQuestionAnswering.from_pretrained(checkpoint).eval()
    runners, ideal, exits = variants(model, batches, singles, args.thresholds)
    seconds = interleaved_medians(runners, rounds=args.rounds, show_progress=True)
    report = run_record(
        task=data.task.name,
        checkpoint=str(checkpoint),
        dev_questions=len(dev.examples),
        dev_windows=len(dev.features),
        rounds=args.rounds,
        static_questions_per_second=len(dev.examples) / seconds["static"],
        median_seconds={str(key): value for key, value in seconds.items()},
        rows=speedup_rows(seconds, ideal, exits),
    )
    write_report(args.output, report)
    print(table(report))


def table(report: dict) -> str:
    """The Markdown table of docs/RESULTS.md §7: each variant's FLOPs-ideal and measured speed-up."""
    lines = [
        "| variant | setting | mean exit layer | FLOPs-ideal speed-up | measured speed-up | fraction of ideal |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        setting = f"width {row['width']}" if "width" in row else f"threshold {row['threshold']}"
        exit_layer = f"{row['mean_exit_layer']:.2f}" if "mean_exit_layer" in row else ""
        lines.append(
            f"| {row['variant']} | {setting} | {exit_layer} | {row['flops_ideal_speedup']:.2f} | "
            f"{row['measured_speedup']:.2f} | {row['fraction_of_ideal']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
