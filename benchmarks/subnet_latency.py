"""CPU latency of every (width, depth) sub-network, as a ratio to the full model measured in the same run.

Each sub-network runs two ways: sliced from the supernet (`set_subnet`, weight views) and as a compact export
(`export_subnet`, physically smaller tensors). Rounds interleave all variants, so machine noise hits them alike;
the medians over rounds are compared. Writes JSON + a plot under benchmarks/results/ and prints a Markdown table.

    python benchmarks/subnet_latency.py --rounds 15 --batch-size 32 --seq-length 128
"""

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from transformers_flex import FlexBertForSequenceClassification  # noqa: E402
from transformers_flex.evaluation import interleaved_medians, subnet_grid  # noqa: E402
from transformers_flex.flops import subnet_flops  # noqa: E402
from transformers_flex.utils import default_backbone_path  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="BERT/FlexBert checkpoint (default: the packaged MiniLM).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "subnet_latency.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = FlexBertForSequenceClassification.from_pretrained(args.model or default_backbone_path(), num_labels=2)
    model.eval()
    config = model.config
    batch = {
        "input_ids": torch.randint(1000, config.vocab_size, (args.batch_size, args.seq_length)),
        "attention_mask": torch.ones(args.batch_size, args.seq_length, dtype=torch.long),
    }
    subnets = subnet_grid(config)
    exports = {subnet: model.export_subnet(*subnet).eval() for subnet in subnets}

    def sliced(width: float, depth: float) -> Callable[[], object]:
        def run() -> object:
            model.set_subnet(width=width, depth=depth)
            return model(**batch)

        return run

    def exported(width: float, depth: float) -> Callable[[], object]:
        return lambda: exports[(width, depth)](**batch)

    runners = {("sliced", *subnet): sliced(*subnet) for subnet in subnets}
    runners |= {("export", *subnet): exported(*subnet) for subnet in subnets}
    with torch.inference_mode():
        medians = interleaved_medians(runners, rounds=args.rounds, warmup=args.warmup, show_progress=True)
    model.set_subnet()

    full_sliced = medians[("sliced", 1.0, 1.0)]
    full_flops = subnet_flops(config, 1.0, 1.0, args.seq_length)
    rows = []
    for width, depth in subnets:
        flops_ratio = subnet_flops(config, width, depth, args.seq_length) / full_flops
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
    report = {
        "command": "python benchmarks/subnet_latency.py "
        + " ".join(
            f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items() if key not in ("output", "model")
        ),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "batch_size": args.batch_size,
        "seq_length": args.seq_length,
        "rounds": args.rounds,
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    plot(rows, Path(args.output).with_suffix(".png"), args)
    print("| width | depth | FLOPs ratio | sliced latency ratio | export latency ratio | sliced / FLOPs | sliced ms |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['width']} | {row['depth']} | {row['flops_ratio']:.3f} | {row['sliced_ratio']:.3f} | "
            f"{row['export_ratio']:.3f} | {row['sliced_over_flops']:.2f} | {row['sliced_ms']:.1f} |"
        )


def plot(rows: list[dict], path: Path, args: argparse.Namespace) -> None:
    """Latency ratio against FLOPs ratio; the diagonal is the ideal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="ideal (latency = FLOPs)")
    axes.scatter([r["flops_ratio"] for r in rows], [r["sliced_ratio"] for r in rows], label="sliced supernet")
    axes.scatter([r["flops_ratio"] for r in rows], [r["export_ratio"] for r in rows], marker="x", label="export")
    for row in rows:
        axes.annotate(f"w{row['width']} d{row['depth']}", (row["flops_ratio"], row["sliced_ratio"]), fontsize=7)
    axes.set_xlabel("FLOPs / full model")
    axes.set_ylabel("median latency / full model")
    axes.set_title(f"CPU, batch {args.batch_size}, length {args.seq_length}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
