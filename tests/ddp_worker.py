"""Worker for the DDP test: `torchrun --nproc_per_node=2 tests/ddp_worker.py OUT_DIR` (CPU, gloo)."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import torch  # noqa: E402
from conftest import pad_collate, random_classification_dataset  # noqa: E402

import transformers_flex.trainer as flex_trainer  # noqa: E402
from transformers_flex import FlexBertConfig, FlexBertForSequenceClassification  # noqa: E402
from transformers_flex.trainer import FlexTrainer  # noqa: E402
from transformers_flex.training_args import FlexTrainingArguments  # noqa: E402

exact_importance = flex_trainer.compute_importance


def rank_dependent_importance(*args, **kwargs):
    """Every rank's scores shuffled by its own noise, as non-deterministic GPU kernels could: the ranks stay identical
    only if they all graft with the same (rank 0's) scores."""
    importance = exact_importance(*args, **kwargs)
    generator = torch.Generator().manual_seed(int(os.environ["RANK"]))
    for scores in (*importance.heads, *importance.neurons):
        scores.add_(torch.rand(scores.shape, generator=generator) * scores.abs().max())
    return importance


def main(output_dir: Path) -> None:
    config = FlexBertConfig(
        vocab_size=99, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, num_labels=3
    )
    flex_trainer.compute_importance = rank_dependent_importance
    torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts rank 0's)
    teacher = FlexBertForSequenceClassification(config)
    student = FlexBertForSequenceClassification(config)
    student.load_state_dict(teacher.state_dict())
    args = FlexTrainingArguments(
        output_dir=str(output_dir),
        flex_stage="width",
        subnet_sampling="sandwich",
        num_random_subnets=1,
        grafting=True,
        num_train_epochs=2,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        optim="sgd",
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        ddp_backend="gloo",
        disable_tqdm=True,
        logging_steps=1,
        seed=3,
    )
    trainer = FlexTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        importance_dataset=random_classification_dataset(8, seed=1),
        train_dataset=random_classification_dataset(32),
        data_collator=pad_collate,
    )
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    torch.save(
        {
            "state": student.state_dict(),
            "initial": teacher.state_dict(),
            "world_size": args.world_size,
            "log_history": trainer.state.log_history,
        },
        output_dir / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
