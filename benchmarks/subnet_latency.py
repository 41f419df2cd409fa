"""CPU latency of every (width, depth) sub-network, as a ratio to the full model measured in the same run.

Each sub-network runs two ways: sliced from the supernet (`set_subnet`, weight views) and as a compact export
(`export_subnet`, physically smaller tensors). Rounds interleave all variants, so machine noise hits them alike;
the medians over rounds are compared. The batch is random token ids (latency does not depend on them). Writes JSON
(with the command, machine and versions) + a plot beside it (same name, .png) and prints a Markdown table.

    python benchmarks/subnet_latency.py --rounds 15 --batch-size 32 --seq-length 128

`--model` times another BERT/FlexBert checkpoint (a run's stage folder, e.g. runs/mrpc/width_depth) instead of
the packaged all-MiniLM-L6-v2; its dynamic engine, if any, is off (static sub-networks). `--threads` sets torch's
intra-op threads. `--compile` adds a third variant, each export through `torch.compile` (fixed shapes), timed against
the compiled full model, with the largest logit difference from the eager export (what compiling changes).
`--calls-per-round K` times K calls of a variant back to back (the medians are per call): a server calls one model
over and over, so at batch size 1, where a call is memory-bound, its weights are in cache; one call per round
would time every variant with the other variants' weights in cache instead:

    python benchmarks/subnet_latency.py --rounds 60 --calls-per-round 10 --batch-size 1 --seq-length 32 --compile \
        --output benchmarks/results/subnet_latency_b1.json
"""

import argparse
import functools
from collections.abc import Callable
from pathlib import Path

import torch
from common import parse_or_show, run_record, write_report
from tqdm.auto import tqdm

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.evaluation import interleaved_medians, subnet_grid
from transformers_flex.flexbert_layers import kept_layer_indices
from transformers_flex.flops import subnet_flops
from transformers_flex.utils import default_backbone_path

RESULTS = Path(__file__).parent / "results"
FIRST_TOKEN_ID = 1000  # random ids from here on: past BERT's special and unused tokens


def random_batch(vocab_size: int, batch_size: int, seq_length: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.randint(FIRST_TOKEN_ID, vocab_size, (batch_size, seq_length)),
        "attention_mask": torch.ones(batch_size, seq_length, dtype=torch.long),
    }


def compiled_exports(exports: dict, batch: dict) -> tuple[dict, dict]:
    """Each export through `torch.compile` (compiled once here, on `batch`), and the largest absolute logit
    difference between it and the eager export on that batch."""
    compiled, logit_diffs = {}, {}
    for subnet, export in tqdm(exports.items(), desc="compiling exports"):
        compiled[subnet] = torch.compile(export, dynamic=False)  # fixed shapes: the batch is the same every call
        with torch.inference_mode():
            difference = compiled[subnet](**batch).logits - export(**batch).logits
        logit_diffs[subnet] = float(difference.abs().max())
    return compiled, logit_diffs


def timed_medians(model, batch: dict, subnets: list, args: argparse.Namespace) -> tuple:
    """Median seconds per call of `("sliced" | "export" [| "compiled"], width, depth)`, all variants interleaved
    in every round; and, with `--compile`, each compiled export's largest logit difference from the eager export."""
    exports = {subnet: model.export_subnet(*subnet).eval() for subnet in subnets}
    compiled, logit_diffs = compiled_exports(exports, batch) if args.compile else ({}, {})

    def sliced(width: float, depth: float) -> Callable[[], object]:
        def run() -> object:
            model.set_subnet(width=width, depth=depth)
            return model(**batch)

        return run

    def exported(width: float, depth: float) -> Callable[[], object]:
        return lambda: exports[(width, depth)](**batch)

    runners = {("sliced", *subnet): sliced(*subnet) for subnet in subnets}
    runners |= {("export", *subnet): exported(*subnet) for subnet in subnets}
    runners |= {("compiled", *subnet): functools.partial(compiled[subnet], **batch) for subnet in compiled}
    runners = {key: repeated(run, args.calls_per_round) for key, run in runners.items()}
    with torch.inference_mode():
        medians = interleaved_medians(runners, rounds=args.rounds, warmup=args.warmup, show_progress=True)
    model.set_subnet()
    return {key: seconds / args.calls_per_round for key, seconds in medians.items()}, logit_diffs


def repeated(run: Callable[[], object], calls: int) -> Callable[[], None]:
    """`run` called `calls` times in a row."""

    def run_all() -> None:
        for _ in range(calls):
            run()

    return run_all


