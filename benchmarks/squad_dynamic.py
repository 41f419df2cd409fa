"""Trade-off points of a QA model's off-ramps on SQuAD v1.1 dev: exact match, F1, FLOPs per question and mean exit
layer at each exit threshold, the windows of a question exiting together, against the teacher (whole dev set by
default). Writes benchmarks/results/squad/dynamic.json and dynamic.png.

    python benchmarks/squad_dynamic.py --model runs/squad/ramps --teacher runs/squad/teacher \
        --thresholds 0.5 1.0 1.5 2.0 2.5
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoTokenizer, DataCollatorWithPadding  # noqa: E402

from transformers_flex import FlexBertForQuestionAnswering  # noqa: E402
from transformers_flex.evaluation import evaluate_qa_dynamic, evaluate_qa_subnets  # noqa: E402
from transformers_flex.squad import load_squad  # noqa: E402
from transformers_flex.tasks import squad_task  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "squad"


def plot(summary: dict, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    points = summary["points"]
    axis.plot([p["mean_flops"] / 1e9 for p in points], [p["f1"] for p in points], "o-", label="off-ramps")
    for point in points:
        axis.annotate(str(point["threshold"]), (point["mean_flops"] / 1e9, point["f1"]), fontsize=7)
    teacher = summary["teacher"]
    axis.scatter([teacher["mean_flops"] / 1e9], [teacher["f1"]], marker="*", s=160, color="red", label="teacher")
    axis.set_xlabel("GFLOPs per question (real lengths)")
    axis.set_ylabel("SQuAD v1.1 dev F1")
    axis.set_title(f"Early exit on SQuAD v1.1 dev ({summary['dev_questions']} questions), {summary['criterion']}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A QA model with off-ramps (the pipeline's ramps stage).")
    parser.add_argument("--teacher", required=True, help="The fine-tuned full model (the pipeline's teacher stage).")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 2.5])
    parser.add_argument("--criterion", default="entropy", choices=["entropy", "normalized_entropy"])
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Dev questions (default: all).")
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--output", default=str(RESULTS / "dynamic.json"))
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    examples = load_squad()["validation"]
    if args.max_eval_samples is not None:
        examples = examples.select(range(args.max_eval_samples))
    task = squad_task()
    task.doc_stride = args.doc_stride
    features = task.tokenize(examples, tokenizer, args.max_seq_length, training=False)
    collate = DataCollatorWithPadding(tokenizer)
    started = time.time()
    teacher_model = FlexBertForQuestionAnswering.from_pretrained(args.teacher)
    teacher = evaluate_qa_subnets(teacher_model, examples, features, collate, [(1.0, 1.0)], args.batch_size)[0]
    teacher.pop("answers")
    model = FlexBertForQuestionAnswering.from_pretrained(args.model)
    points = []
    for threshold in tqdm(args.thresholds, desc="thresholds"):
        point = evaluate_qa_dynamic(
            model, examples, features, collate, args.batch_size, criterion=args.criterion, threshold=threshold
        )
        point.pop("answers")
        points.append({"threshold": threshold, **point})
    summary = {
        "command": "python benchmarks/squad_dynamic.py "
        + " ".join(
            f"--{key} {' '.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in vars(args).items()
            if value is not None
        ),
        "criterion": args.criterion,
        "exit_layers": model.config.exit_layers,
        "dev_questions": len(examples),
        "seconds": round(time.time() - started, 1),
        "teacher": teacher,
        "points": points,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2))
    plot(summary, output.with_suffix(".png"))
    for point in points:
        print(
            f"threshold {point['threshold']}: EM {point['exact_match']:.2f} F1 {point['f1']:.2f} "
            f"GFLOPs/question {point['mean_flops'] / 1e9:.2f} exit layer {point['mean_exit_layer']:.2f}"
        )


if __name__ == "__main__":
    main()
