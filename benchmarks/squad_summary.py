"""Markdown tables of docs/RESULTS.md §7 from the SQuAD result files: every sub-network on the whole dev set
(benchmarks/results/squad/subnets.json, and the width stage's width_subnets.json), the dynamic trade-off points
(dynamic.json), the batched engine's measured throughput (throughput_*.json), and the plain-Trainer baseline
(plain_trainer_seed*.json), each where it exists.

    python benchmarks/squad_summary.py
    python benchmarks/squad_summary.py --show benchmarks/results/squad/dynamic.json   # one file, any of them

The tables are the ones the scripts that wrote the files print (their `table` functions).
"""

import argparse
import json
from pathlib import Path

from common import parse_or_show
from plain_trainer_squad_baseline import table as baseline_table
from squad_dynamic import table as dynamic_table
from squad_subnets import table as subnet_table
from squad_throughput import table as throughput_table

RESULTS = Path(__file__).parent / "results" / "squad"
# The result files in the order RESULTS.md shows them, and the table of each: the key only that kind of file has.
FILES = ("*subnets.json", "dynamic.json", "throughput_*.json", "plain_trainer_seed*.json")
TABLES = {
    "subnets": subnet_table,
    "points": dynamic_table,
    "median_seconds": throughput_table,
    "plain_trainer": baseline_table,
}


def table(report: dict) -> str:
    """The table of any SQuAD result file, chosen by what it holds."""
    kind = next((key for key in TABLES if key in report), None)
    if kind is None:
        raise SystemExit(f"Not a SQuAD result file (none of the keys {list(TABLES)}).")
    return TABLES[kind](report)


def heading(name: str, report: dict) -> str:
    """The file's name and what its numbers cover: the machine (timings), dev questions, windows, rounds."""
    parts = []
    if "median_seconds" in report:
        parts.append(f"{report['machine']['device']} ({report['machine']['threads']} threads)")
    parts.append(f"{report['dev_questions']} dev questions")
    counted = {"dev_windows": "windows", "rounds": "rounds"}
    parts += [f"{report[key]} {label}" for key, label in counted.items() if key in report]
    return f"{name}: {', '.join(parts)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="Where the SQuAD result files are.")
    args = parse_or_show(parser, table, required=())
    if args is None:
        return
    paths = [path for pattern in FILES for path in sorted(args.results_dir.glob(pattern))]
    for path in paths:
        report = json.loads(path.read_text())
        print(f"{heading(path.name, report)}\n\n{table(report)}\n")


if __name__ == "__main__":
    main()
