"""Dev metrics of every off-ramp and of the final head of a finished run's model, and how much their outputs vary
across the dev set (a ramp whose output barely varies answers every input alike — and agrees with itself, which
fools patience).

    python benchmarks/ramp_report.py --run runs/dynamic/stsb --stage gates \
        --output benchmarks/results/ramp_report_stsb.json

The run's own data (any `transformers-flex train` classification or regression run: GLUE, a Hub dataset or files),
its dev set as it split it, at its sequence length; metrics are the task's (GLUE's official ones for GLUE tasks).
`--stage` picks the checkpoint (default: the run's final one; the committed file is that of the gates stage, made
before this script took runs, as `--task stsb --model runs/dynamic/stsb/gates`). Writes JSON (with the command,
machine and versions) and prints a Markdown table.
"""

import argparse

import torch
from common import add_run_arguments, parse_or_show, run_record, run_splits, write_report

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.utils import load_tokenizer

BATCH_SIZE = 64
NOT_METRICS = ("classifier", "layer", "output_std")  # the row keys that are not dev metrics


@torch.no_grad()
def ramp_outputs(model, batches: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`{name: logits}` of every ramp ("ramp after layer k") and of the final head, at the active sub-network."""
    outputs: dict[str, list[torch.Tensor]] = {}
    labels = []
    for batch in batches:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        forward = model(**inputs, output_hidden_states=True)
        ramps = model.ramp_logits(forward.hidden_states, inputs["attention_mask"])
        answers = {f"ramp after layer {layer}": logits for layer, logits in sorted(ramps.items())}
        answers["final head"] = forward.logits
        for name, logits in answers.items():
            outputs.setdefault(name, []).append(logits)
        labels.append(batch["labels"])
    return {name: torch.cat(parts) for name, parts in outputs.items()}, torch.cat(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, stage_help="the run's final one, which has the ramps")
    parser.add_argument("--output", help="Where to write the JSON.")
    args = parse_or_show(parser, table, required=("run", "output"))
    if args is None:
        return

    data = run_splits(args.run, args.max_eval_samples)
    checkpoint = data.checkpoint(args.stage)
    tokenizer = load_tokenizer(checkpoint)
    model = FlexBertForSequenceClassification.from_pretrained(checkpoint, dynamic_inference=False).eval()
    outputs, labels = ramp_outputs(model, data.batches("dev", tokenizer, BATCH_SIZE))
    rows = [
        # Spread of the answer across dev inputs: std of each output unit, averaged over units.
        {"classifier": name, **data.scores(logits, labels), "output_std": float(logits.std(dim=0).mean())}
        for name, logits in outputs.items()
    ]
    report = run_record(
        task=data.task.name,
        checkpoint=str(checkpoint),
        dev_examples=len(labels),
        label_std=float(labels.float().std()),
        rows=rows,
    )
    write_report(args.output, report)
    print(table(report))


def classifier_name(row: dict) -> str:
    """The row's classifier; files written before rows were named give the ramp's layer (the last: the head)."""
    return row.get("classifier") or f"layer {row['layer']}"


def table(report: dict) -> str:
    """One row per classifier: its dev metrics (in points) and output spread; last, the spread of the dev labels."""
    names = [name for name in report["rows"][0] if name not in NOT_METRICS]
    lines = [
        "| classifier | " + " | ".join(names) + " | output spread |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for row in report["rows"]:
        metrics = " | ".join(f"{100 * row[name]:.1f}" for name in names)
        lines.append(f"| {classifier_name(row)} | {metrics} | {row['output_std']:.2g} |")
    lines.append("| dev labels |" + " |" * len(names) + f" {report['label_std']:.2g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
