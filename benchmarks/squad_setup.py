"""What the SQuAD benchmarks share: a finished extractive-QA run's dev questions cut into
windows as the run cut them, with the collator that pads them (`load_dev`), the teacher's point, and the
F1-vs-FLOPs plot. Imported by squad_subnets.py, squad_dynamic.py, squad_throughput.py and
plain_trainer_squad_baseline.py (run from the repository root).

A QA benchmark's dev set is the task's whole dev split by default (`run_splits(..., whole_dev=True)`;
`--max-eval-samples`: its first questions), not the run's dev subset: SQuAD v1.1 results are reported on all 10,570
questions."""

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import RunSplits, add_run_arguments
from transformers import DataCollatorWithPadding

from transformers_flex import FlexBertForQuestionAnswering
from transformers_flex.evaluation import evaluate_qa_subnets
from transformers_flex.utils import load_tokenizer

STAGE_HELP = "the run's final one; also any checkpoint folder in the run, as train_squad.sh's dynamic/gates"


@dataclass
class DevSet:
    """Dev questions (`examples`), their windows (`features`) and the collator that pads them."""

    examples: object
    features: object
    collate: DataCollatorWithPadding


def add_qa_run_arguments(parser: argparse.ArgumentParser, max_eval_samples: int | None = None) -> None:
    """`--run`, `--stage`, `--max-eval-samples` (dev questions; None: all) and `--batch-size` (windows per batch)."""
    add_run_arguments(parser, stage_help=STAGE_HELP)
    parser.set_defaults(max_eval_samples=max_eval_samples)
    parser.add_argument("--batch-size", type=int, default=64, help="Windows per batch.")


def load_dev(data: RunSplits, checkpoint: Path) -> DevSet:
    """The dev questions of `data`, windowed with the checkpoint's tokenizer as the run windowed them."""
    tokenizer = load_tokenizer(checkpoint)
    examples = data.splits["dev"]
    features = data.task.tokenize(examples, tokenizer, data.max_seq_length, training=False)
    return DevSet(examples, features, DataCollatorWithPadding(tokenizer))


def teacher_point(data: RunSplits, dev: DevSet, batch_size: int) -> dict:
    """EM, F1 and FLOPs per question of the run's teacher stage (its answers included, under "answers")."""
    teacher = FlexBertForQuestionAnswering.from_pretrained(data.checkpoint("teacher"))
    return evaluate_qa_subnets(teacher, dev.examples, dev.features, dev.collate, [(1.0, 1.0)], batch_size)[0]


def save_f1_plot(report: dict, path: Path, title: str, draw: Callable) -> None:
    """F1 against GFLOPs per question: what `draw(axis)` puts on the axes, and the teacher as a red star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    draw(axis)
    teacher = report["teacher"]
    axis.scatter([teacher["mean_flops"] / 1e9], [teacher["f1"]], marker="*", s=160, color="red", label="teacher")
    axis.set_xlabel("GFLOPs per question (real lengths)")
    axis.set_ylabel("dev F1")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
