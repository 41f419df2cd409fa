"""Budget search against the best uniform sub-network of the same budget, on dev: for each budget, the searched
operating point (per-layer widths and a depth, chosen on held-out *training* examples by `transformers-flex search`,
once per search seed: the seed draws the scoring examples from the held-out slice)
and the best uniform one under the same budget (chosen the same way) are both scored on the whole dev set.

    python benchmarks/budget_search.py --run runs/repro/sst2 --budgets 0.3 0.5 0.7 --seeds 0 1 2 \
        --output benchmarks/results/budget_search_sst2.json

Stores the operating points in the run's final checkpoint (as the command does) and writes JSON with both points'
held-out and dev scores, costs and the machine; prints a Markdown table.
"""

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import transformers  # noqa: E402
from transformers import DataCollatorWithPadding  # noqa: E402

from transformers_flex import FlexBertForSequenceClassification  # noqa: E402
from transformers_flex.budget import heldout_score, search_run  # noqa: E402
from transformers_flex.evaluation import machine_description  # noqa: E402
from transformers_flex.hub import read_run  # noqa: E402
from transformers_flex.training_pipeline import load_task, recorded_data_arguments, select_splits  # noqa: E402
from transformers_flex.utils import load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="A finished classification run directory.")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="Search seeds (scoring examples).")
    parser.add_argument("--objective", choices=("flops", "latency"), default="flops")
    parser.add_argument("--heldout-samples", type=int, default=256)
    parser.add_argument("--output", help="Where to write the JSON.")
    parser.add_argument("--show", help="Print the table of an existing result JSON and exit.")
    args = parser.parse_args()
    if args.show:
        print(table(json.loads(Path(args.show).read_text())))
        return
    if not all((args.run, args.output)):
        parser.error("--run and --output are required (or --show RESULT.json).")

    run = read_run(args.run)
    data_args = recorded_data_arguments(run.record)
    task, raw = load_task(data_args)
    dev = select_splits(task, raw, data_args, run.record["training"]["seed"])["dev"]
    model = FlexBertForSequenceClassification.from_pretrained(run.checkpoint).eval()
    tokenizer = load_tokenizer(run.checkpoint)
    features = task.tokenize(dev, tokenizer, data_args.max_seq_length)
    dev_score = heldout_score(model, task, features, DataCollatorWithPadding(tokenizer))
    report = {
        "command": f"python benchmarks/budget_search.py --run {args.run} --budgets "
        + " ".join(map(str, args.budgets))
        + " --seeds "
        + " ".join(map(str, args.seeds))
        + f" --objective {args.objective} --heldout-samples {args.heldout_samples}",
        "machine": machine_description(),
        "versions": {"transformers": transformers.__version__},
        "task": run.record["task"]["name"],
        "score": "mean of the task's dev metrics",
        "dev_examples": len(dev),
        "rows": [],
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    caches = {seed: {} for seed in args.seeds}  # held-out scores per seed, shared by its budgets
    for seed, budget in [(seed, budget) for seed in args.seeds for budget in sorted(args.budgets, reverse=True)]:
        name = f"{args.objective}{budget}_seed{seed}"
        found = search_run(args.run, budget, args.objective, name, args.heldout_samples, seed=seed, cache=caches[seed])
        row = {"budget": budget, "seed": seed, "name": found["name"]}
        for label in ("searched", "uniform"):
            point = found[label]
            row[label] = None if point is None else asdict(point) | {"dev_score": dev_score(point.width, point.depth)}
        report["rows"].append(row)
        output.write_text(json.dumps(report, indent=2))  # after every search: an interrupted run keeps its rows
    print(table(report))


def table(report: dict) -> str:
    lines = [
        "| budget | seed | point | widths | depth | cost | held-out score | dev score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        for label in ("searched", "uniform"):
            point = row[label]
            if point is not None:
                lines.append(
                    f"| {row['budget']} | {row['seed']} | {label} | {point['width']} | {point['depth']} | "
                    f"{point['cost']:.3f} | "
                    f"{100 * point['score']:.2f} | {100 * point['dev_score']:.2f} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
