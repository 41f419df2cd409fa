"""Markdown tables of docs/RESULTS.md §7 from the SQuAD result files: every sub-network on the whole dev set
(benchmarks/results/squad/subnets.json), the dynamic trade-off points (dynamic.json), the batched engine's measured
throughput (throughput_*.json), and the plain-Trainer baseline, each where it exists.

    python benchmarks/squad_summary.py
"""

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "squad"


def subnet_table(summary: dict) -> str:
    teacher = summary["teacher"]
    rows = [
        "| model | width | depth | EM | F1 | GFLOPs / question | vs teacher FLOPs | papers' GFLOPs / window |",
        "|---|---|---|---|---|---|---|---|",
        f"| teacher | 1.0 | 1.0 | {teacher['exact_match']:.2f} | {teacher['f1']:.2f} | "
        f"{teacher['mean_flops'] / 1e9:.2f} | 1.00 | {teacher['paper_flops'] / 1e9:.2f} |",
    ]
    for row in summary["subnets"]:
        rows.append(
            f"| flexible | {row['width']} | {row['depth']} | {row['exact_match']:.2f} | {row['f1']:.2f} | "
            f"{row['mean_flops'] / 1e9:.2f} | {row['mean_flops'] / teacher['mean_flops']:.2f} | "
            f"{row['paper_flops'] / 1e9:.2f} |"
        )
    return "\n".join(rows)


def dynamic_table(summary: dict) -> str:
    teacher = summary["teacher"]
    rows = [
        "| curve | setting | EM | F1 | GFLOPs / question | vs teacher FLOPs | mean exit layer |",
        "|---|---|---|---|---|---|---|",
        f"| teacher | | {teacher['exact_match']:.2f} | {teacher['f1']:.2f} | "
        f"{teacher['mean_flops'] / 1e9:.2f} | 1.00 | |",
    ]
    for point in summary["points"]:
        setting = ", ".join(
            f"{key} {point[key]}" for key in ("gate_map", "threshold") if key in point and key != "criterion"
        )
        rows.append(
            f"| {point['curve']} | {setting} | {point['exact_match']:.2f} | {point['f1']:.2f} | "
            f"{point['mean_flops'] / 1e9:.2f} | {point['mean_flops'] / teacher['mean_flops']:.2f} | "
            f"{point['mean_exit_layer']:.2f} |"
        )
    return "\n".join(rows)


def throughput_table(report: dict) -> str:
    rows = [
        "| variant | setting | mean exit layer | FLOPs-ideal speed-up | measured speed-up | fraction of ideal |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        setting = f"width {row['width']}" if "width" in row else f"threshold {row['threshold']}"
        exit_layer = f"{row['mean_exit_layer']:.2f}" if "mean_exit_layer" in row else ""
        rows.append(
            f"| {row['variant']} | {setting} | {exit_layer} | {row['flops_ideal_speedup']:.2f} | "
            f"{row['measured_speedup']:.2f} | {row['fraction_of_ideal']:.2f} |"
        )
    return "\n".join(rows)


def baseline_table(report: dict) -> str:
    rows = ["| | eval_loss | EM | F1 |", "|---|---|---|---|"]
    for name in ("flexbert_teacher", "plain_trainer", "difference"):
        values = report[name]
        rows.append(
            f"| {name} | {values['eval_loss']:.6f} | {values['eval_exact_match']:.4f} | {values['eval_f1']:.4f} |"
        )
    return "\n".join(rows)


def main() -> None:
    subnets = RESULTS / "subnets.json"
    if subnets.exists():
        summary = json.loads(subnets.read_text())
        print(f"{summary['dev_questions']} dev questions, {summary['dev_windows']} windows\n")
        print(subnet_table(summary))
    dynamic = RESULTS / "dynamic.json"
    if dynamic.exists():
        print(f"\n{dynamic.name}\n")
        print(dynamic_table(json.loads(dynamic.read_text())))
    for path in sorted(RESULTS.glob("throughput_*.json")):
        report = json.loads(path.read_text())
        print(f"\n{path.name}: {report['machine']}, {report['dev_questions']} questions, {report['rounds']} rounds\n")
        print(throughput_table(report))
    for path in sorted(RESULTS.glob("plain_trainer_seed*.json")):
        print(f"\n{path.name}\n")
        print(baseline_table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
