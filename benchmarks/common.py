"""What the benchmark scripts share: offline flags set before any Hugging Face import (import this module first),
the record every result JSON carries (the command that made it, machine, versions), `--show` to print an existing
result's table, and a finished run's checkpoints and data, split as the run saw it (`--run RUN [--stage S]`)."""

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from transformers_flex.evaluation import machine_description  # noqa: E402

RECORDED_PACKAGES = ("torch", "transformers", "datasets", "peft", "onnxruntime", "transformers-flex")


def package_versions() -> dict[str, str]:
    """Versions of the packages a result can depend on (those installed)."""
    versions = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue  # an optional extra that is not installed
    return versions


def command_line() -> str:
    """The command that is running, as one would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(Path.cwd())
    except ValueError:
        pass  # run from elsewhere: the absolute path
    return shlex.join(["python", str(script), *sys.argv[1:]])


def source_commit() -> str | None:
    """The repository commit the scripts ran from (None outside a git checkout)."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    except OSError:  # no git on this machine
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def run_record(**extra) -> dict:
    """The head of a result JSON: command, commit, machine, versions, then `extra` (task, seeds, sizes)."""
    machine, versions = machine_description(), package_versions()
    return {"command": command_line(), "commit": source_commit(), "machine": machine, "versions": versions, **extra}


def write_report(path: str | Path, report: dict) -> None:
    """Write `report` as JSON, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def parse_or_show(
    parser: argparse.ArgumentParser,
    table: Callable[[dict], str],
    required: tuple[str, ...],
    pass_through: bool = False,
) -> argparse.Namespace | None:
    """Parse the command line; with `--show RESULT.json`, print that result's table instead and return None. The
    `required` options are needed only when measuring. With `pass_through`, options the parser does not know are
    kept, in order, as `args.passed_on` (for a script that hands them to another command)."""
    parser.add_argument("--show", metavar="RESULT.json", help="Print the table of an existing result JSON and exit.")
    if pass_through:
        args, args.passed_on = parser.parse_known_args()
    else:
        args = parser.parse_args()
    if args.show:
        print(table(json.loads(Path(args.show).read_text())))
        return None
    missing = [f"--{name.replace('_', '-')}" for name in required if getattr(args, name) is None]
    if missing:
        parser.error(f"{' '.join(missing)} required (or --show RESULT.json).")
    return args


def add_run_arguments(parser: argparse.ArgumentParser, stage_help: str = "the run's final one") -> None:
    """`--run`, `--stage` and `--max-eval-samples`: which finished run, which of its checkpoints, how much dev data."""
    parser.add_argument("--run", help="A finished `transformers-flex train` run directory.")
    parser.add_argument("--stage", help=f"The stage whose checkpoint to measure (default: {stage_help}).")
    parser.add_argument("--max-eval-samples", type=int, help="Use only the dev set's first examples (smoke runs).")


# The recipe of the committed GLUE runs (section 3 of docs/RESULTS.md) and the options that keep a stage quiet and
# resumable; the scripts that train through `transformers-flex train` share them.
TRAINING_RECIPE = {"num_train_epochs": "3", "learning_rate": "5e-5", "per_device_train_batch_size": "32"}
QUIET_TRAINING = [
    *("--save_strategy", "epoch", "--save_total_limit", "1", "--logging_steps", "50", "--report_to", "none"),
    *("--disable_tqdm", "true"),
]


def add_training_arguments(parser: argparse.ArgumentParser, output_dir_help: str) -> None:
    """The options of a script that trains through `transformers-flex train`: task, run folder, seed, result JSON and
    the recipe (`--num_train_epochs`, `--learning_rate`, `--per_device_train_batch_size`, default TRAINING_RECIPE)."""
    parser.add_argument("--task_name", help="GLUE task (the data options of `transformers-flex train` also work).")
    parser.add_argument("--output_dir", help=output_dir_help)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", help="Result JSON.")
    for name, default in TRAINING_RECIPE.items():
        parser.add_argument(f"--{name}", default=default, help=f"Every stage's {name} (default {default}).")


def training_recipe(args: argparse.Namespace) -> dict[str, str]:
    """The recipe parsed by `add_training_arguments`."""
    return {name: getattr(args, name) for name in TRAINING_RECIPE}


def shared_training_options(args: argparse.Namespace) -> list[str]:
    """What every `transformers-flex train` call of the script shares: task, seed, CPU, the options the script passes
    on (`parse_or_show(..., pass_through=True)`) and the recipe."""
    shared = ["--task_name", args.task_name, "--seed", str(args.seed), "--use_cpu", *args.passed_on]
    return shared + [item for name, value in training_recipe(args).items() for item in (f"--{name}", value)]


def train_flex(arguments: list[str]) -> None:
    """One `transformers-flex train` call, quiet and resumable, run in this process (no interpreter start-up and
    imports a call); a refused or failed one stops the script."""
    from transformers_flex.cli import main as cli_main

    command = ["train", *arguments, *QUIET_TRAINING]
    print("+ transformers-flex", shlex.join(command), flush=True)
    cli_main(command)


def subnet_score(metrics: dict, metric: str, width: float, depth: float) -> float:
    """The dev metric of (width, depth) from a stage's metrics (a single full-size model reports plain keys)."""
    key = f"eval_w{width}_d{depth}_{metric}"
    return metrics[key] if key in metrics else metrics[f"eval_{metric}"]


