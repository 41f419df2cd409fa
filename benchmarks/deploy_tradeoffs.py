"""Width x depth x precision as one trade-off table: each static sub-network of a flexible classification run, run
three ways — PyTorch fp32 (the sliced supernet), its ONNX export on ONNX Runtime (fp32), and that graph with
dynamic INT8 weights — with its dev metric and measured CPU latency, as ratios to the PyTorch fp32 full model in
the same run.

    python benchmarks/deploy_tradeoffs.py --run runs/mrpc --output benchmarks/results/deploy_tradeoffs_mrpc_cpu.json

The run's own data (any `transformers-flex train` run: GLUE, a Hub dataset or files). Dev metrics use the whole
dev set (the run's, as it split it) at its real lengths (padded per batch of 32); latency is the median over
interleaved rounds of one fixed batch (`--batch-size` x `--seq-length`, real dev sentences padded or cut to it), all
runtimes on the same number of threads. Writes JSON (with versions and machine) and prints a Markdown table.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import parse_or_show, run_record, run_splits, write_report
from transformers import AutoTokenizer, DataCollatorWithPadding, EvalPrediction

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.evaluation import interleaved_medians
from transformers_flex.export import ONNX_INPUTS, export_onnx, quantize_onnx
from transformers_flex.flops import subnet_flops

PRECISIONS = ("torch_fp32", "onnx_fp32", "onnx_int8")


def parse_subnet(text: str) -> tuple[float, float]:
    width, depth = (float(part) for part in text.split(","))
    return width, depth


def dev_batches(features, tokenizer, batch_size: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The tokenized dev set as padded int64 batches in dataset order, and its labels."""
    collate = DataCollatorWithPadding(tokenizer, return_tensors="np")
    batches = [
        collate([features[i] for i in range(start, min(start + batch_size, len(features)))])
        for start in range(0, len(features), batch_size)
    ]
    labels = np.concatenate([batch["labels"] for batch in batches])
    return [{name: batch[name].astype(np.int64) for name in ONNX_INPUTS} for batch in batches], labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="A finished classification run directory (`transformers-flex train`).")
    parser.add_argument("--stage", help="The stage whose checkpoint to measure (default: the run's final one).")
    parser.add_argument(
        "--subnets", nargs="+", type=parse_subnet, default=[(1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.5, 0.5)]
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--max-eval-samples", type=int, help="Score only the dev set's first examples (smoke runs).")
    parser.add_argument("--output", help="Where to write the JSON.")
    args = parse_or_show(parser, table, required=("run", "output"))
    if args is None:
        return

    data = run_splits(args.run, args.max_eval_samples)
    checkpoint = data.run.run_dir / args.stage if args.stage else data.run.checkpoint
    model = FlexBertForSequenceClassification.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    dev = data.splits["dev"]
    batches, labels = dev_batches(data.task.tokenize(dev, tokenizer, data.max_seq_length), tokenizer, 32)
    compute_metrics = data.task.compute_metrics()
    timed = tokenizer(
        *(dev[: args.batch_size][column] for column in data.task.text_columns),
        padding="max_length",
        truncation=True,
        max_length=args.seq_length,
        return_tensors="np",
    )
    timed = {name: timed[name].astype(np.int64) for name in ONNX_INPUTS}
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as PyTorch

    def torch_runner(width, depth):
        tensors = {name: torch.from_numpy(value) for name, value in timed.items()}
        return lambda: model(**tensors, width=width, depth=depth, dynamic=False)

    def torch_logits(width, depth) -> np.ndarray:
        outputs = []
        with torch.inference_mode():
            for batch in batches:
                tensors = {name: torch.from_numpy(value) for name, value in batch.items()}
                outputs.append(model(**tensors, width=width, depth=depth, dynamic=False).logits.float().numpy())
        return np.concatenate(outputs)

    runners, scores, sizes, parity = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for width, depth in args.subnets:
            fp32 = export_onnx(model, Path(folder) / f"w{width}_d{depth}.onnx", width, depth)
            int8 = quantize_onnx(fp32, Path(folder) / f"w{width}_d{depth}_int8.onnx")
            sessions = {
                "onnx_fp32": ort.InferenceSession(str(fp32), options),
                "onnx_int8": ort.InferenceSession(str(int8), options),
            }
            sizes[width, depth] = {"onnx_fp32": fp32.stat().st_size, "onnx_int8": int8.stat().st_size}
            reference = torch_logits(width, depth)
            scores[width, depth, "torch_fp32"] = compute_metrics(EvalPrediction(reference, labels))
            runners[width, depth, "torch_fp32"] = torch_runner(width, depth)
            for name, session in sessions.items():
                logits = np.concatenate([session.run(None, batch)[0] for batch in batches])
                scores[width, depth, name] = compute_metrics(EvalPrediction(logits, labels))
                parity[width, depth, name] = float(np.abs(logits - reference).max())  # vs PyTorch, whole dev set
                runners[width, depth, name] = lambda session=session: session.run(None, timed)
        with torch.inference_mode():
            medians = interleaved_medians(runners, rounds=args.rounds, warmup=2, show_progress=True)

    metric = next(iter(scores[1.0, 1.0, "torch_fp32"]))  # the task's first metric (GLUE's ranking one)
    full = medians[1.0, 1.0, "torch_fp32"]
    full_flops = subnet_flops(model.config, 1.0, 1.0, args.seq_length)
    rows = [
        {
            "width": width,
            "depth": depth,
            "precision": precision,
            "metric": metric,
            "score": scores[width, depth, precision][metric],
            "scores": scores[width, depth, precision],
            "latency_ms": 1000 * medians[width, depth, precision],
            "latency_ratio": medians[width, depth, precision] / full,
            "flops_ratio": subnet_flops(model.config, width, depth, args.seq_length) / full_flops,
            "file_bytes": sizes[width, depth].get(precision),
            "max_abs_logit_difference": parity.get((width, depth, precision)),  # None: PyTorch, the reference
        }
        for width, depth in args.subnets
        for precision in PRECISIONS
    ]
    report = run_record(
        task=data.task.name,
        checkpoint=str(checkpoint),
        dev_examples=len(dev),
        timed_batch={"batch_size": args.batch_size, "seq_length": args.seq_length, "rounds": args.rounds},
        rows=rows,
    )
    write_report(args.output, report)
    print(table(report))


def difference(row: dict) -> str:
    """The ONNX row's largest logit difference from PyTorch; blank for PyTorch rows and older result files."""
    value = row.get("max_abs_logit_difference")
    return "" if value is None else f"{value:.1e}"


def table(report: dict) -> str:
    """The Markdown table of docs/RESULTS.md from a report."""
    lines = [
        "| width | depth | precision | dev metric | FLOPs ratio | latency ratio | latency ms | file MB | logit diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        size = f"{row['file_bytes'] / 1e6:.1f}" if row["file_bytes"] else ""
        lines.append(
            f"| {row['width']} | {row['depth']} | {row['precision']} | {100 * row['score']:.1f} | "
            f"{row['flops_ratio']:.2f} | {row['latency_ratio']:.2f} | {row['latency_ms']:.1f} | {size} | "
            f"{difference(row)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
