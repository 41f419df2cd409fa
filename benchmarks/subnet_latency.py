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
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from transformers_flex import FlexBertForSequenceClassification  # noqa: E402
from transformers_flex.flops import subnet_flops  # noqa: E402
from transformers_flex.utils import default_backbone_path  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def time_forward(model: torch.nn.Module, batch: dict) -> float:
    """Seconds of one forward pass."""
    start = time.perf_counter()
    model(**batch)
    return time.perf_counter() - start


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
    subnets = [(width, depth) for depth in config.depth_mults for width in config.width_mults]
    exports = {subnet: model.export_subnet(*subnet).eval() for subnet in subnets}

    def run_sliced(width: float, depth: float) -> float:
        model.set_subnet(width=width, depth=depth)
        return time_forward(model, batch)

    times = {("sliced", *subnet): [] for subnet in subnets} | {("export", *subnet): [] for subnet in subnets}
    with torch.inference_mode():
        for round_index in tqdm(range(args.warmup + args.rounds), desc="rounds"):
            for subnet in subnets:
                sliced = run_sliced(*subnet)
                exported = time_forward(exports[subnet], batch)
                if round_index >= args.warmup:
                    times[("sliced", *subnet)].append(sliced)
                    times[("export", *subnet)].append(exported)
    model.set_subnet()

    full_sliced = statistics.median(times[("sliced", 1.0, 1.0)])
    full_flops = subnet_flops(config, 1.0, 1.0, args.seq_length)
    rows = []
    for width, depth in subnets:
        flops_ratio = subnet_flops(config, width, depth, args.seq_length) / full_flops
        sliced = statistics.median(times[("sliced", width, depth)])
        exported = statistics.median(times[("export", width, depth)])
        rows.append(
            {
                "width": width,
                "depth": depth,
                "flops_ratio": flops_ratio,
                "sliced_ms": 1000 * sliced,
                "export_ms": 1000 * exported,
                "sliced_ratio": sliced / full_sliced,
                "export_ratio": exported / full_sliced,
                "sliced_over_flops": (sliced / full_sliced) / flops_ratio,
            }
        )
    report = {
        "command": "python benchmarks/subnet_latency.py " + " ".join(
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