def latency_rows(config, medians: dict, logit_diffs: dict, subnets: list, seq_length: int) -> list[dict]:
    full_sliced = medians[("sliced", 1.0, 1.0)]
    full_flops = subnet_flops(config, 1.0, 1.0, seq_length)
    rows = []
    for width, depth in subnets:
        flops_ratio = subnet_flops(config, width, depth, seq_length) / full_flops
        sliced_s, export_s = medians[("sliced", width, depth)], medians[("export", width, depth)]
        rows.append(
            {
                "width": width,
                "depth": depth,
                "flops_ratio": flops_ratio,
                "sliced_ms": 1000 * sliced_s,
                "export_ms": 1000 * export_s,
                "sliced_ratio": sliced_s / full_sliced,
                "export_ratio": export_s / full_sliced,
                "sliced_over_flops": (sliced_s / full_sliced) / flops_ratio,
            }
        )
        if (width, depth) in logit_diffs:  # compiled: its ratio is to the compiled full model, like for like
            compiled_s = medians[("compiled", width, depth)]
            rows[-1]["compiled_ms"] = 1000 * compiled_s
            rows[-1]["compiled_ratio"] = compiled_s / medians[("compiled", 1.0, 1.0)]
            rows[-1]["compiled_logit_diff"] = logit_diffs[(width, depth)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="BERT/FlexBert checkpoint (default: the packaged MiniLM).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--calls-per-round", type=int, default=1, help="Calls of a variant timed back to back.")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    parser.add_argument("--compile", action="store_true", help="Also time every export through torch.compile.")
    parser.add_argument("--output", default=str(RESULTS / "subnet_latency.json"), help="Where to write the JSON.")
    args = parse_or_show(parser, table, required=())
    if args is None:
        return

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = args.model or default_backbone_path()
    model = FlexBertForSequenceClassification.from_pretrained(checkpoint, dynamic_inference=False).eval()
    subnets = subnet_grid(model.config)
    batch = random_batch(model.config.vocab_size, args.batch_size, args.seq_length)
    medians, logit_diffs = timed_medians(model, batch, subnets, args)
    report = run_record(
        checkpoint=str(checkpoint),
        num_layers=model.config.num_hidden_layers,
        batch_size=args.batch_size,
        seq_length=args.seq_length,
        rounds=args.rounds,
        warmup=args.warmup,
        calls_per_round=args.calls_per_round,
        threads=torch.get_num_threads(),
        rows=latency_rows(model.config, medians, logit_diffs, subnets, args.seq_length),
    )
    write_report(args.output, report)
    plot(report, Path(args.output).with_suffix(".png"))
    print(table(report))


def table(report: dict) -> str:
    """Per sub-network: its layers, FLOPs ratio, both latency ratios, sliced latency over FLOPs, sliced ms; with
    compiled exports also their ratio to the compiled full model, their ms and their largest logit difference."""
    compiled = "compiled_ratio" in report["rows"][0]
    header = "| width | depth | layers | FLOPs ratio | sliced latency ratio | export latency ratio | sliced / FLOPs "
    header += "| sliced ms |" + (" compiled latency ratio | compiled ms | compiled logit diff |" if compiled else "")
    lines = [header, "|---" * header.count(" |") + "|"]
    num_layers = report.get("num_layers", 6)  # files made before it was recorded measured all-MiniLM-L6-v2
    for row in report["rows"]:
        layers = len(kept_layer_indices(num_layers, row["depth"], "prefix"))  # how many, whichever the depth rule
        line = (
            f"| {row['width']} | {row['depth']} | {layers} | {row['flops_ratio']:.3f} | {row['sliced_ratio']:.3f} | "
            f"{row['export_ratio']:.3f} | {row['sliced_over_flops']:.2f} | {row['sliced_ms']:.1f} |"
        )
        if compiled:
            line += f" {row['compiled_ratio']:.3f} | {row['compiled_ms']:.1f} | {row['compiled_logit_diff']:.1e} |"
        lines.append(line)
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Latency ratio against FLOPs ratio; the diagonal is the ideal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="ideal (latency = FLOPs)")
    axes.scatter([r["flops_ratio"] for r in rows], [r["sliced_ratio"] for r in rows], label="sliced supernet")
    axes.scatter([r["flops_ratio"] for r in rows], [r["export_ratio"] for r in rows], marker="x", label="export")
    if "compiled_ratio" in rows[0]:
        compiled = [r["compiled_ratio"] for r in rows]
        axes.scatter([r["flops_ratio"] for r in rows], compiled, marker="+", label="compiled export / compiled full")
    for row in rows:
        axes.annotate(f"w{row['width']} d{row['depth']}", (row["flops_ratio"], row["sliced_ratio"]), fontsize=7)
    axes.set_xlabel("FLOPs / full model")
    axes.set_ylabel("median latency / full model")
    threads = f", {report['threads']} threads" if "threads" in report else ""
    axes.set_title(f"CPU, batch {report['batch_size']}, length {report['seq_length']}{threads}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
