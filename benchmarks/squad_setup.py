"""What the SQuAD benchmarks share: the dev-set arguments, the dev questions cut into windows as in training, the
teacher's point, and the command line that reproduces a result. Imported by
squad_subnets.py, squad_dynamic.py and squad_throughput.py (run from the repository root)."""

import argparse
import os
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from transformers import AutoTokenizer, DataCollatorWithPadding  # noqa: E402

from transformers_flex import FlexBertForQuestionAnswering  # noqa: E402
from transformers_flex.evaluation import evaluate_qa_subnets  # noqa: E402
from transformers_flex.squad import load_squad  # noqa: E402
from transformers_flex.tasks import squad_task  # noqa: E402


@dataclass
class DevSet:
    """SQuAD v1.1 dev questions (`examples`), their windows (`features`) and the collator that pads them."""

    examples: object
    features: object
    collate: DataCollatorWithPadding


def add_dev_arguments(parser: argparse.ArgumentParser, max_eval_samples: int | None = None) -> None:
    """The dev-set flags every SQuAD benchmark takes (windows as in training: run_qa.py's 384/128 by default)."""
    parser.add_argument("--max_eval_samples", type=int, default=max_eval_samples, help="Dev questions (None: all).")
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64, help="Windows per batch.")


def load_dev(args: argparse.Namespace, tokenizer_path: str) -> DevSet:
    """The first `args.max_eval_samples` dev questions (all by default), windowed with the model's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    examples = load_squad()["validation"]
    if args.max_eval_samples is not None:
        examples = examples.select(range(min(args.max_eval_samples, len(examples))))
    task = squad_task()
    task.doc_stride = args.doc_stride
    features = task.tokenize(examples, tokenizer, args.max_seq_length, training=False)
    return DevSet(examples, features, DataCollatorWithPadding(tokenizer))


def teacher_point(path: str, dev: DevSet, batch_size: int) -> dict:
    """EM, F1 and FLOPs per question of the fine-tuned full model (its answers included, under "answers")."""
    teacher = FlexBertForQuestionAnswering.from_pretrained(path)
    return evaluate_qa_subnets(teacher, dev.examples, dev.features, dev.collate, [(1.0, 1.0)], batch_size)[0]


def command_line(script: str, args: argparse.Namespace) -> str:
    """The command that reproduces a result: every flag that has a value (lists space-separated)."""
    flags = []
    for key, value in vars(args).items():
        if value in (None, False):
            continue
        if value is True:
            flags.append(f"--{key}")
        else:
            flags.append(f"--{key} {' '.join(map(str, value)) if isinstance(value, list) else value}")
    return " ".join([f"python benchmarks/{script}", *flags])
