"""Measured throughput of the batched QA engine on SQuAD v1.1 dev windows, against the full static model, the
FLOPs-ideal speed-up and batch size 1, in one run.

The dev questions' windows are cut into batches of about `--batch_size` windows that keep each question's windows
together (`evaluation.question_batches`); every variant runs all of them once per round, rounds interleave the
variants so machine noise hits them alike, and the report gives medians:
  static       the full model, plain forward (the baseline)
  engine       `dynamic_forward` with off-ramps, the windows of a question exiting together (`exit_groups`); rows
               that exit leave the batch, padding trimmed after each layer
  gated        the engine with the width gates too (rows grouped by width), when the model has gates
  batch1       the engine one question at a time (its windows as one batch), at the first threshold
  static_w     the static model at each narrower width (how efficiently narrow layers run on these batches)
Each variant's FLOPs-ideal speed-up (full-model FLOPs / FLOPs it spent) stands next to the measured one.

    python benchmarks/squad_throughput.py --model runs/squad/dynamic/gates --max_eval_samples 500 \
        --output benchmarks/results/squad/throughput_cpu.json
"""

import argparse
import json
from pathlib import Path

import torch
from squad_setup import add_dev_arguments, command_line, load_dev

from transformers_flex import FlexBertForQuestionAnswering, subnet_flops
from transformers_flex.evaluation import MODEL_INPUTS, interleaved_medians, machine_description, question_batches


def collated_batches(dev, batch_size: int) -> tuple[list[dict], list[dict]]:
    """Question-preserving batches of windows, and the same windows one question per batch; each batch carries its
    rows' question index as `exit_groups`."""
    columns = {key: dev.features[key] for key in MODEL_INPUTS if key in dev.features.column_names}
    question_of = {example_id: index for index, example_id in enumerate(dict.fromkeys(dev.features["example_id"]))}
    groups = [question_of[example_id] for example_id in dev.features["example_id"]]

    def collate(rows: list[int]) -> dict:
        batch = dict(dev.collate([{key: values[i] for key, values in columns.items()} for i in rows]))
        return {**batch, "exit_groups": torch.tensor([groups[i] for i in rows])}

    batches = [collate(rows) for rows in question_batches(dev.features, batch_size)]
    questions: dict[int, list[int]] = {}
    for row, group in enumerate(groups):
        questions.setdefault(group, []).append(row)
    return batches, [collate(rows) for rows in questions.values()]


@torch.inference_mode()
def run_static(model, batches: list[dict], width: float = 1.0) -> list:
    inputs = [{key: value for key, value in batch.items() if key != "exit_groups"} for batch in batches]
    return [model(**batch_inputs, width=width, dynamic=False) for batch_inputs in inputs]


@torch.inference_mode()
def run_engine(model, batches: list[dict], threshold: float, use_gates: bool) -> list:
    return [
        model.dynamic_forward(**batch, criterion="entropy", threshold=threshold, use_gates=use_gates)
        for batch in batches
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A QA model with off-ramps (and gates: the gates stage).")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[1.0, 2.0], help="Entropy exit thresholds.")
    parser.add_argument("--rounds", type=int, default=5)
    add_dev_arguments(parser, max_eval_samples=500)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    dev = load_dev(args, args.model)
    batches, singles = collated_batches(dev, args.batch_size)
    model = FlexBertForQuestionAnswering.from_pretrained(args.model).eval()
    lengths = torch.cat([batch["attention_mask"].sum(dim=1) for batch in batches]).tolist()

    def flops_at(width: float) -> float:
        return sum(subnet_flops(model.config, width, 1.0, n, "question_answering") for n in lengths)

    full_flops = flops_at(1.0)
    runners = {"static": lambda: run_static(model, batches)}
    ideal, exits = {}, {}
    variants = ["engine", "gated"] if len(model.width_gates) else ["engine"]
    for threshold in args.thresholds:
        for variant in variants:
            runners[variant, threshold] = lambda t=threshold, g=variant == "gated": run_engine(model, batches, t, g)
            outputs = runners[variant, threshold]()  # one untimed run for the FLOPs and exit layers
            ideal[variant, threshold] = full_flops / float(sum(out.flops.sum() for out in outputs))
            exits[variant, threshold] = torch.cat([out.exit_layers for out in outputs]).float().mean().item()
    narrow = [width for width in model.config.width_mults if width < 1.0]
    for width in narrow:
        runners["static_w", width] = lambda w=width: run_static(model, batches, w)
        ideal["static_w", width] = full_flops / flops_at(width)
    batch1_threshold = args.thresholds[0]
    runners["batch1", batch1_threshold] = lambda: run_engine(model, singles, batch1_threshold, False)
    ideal["batch1", batch1_threshold] = ideal["engine", batch1_threshold]  # the same exits, one question at a time
    seconds = interleaved_medians(runners, rounds=args.rounds, show_progress=True)

    static = seconds["static"]
    rows = []
    for key, ideal_speedup in ideal.items():
        variant, setting = key
        measured = static / seconds[key]
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
    report = {
        "command": command_line("squad_throughput.py", args),
        "machine": machine_description(),
        "dev_questions": len(dev.examples),
        "dev_windows": len(dev.features),
        "rounds": args.rounds,
        "static_questions_per_second": len(dev.examples) / static,
        "median_seconds": {str(key): value for key, value in seconds.items()},
        "rows": rows,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
