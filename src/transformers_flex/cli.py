"""`transformers-flex` command line: `demo` (the main job), `train` (the training pipeline on any data), `export`,
`card` and `push` (a run's model card, and publishing it to the Hub), `search` (an operating point for a budget)."""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

# The library must also work where the Hub is unreachable; local paths are used when present.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="BERT checkpoint (default: the packaged all-MiniLM-L6-v2).")
    parser.add_argument("--data-dir", default=None, help="Local GLUE mirror (default: ../shared/data, else the Hub).")
    parser.add_argument("--output-dir", default="runs/demo", help="Where the checkpoint and results.json go.")
    parser.add_argument("--train-samples", type=int, default=8000, help="SST-2 training examples to fine-tune on.")
    parser.add_argument("--importance-samples", type=int, default=512, help="Held-out training examples.")
    parser.add_argument("--eval-samples", type=int, default=None, help="Dev examples (default: all 872).")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument(
        "--distill-samples", type=int, default=2000, help="Examples per distillation stage (0 skips both stages)."
    )
    parser.add_argument("--distill-learning-rate", type=float, default=5e-5)
    parser.add_argument(
        "--depths",
        type=float,
        nargs="+",
        default=[1.0, 0.75],
        help="Depth multipliers to distil and tabulate (default 1.0 0.75). Depth 0.5 (3 of 6 layers) needs more "
        "than the demo's budget: its rows stay near the majority class; `transformers-flex train` trains it.",
    )
    parser.add_argument("--latency-rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)


def demo_arguments(args: argparse.Namespace, stage: str, learning_rate: float, subnet_sampling: str = "all"):
    """FlexTrainingArguments of one demo stage: one epoch, no checkpoints, logs every 25 steps."""
    import torch

    from .training_args import FlexTrainingArguments

    return FlexTrainingArguments(
        output_dir=tempfile.mkdtemp(prefix=f"flex-demo-{stage}-"),
        flex_stage=stage,
        subnet_sampling=subnet_sampling,
        per_device_train_batch_size=args.batch_size,
        learning_rate=learning_rate,
        num_train_epochs=args.epochs,
        save_strategy="no",
        report_to="none",
        logging_steps=25,
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
    )


def run_demo(args: argparse.Namespace) -> dict:
    """Fine-tune the backbone as FlexBert on SST-2, rewire it, distil every sub-network, and tabulate them all."""
    import copy

    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding, set_seed

    from .evaluation import evaluate_subnets, predict, subnet_grid, subnet_latencies
    from .importance import compute_importance, rewire
    from .training_pipeline import DataArguments, load_model, make_trainer, prepare_data
    from .utils import default_backbone_path, load_tokenizer

    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    backbone = args.model or default_backbone_path()
    tokenizer = load_tokenizer(backbone)
    data_args = DataArguments(
        task_name="sst2",
        data_dir=args.data_dir,
        max_seq_length=args.max_length,
        max_train_samples=args.train_samples,
        max_eval_samples=args.eval_samples,
        importance_samples=args.importance_samples,
    )
    task, data = prepare_data(data_args, tokenizer, args.seed)
    train, heldout, dev = data["train"], data["heldout"], data["dev"]
    model = load_model(backbone, task, {"depth_mults": args.depths})  # SST-2's label names go into the config

    print(f"\n== 1. Fine-tune {backbone} as FlexBert on {len(train)} SST-2 examples (full width and depth)")
    collator = DataCollatorWithPadding(tokenizer)
    teacher_args = demo_arguments(args, "teacher", args.learning_rate)
    make_trainer(teacher_args, model, None, data, tokenizer, task).train()
    model.eval()
    dev_batches = DataLoader(dev, batch_size=64, collate_fn=collator)
    subnets = subnet_grid(model.config)
    print("\n== 2. Every sub-network before rewiring (heads and neurons in their pre-trained order)")
    before = evaluate_subnets(model, dev_batches, subnets)

    print(f"\n== 3. Importance on {len(heldout)} held-out training examples, then rewiring")
    full_logits, _, _ = predict(model, dev_batches)
    importance = compute_importance(model, DataLoader(heldout, batch_size=args.batch_size, collate_fn=collator))
    rewire(model, importance)
    rewired_logits, _, _ = predict(model, dev_batches)
    rewiring_change = (full_logits - rewired_logits).abs().max().item()
    print(f"largest change of a full-model dev logit after rewiring: {rewiring_change:.2e}")
    after = evaluate_subnets(model, dev_batches, subnets)

    distilled = None
    if args.distill_samples > 0:
        distill_train = train.select(range(min(args.distill_samples, len(train))))
        print(f"\n== 4. Distil into every width, then every (width, depth), on {len(distill_train)} examples each")
        teacher = copy.deepcopy(model)
        for stage, sampling in (("width", "all"), ("width_depth", "sandwich")):
            stage_args = demo_arguments(args, stage, args.distill_learning_rate, sampling)
            stage_teacher = teacher if stage == "width" else copy.deepcopy(model)
            make_trainer(stage_args, model, stage_teacher, data | {"train": distill_train}, tokenizer, task).train()
        model.eval()
        distilled = evaluate_subnets(model, dev_batches, subnets)

    print(f"\n== 5. Latency: one batch of {args.batch_size} dev sentences, median of {args.latency_rounds} rounds")
    latency_batch = collator([dev[i] for i in range(min(args.batch_size, len(dev)))])
    latencies = subnet_latencies(model, latency_batch, subnets, rounds=args.latency_rounds)

    rows = []
    for index, (row_before, row_rewired) in enumerate(zip(before, after)):
        subnet = (row_rewired["width"], row_rewired["depth"])
        row = distilled[index] if distilled is not None else row_rewired
        rows.append(
            row
            | {
                "accuracy_before_rewiring": row_before["accuracy"],
                "accuracy_rewired": row_rewired["accuracy"],
                "accuracy_distilled": distilled[index]["accuracy"] if distilled is not None else None,
                "latency_ms": 1000 * latencies[subnet],
                "latency_ratio": latencies[subnet] / latencies[(1.0, 1.0)],
            }
        )
    model.save_pretrained(output_dir / "model")
    tokenizer.save_pretrained(output_dir / "model")
    results = {
        "backbone": backbone,
        "task": "sst2",
        "train_examples": len(train),
        "dev_examples": len(dev),
        "rewiring_max_logit_change": rewiring_change,
        "settings": vars(args),
        "subnets": rows,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n" + format_subnet_table(rows))
    print(f"\nSaved the flexible model to {output_dir / 'model'} and the table to {output_dir / 'results.json'}.")
    if min(args.depths) > 0.5:
        print(
            "Depth 0.5 (3 of the 6 layers) is not in this table: one sandwich epoch on the demo's examples leaves it "
            "near the majority class. The full pipeline trains it (`transformers-flex train --task_name sst2`, "
            "docs/RESULTS.md section 3); `--depths 1.0 0.75 0.5` adds it here."
        )
    return results


def demo_table(results: dict) -> str:
    """The demo's table from its results.json (docs/RESULTS.md renders it from the committed copy)."""
    return format_subnet_table(results["subnets"])


def format_subnet_table(rows: list[dict]) -> str:
    """Markdown table of the demo's sub-networks."""
    full_flops = next(row["mean_flops"] for row in rows if row["width"] == 1.0 and row["depth"] == 1.0)
    lines = [
        "| width | depth | dev acc: fine-tuned | rewired | distilled | MFLOPs/example | FLOPs ratio "
        "| paper GFLOPs (len 128) | latency ms | latency ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        distilled = "–" if row["accuracy_distilled"] is None else f"{100 * row['accuracy_distilled']:.1f}"
        lines.append(
            f"| {row['width']} | {row['depth']} | {100 * row['accuracy_before_rewiring']:.1f} | "
            f"{100 * row['accuracy_rewired']:.1f} | {distilled} | {row['mean_flops'] / 1e6:.1f} | "
            f"{row['mean_flops'] / full_flops:.3f} | {row['paper_flops'] / 1e9:.3f} | {row['latency_ms']:.1f} | "
            f"{row['latency_ratio']:.3f} |"
        )
    return "\n".join(lines)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="A FlexBert checkpoint (directory or Hub id).")
    parser.add_argument("output_dir", help="Where to write the exported checkpoint.")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--depth", type=float, default=1.0)
    parser.add_argument("--as-bert", action="store_true", help="Write a plain BERT checkpoint (full width only).")
    parser.add_argument(
        "--onnx", action="store_true", help="Write an ONNX graph (model.onnx) with its config and tokenizer instead."
    )
    parser.add_argument("--int8", action="store_true", help="With --onnx: also write model_int8.onnx (dynamic INT8).")


def run_export(args: argparse.Namespace) -> None:
    """Write the (width, depth) sub-network of a checkpoint as a compact FlexBert or a plain BERT checkpoint, or as
    an ONNX graph."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
    )

    from . import FlexBertConfig
    from .export import export_onnx, quantize_onnx, to_bert
    from .utils import load_tokenizer

    config = AutoConfig.from_pretrained(args.checkpoint)
    if config.model_type != FlexBertConfig.model_type:
        raise SystemExit(f"{args.checkpoint} is a {config.model_type!r} checkpoint, not a FlexBert one.")
    architecture = (config.architectures or ["FlexBertModel"])[0]
    auto_class = {
        "FlexBertForSequenceClassification": AutoModelForSequenceClassification,
        "FlexBertForQuestionAnswering": AutoModelForQuestionAnswering,
    }.get(architecture, AutoModel)
    if args.int8 and not args.onnx:
        raise SystemExit("--int8 quantizes the ONNX graph: add --onnx.")
    model = auto_class.from_pretrained(args.checkpoint)
    exported = to_bert(model, args.width, args.depth) if args.as_bert else model.export_subnet(args.width, args.depth)
    if args.onnx:
        graph = export_onnx(model, Path(args.output_dir) / "model.onnx", args.width, args.depth)
        exported.config.save_pretrained(args.output_dir)  # labels and shapes beside the graph
        print(f"Wrote {graph} (width {args.width}, depth {args.depth}).")
        if args.int8:
            print(f"Wrote {quantize_onnx(graph, graph.with_name('model_int8.onnx'))} (INT8 weights).")
    else:
        exported.save_pretrained(args.output_dir)
    try:
        load_tokenizer(args.checkpoint).save_pretrained(args.output_dir)
    except (OSError, ValueError):
        print("No tokenizer found beside the checkpoint; only the model was written.")
    if not args.onnx:
        print(f"Wrote {type(exported).__name__} ({exported.num_parameters():,} parameters) to {args.output_dir}.")


def add_publish_arguments(parser: argparse.ArgumentParser, push: bool) -> None:
    parser.add_argument("run_dir", help="A `transformers-flex train` output directory (it has results.json).")
    if push:
        parser.add_argument("repo_id", help="The Hub repo to publish to (`name` or `namespace/name`).")
        parser.add_argument("--private", action="store_true", help="Create the repo private (if it is new).")
        parser.add_argument(
            "--subnet", default=None, help="WIDTH,DEPTH: publish this static sub-network as a compact checkpoint."
        )
        parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one).")
    else:
        parser.add_argument("--repo-id", default=None, help="The repo id the card's snippets load from.")
    parser.add_argument(
        "--dynamic-results",
        nargs="*",
        default=[],
        help="Results of benchmarks/dynamic_tradeoffs.py or dynamic_throughput.py: the dynamic operating points.",
    )


def parse_subnet(text: str | None) -> tuple[float, float] | None:
    """`0.5,1.0` -> (0.5, 1.0)."""
    if text is None:
        return None
    try:
        width, depth = (float(part) for part in text.split(","))
    except ValueError:
        raise SystemExit(f"--subnet takes WIDTH,DEPTH (e.g. 0.5,1.0), got {text!r}.") from None
    return width, depth


def run_publish(args: argparse.Namespace) -> None:
    """`card`: write README.md and the plot into the run's final checkpoint; `push`: that, then upload."""
    from .hub import FlexHubError, push_run, write_model_card

    try:
        if args.command == "card":
            print(f"Wrote {write_model_card(args.run_dir, args.repo_id, args.dynamic_results)}")
            return
        subnet = parse_subnet(args.subnet)
        url = push_run(args.run_dir, args.repo_id, args.private, subnet, args.dynamic_results, args.token)
    except FlexHubError as error:
        raise SystemExit(str(error)) from None
    except OSError as error:  # the Hub's HTTP errors, offline mode, a dropped connection
        raise SystemExit(
            f"The push to {args.repo_id} failed ({type(error).__name__}: {error}). Nothing was committed and the run "
            "is unchanged; run the same command again to retry."
        ) from None
    print(f"Pushed {args.run_dir} to {args.repo_id}: {url}")


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="A finished `transformers-flex train` run (sequence classification).")
    parser.add_argument("--budget", type=float, required=True, help="Cost as a fraction of the full model's.")
    parser.add_argument("--objective", choices=("flops", "latency"), default="flops")
    parser.add_argument("--name", default=None, help="The operating point's name (default: <objective><budget>).")
    parser.add_argument("--heldout-samples", type=int, default=256, help="Held-out training examples that score.")
    parser.add_argument("--batch-size", type=int, default=32, help="Latency objective: the batch it is timed at.")
    parser.add_argument("--seq-length", type=int, default=128, help="Length the FLOPs or latency are taken at.")
    parser.add_argument("--seed", type=int, default=None, help="Draw the scoring examples at random with this seed.")


def run_search(args: argparse.Namespace) -> None:
    """The best per-layer widths and depth under a budget, stored in the run's final checkpoint."""
    from .budget import search_run
    from .hub import FlexHubError

    try:
        found = search_run(
            args.run_dir,
            args.budget,
            args.objective,
            args.name,
            args.heldout_samples,
            args.batch_size,
            args.seq_length,
            args.seed,
        )
    except (FlexHubError, ValueError) as error:
        raise SystemExit(str(error)) from None
    searched, uniform = found["searched"], found["uniform"]
    print("| operating point | widths | depth | cost | held-out score |")
    print("|---|---|---|---|---|")
    for label, point in (("searched", searched), ("best uniform", uniform)):
        if point is not None:
            print(f"| {label} | {point.width} | {point.depth} | {point.cost:.3f} | {point.score:.4f} |")
    print(
        f"Stored as operating point {found['name']!r} in {found['checkpoint']}/config.json: select it with "
        f"model.set_subnet(budget={found['name']!r})."
    )


TRAIN_DESCRIPTION = """Train a flexible model on a GLUE task or SQuAD (--task_name) or your own data (--train_file and
--validation_file: CSV, JSON lines or parquet; or --dataset_name; SQuAD's columns mean extractive QA), with the
arguments of examples/run_glue_flex.py.
It runs the whole pipeline by default: teacher, rewire, width and width_depth, plus the ramps stage when
--exit_layers or --depth_heads ramps is given and the gates stage when --gate_block_size is. --stages picks
stages (in order; `final`, gold labels for every sub-network after width_depth, only when named), --last_stage
stops earlier, and --flex_stage <stage> trains one stage of --model_name_or_path instead. Each stage
writes <output_dir>/<stage>/; a rerun continues the run, and refuses one made with other settings
(--overwrite_output_dir starts over)."""


def run_train(argv: list[str]) -> None:
    """`transformers-flex train ...`: the training pipeline, the whole of it unless told otherwise."""
    from .training_args import PIPELINE_STAGE
    from .training_pipeline import main as pipeline_main

    pipeline_main(argv, flex_stage=PIPELINE_STAGE, prog="transformers-flex train", description=TRAIN_DESCRIPTION)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # its own parser (HfArgumentParser over the pipeline's dataclasses) reads the rest
        run_train(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="transformers-flex", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_demo_arguments(commands.add_parser("demo", help="Fine-tune, rewire and tabulate every sub-network (SST-2)."))
    commands.add_parser("train", help="Train the flexible-model pipeline on any data (`train --help`).")
    add_export_arguments(commands.add_parser("export", help="Export a static sub-network as its own checkpoint."))
    add_publish_arguments(commands.add_parser("card", help="Write a run's model card into its checkpoint."), False)
    add_publish_arguments(commands.add_parser("push", help="Publish a run's checkpoint and card to the Hub."), True)
    add_search_arguments(commands.add_parser("search", help="Find and store the best sub-network under a budget."))
    args = parser.parse_args(argv)
    if args.command == "demo":
        run_demo(args)
    elif args.command == "export":
        run_export(args)
    elif args.command == "search":
        run_search(args)
    else:
        run_publish(args)


if __name__ == "__main__":
    sys.exit(main())
