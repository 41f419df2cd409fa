"""Width x depth x precision as one trade-off table: each static sub-network of a flexible GLUE model run three ways
— PyTorch fp32 (the sliced supernet), its ONNX export on ONNX Runtime (fp32), and that graph with dynamic INT8
weights — with its dev metric and measured CPU latency, as ratios to the PyTorch fp32 full model in the same run.

    python benchmarks/deploy_tradeoffs.py --model runs/mrpc/width_depth --task mrpc \
        --output benchmarks/results/deploy_tradeoffs_mrpc_cpu.json

Dev metrics use the whole dev set at its real lengths (padded per batch of 32); latency is the median over
interleaved rounds of one fixed batch (`--batch-size` x `--seq-length`, real dev sentences padded or cut to it), all
runtimes on the same number of threads. Writes JSON (with versions and machine) and prints a Markdown table.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from transformers_flex import FlexBertForSequenceClassification  # noqa: E402
from transformers_flex.data import GLUE_DEV_SPLIT, GLUE_TEXT_COLUMNS, load_glue  # noqa: E402
from transformers_flex.evaluation import interleaved_medians, machine_description  # noqa: E402
from transformers_flex.export import ONNX_INPUTS, export_onnx, quantize_onnx  # noqa: E402
from transformers_flex.flops import subnet_flops  # noqa: E402
from transformers_flex.metrics import glue_metrics, main_metric  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PRECISIONS = ("torch_fp32", "onnx_fp32", "onnx_int8")


def parse_subnet(text: str) -> tuple[float, float]:
    width, depth = (float(part) for part in text.split(","))
    return width, depth


def dev_batches(tokenizer, dataset, task: str, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The dev set as padded int64 batches in dataset order."""
    columns = [column for column in GLUE_TEXT_COLUMNS[task] if column]
    batches = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        encoded = tokenizer(*(rows[column] for column in columns), padding=True, truncation=True, return_tensors="np")
        batches.append({name: encoded[name].astype(np.int64) for name in ONNX_INPUTS})
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A flexible FlexBert classification checkpoint.")
    parser.add_argument("--task", help="The GLUE task of its dev set.")
    parser.add_argument(
        "--subnets", nargs="+", type=parse_subnet, default=[(1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.5, 0.5)]
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--output", help="Where to write the JSON.")
    parser.add_argument("--show", help="Print the table of an existing result JSON and exit.")
    args = parser.parse_args()
    if args.show:
        print(table(json.loads(Path(args.show).read_text())))
        return
    if not all((args.model, args.task, args.output)):
        parser.error("--model --task and --output are required (or --show RESULT.json).")

    model = FlexBertForSequenceClassification.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dev = load_glue(args.task)[GLUE_DEV_SPLIT[args.task]]
    labels = np.array(dev["label"])
    batches = dev_batches(tokenizer, dev, args.task, 32)
    columns = [column for column in GLUE_TEXT_COLUMNS[args.task] if column]
    timed = tokenizer(
        *(dev[: args.batch_size][column] for column in columns),
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
            scores[width, depth, "torch_fp32"] = glue_metrics(args.task, reference, labels)
            runners[width, depth, "torch_fp32"] = torch_runner(width, depth)
            for name, session in sessions.items():
                logits = np.concatenate([session.run(None, batch)[0] for batch in batches])
                scores[width, depth, name] = glue_metrics(args.task, logits, labels)
                parity[width, depth, name] = float(np.abs(logits - reference).max())  # vs PyTorch, whole dev set
                runners[width, depth, name] = lambda session=session: session.run(None, timed)
        with torch.inference_mode():
            medians = interleaved_medians(runners, rounds=args.rounds, warmup=2, show_progress=True)

    metric = main_metric(args.task)
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
    report = {
        "command": "python benchmarks/deploy_tradeoffs.py "
        + f"--model {args.model} --task {args.task} --subnets "
        + " ".join(f"{w},{d}" for w, d in args.subnets)
        + f" --batch-size {args.batch_size} --seq-length {args.seq_length} --rounds {args.rounds}",
        "machine": machine_description(),
        "versions": {"transformers": transformers.__version__, "onnxruntime": ort.__version__},
        "dev_examples": len(dev),
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
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