def main_metric(scores: dict) -> str:
    """The name of the first metric a task reports (GLUE's ranking one; accuracy for other classification)."""
    return next(iter(scores))


@dataclass
class RunSplits:
    """A finished `transformers-flex train` run with its task and its data, split as the run split it.

    Args:
        run: The run (`transformers_flex.hub.Run`): results, record, final checkpoint.
        task: Its `FlexTask`.
        max_seq_length: The length the run tokenized to.
        splits: `train`, `heldout` (the importance slice), `dev` and `extra_dev`, untokenized.
    """

    run: object
    task: object
    max_seq_length: int
    splits: dict

    def checkpoint(self, stage: str | None = None) -> Path:
        """The checkpoint folder of `stage` (None: the run's final stage)."""
        if stage is None:
            return self.run.checkpoint
        folder = self.run.run_dir / stage
        if not (folder / "config.json").is_file():
            raise SystemExit(f"The run {self.run.run_dir} has no {stage!r} checkpoint (no {folder / 'config.json'}).")
        return folder

    def batches(self, split: str, tokenizer, batch_size: int, max_examples: int | None = None) -> list[dict]:
        """`split` (its first `max_examples`) tokenized as the run did, in length-bucketed padded batches."""
        from transformers import DataCollatorWithPadding

        from transformers_flex.evaluation import length_bucketed_batches

        examples = self.splits[split]
        if max_examples is not None:
            examples = examples.select(range(min(max_examples, len(examples))))
        tokenized = self.task.tokenize(examples, tokenizer, self.max_seq_length)
        return length_bucketed_batches(tokenized, DataCollatorWithPadding(tokenizer), batch_size)

    def scores(self, logits, labels) -> dict[str, float]:
        """The task's dev metrics of `logits` (tensors or arrays) against `labels`."""
        import numpy as np
        from transformers import EvalPrediction

        return self.task.compute_metrics()(EvalPrediction(np.asarray(logits), np.asarray(labels)))


def run_splits(run_dir: str | Path, max_eval_samples: int | None = None, whole_dev: bool = False) -> RunSplits:
    """The run in `run_dir` and its data; `max_eval_samples` keeps the dev set's first examples (smoke runs). With
    `whole_dev` the dev set is the task's whole dev split (its first `max_eval_samples`), not the run's dev subset:
    SQuAD results are reported on every question, while a QA run evaluates its stages on a few hundred."""
    from transformers_flex.hub import read_run
    from transformers_flex.training_pipeline import load_task, recorded_data_arguments, select_splits

    run = read_run(run_dir)
    data_args = recorded_data_arguments(run.record)
    if whole_dev:
        data_args.max_eval_samples = max_eval_samples
    task, raw = load_task(data_args)
    splits = select_splits(task, raw, data_args, run.record["training"]["seed"])
    if max_eval_samples is not None:
        splits["dev"] = splits["dev"].select(range(min(max_eval_samples, len(splits["dev"]))))
    return RunSplits(run, task, data_args.max_seq_length, splits)
