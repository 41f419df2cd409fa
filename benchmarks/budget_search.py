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
from dataclasses import asdict

from common import parse_or_show, run_record, run_splits, write_report
from transformers import DataCollatorWithPadding

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.budget import heldout_score, search_run
from transformers_flex.utils import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="A finished classification run directory.")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="Search seeds (scoring examples).")
    parser.add_argument("--objective", choices=("flops", "latency"), default="flops")
    parser.add_argument("--heldout-samples", type=int, default=256)
    parser.add_argument("--max-eval-samples", type=int, help="Score only the dev set's first examples (smoke runs).")
    parser.add_argument("--output", help="Where to write the JSON.")
    args = parse_or_show(parser, table, required=("run", "output"))
    if args is None:
        return

    data = run_splits(args.run, args.max_eval_samples)
    model = FlexBertForSequenceClassification.from_pretrained(data.run.checkpoint).eval()
    tokenizer = load_tokenizer(data.run.checkpoint)
    features = data.task.tokenize(data.splits["dev"], tokenizer, data.max_seq_length)
    dev_score = heldout_score(model, data.task, features, DataCollatorWithPadding(tokenizer))
    report = run_record(
        task=data.task.name,
        score="mean of the task's dev metrics",
        dev_examples=len(data.splits["dev"]),
        seeds=args.seeds,
        rows=[],
    )
    caches = {seed: {} for seed in args.seeds}  # held-out scores per seed, shared by its budgets
    for seed, budget in [(seed, budget) for seed in args.seeds for budget in sorted(args.budgets, reverse=True)]:
        name = f"{args.objective}{budget}_seed{seed}"
        found = search_run(args.run, budget, args.objective, name, args.heldout_samples, seed=seed, cache=caches[seed])
        row = {"budget": budget, "seed": seed, "name": found["name"]}
        for label in ("searched", "uniform"):
            point = found[label]
            row[label] = None if point is None else asdict(point) | {"dev_score": dev_score(point.width, point.depth)}
        report["rows"].append(row)
        write_report(args.output, report)  # after every search: an interrupted run keeps its rows
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
