"""How much each layer's [CLS] state knows, and how good each off-ramp is (why the ramps are attention ramps).

For a finished run's model: per layer, the spread of the [CLS] state across training examples (mean over dimensions
of the standard deviation), and the dev metric of a linear probe trained on it (logistic regression; ridge
regression for a regression task) from the first `--train-examples` of the run's training split (shuffled by the
run). For every `--ramps` checkpoint: each off-ramp's dev metric at each width, next to the final classifier's.
Writes JSON (with the command, machine and versions) and prints a Markdown table.

    python benchmarks/layer_probe.py --run runs/dynamic/sst2 --stage width \
        --ramps runs/rampexp/copy runs/rampexp/random ramps --output benchmarks/results/layer_probe_sst2.json

`--ramps` takes stage names of the run (`ramps`, `gates`) or checkpoint folders (a stage name wins over a folder of
the same name in the working directory). The run's own data (GLUE, a Hub dataset or files), split as the run split
it; metrics are the task's, reported as its first one (GLUE's ranking one). The committed file was made before this
script took runs, as `--task sst2 --model runs/dynamic/sst2/width --ramps ... runs/dynamic/sst2/ramps` (2,000
examples of SST-2's whole training split, shuffled with seed 1), so its values are accuracies.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from common import add_run_arguments, main_metric, parse_or_show, run_record, run_splits, write_report
from sklearn.linear_model import LogisticRegression, Ridge

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.utils import load_tokenizer

BATCH_SIZE = 64
RAMP_WIDTHS = (1.0, 0.5)


def load_model(checkpoint: Path):
    """The checkpoint's static model (the dynamic engine off: every layer runs, at the active width)."""
    return FlexBertForSequenceClassification.from_pretrained(checkpoint, dynamic_inference=False).eval()


@torch.no_grad()
def cls_states(model, batches: list[dict]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """[CLS] state of every layer (0: embeddings) for every example, and the labels."""
    states, labels = [], []
    for batch in batches:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        labels.append(batch["labels"])
        states.append([hidden[:, 0] for hidden in model(**inputs, output_hidden_states=True).hidden_states])
    return [torch.cat(layer) for layer in zip(*states)], torch.cat(labels)


def probe_logits(data, num_labels: int, train_x, train_y, dev_x) -> np.ndarray:
    """Dev outputs of a linear probe fit on the training states, shaped like the model's logits."""
    if data.task.kind == "regression":
        return Ridge().fit(train_x, train_y).predict(dev_x)[:, None]
    predicted = LogisticRegression(max_iter=2000).fit(train_x, train_y).predict(dev_x)
    return np.eye(num_labels)[predicted]  # one-hot over every class, also those the probe never saw


def layer_rows(data, model, tokenizer, train_examples: int) -> list[dict]:
    """Per layer: the [CLS] spread and norm on the training examples, and the probe's dev scores."""
    train_states, train_labels = cls_states(model, data.batches("train", tokenizer, BATCH_SIZE, train_examples))
    dev_states, dev_labels = cls_states(model, data.batches("dev", tokenizer, BATCH_SIZE))
    rows = []
    for layer, (train_x, dev_x) in enumerate(zip(train_states, dev_states)):
        logits = probe_logits(data, model.config.num_labels, train_x.numpy(), train_labels.numpy(), dev_x.numpy())
        scores = data.scores(logits, dev_labels)
        rows.append(
            {
                "layer": layer,
                "cls_spread": float(train_x.std(dim=0).mean()),
                "cls_norm": float(train_x.norm(dim=1).mean()),
                "probe_dev_scores": scores,
                "probe_dev_accuracy": scores.get("accuracy"),  # the key of files made before (None: no accuracy)
            }
        )
    return rows


@torch.no_grad()
def ramp_scores(model, data, batches: list[dict], width: float, metric: str) -> dict[str, float]:
    """`{layer: dev metric}` of every off-ramp and of the final head (at the last layer), at `width`."""
    outputs: dict[int, list[torch.Tensor]] = {}
    labels = []
    with model.subnet(width=width):
        for batch in batches:
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            output = model(**inputs, output_hidden_states=True)
            answers = model.ramp_logits(output.hidden_states, inputs["attention_mask"])
            answers[model.config.num_hidden_layers] = output.logits
            for layer, logits in answers.items():
                outputs.setdefault(layer, []).append(logits)
            labels.append(batch["labels"])
    labels = torch.cat(labels)
    return {str(layer): data.scores(torch.cat(outputs[layer]), labels)[metric] for layer in sorted(outputs)}


def ramp_checkpoint(data, name: str) -> Path:
    """A stage of the run, else a checkpoint folder."""
    stage = data.run.run_dir / name
    if (stage / "config.json").is_file():
        return stage
    if (Path(name) / "config.json").is_file():
        return Path(name)
    raise SystemExit(f"--ramps {name}: neither a stage of {data.run.run_dir} nor a checkpoint folder.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, stage_help="the run's final one; its [CLS] states are probed")
    parser.add_argument("--ramps", nargs="*", default=[], help="Stages of the run, or checkpoints, with off-ramps.")
    parser.add_argument("--train-examples", type=int, default=2000, help="Training examples the probes learn from.")
    parser.add_argument("--output", help="Where to write the JSON.")
    args = parse_or_show(parser, table, required=("run", "output"))
    if args is None:
        return

    data = run_splits(args.run, args.max_eval_samples)
    checkpoint = data.checkpoint(args.stage)
    tokenizer = load_tokenizer(checkpoint)
    layers = layer_rows(data, load_model(checkpoint), tokenizer, args.train_examples)
    metric = main_metric(layers[0]["probe_dev_scores"])
    dev = data.batches("dev", tokenizer, BATCH_SIZE)  # the ramp checkpoints share the model's tokenizer
    ramps = {}
    for name in args.ramps:
        ramp_model = load_model(ramp_checkpoint(data, name))
        ramps[name] = {"ramp_type": ramp_model.config.ramp_type} | {
            f"width_{width}": ramp_scores(ramp_model, data, dev, width, metric) for width in RAMP_WIDTHS
        }
    report = run_record(
        task=data.task.name,
        model=str(checkpoint),
        metric=metric,
        train_examples=min(args.train_examples, len(data.splits["train"])),
        dev_examples=len(data.splits["dev"]),
        layers=layers,
        ramps=ramps,
    )
    write_report(args.output, report)
    print(table(report))


def probe_score(row: dict, metric: str) -> float:
    """The probe's dev metric (files made before hold only its accuracy)."""
    return row["probe_dev_scores"][metric] if "probe_dev_scores" in row else row["probe_dev_accuracy"]


def table(report: dict) -> str:
    """Per layer: [CLS] spread and norm, the probe's dev metric, and each ramp checkpoint's (with its ramp type) at
    each width (points)."""
    metric = report.get("metric", "accuracy")  # files made before report accuracy
    columns = [(name, width) for name, ramp in report["ramps"].items() for width in ramp if width.startswith("width_")]
    header = ["layer", "[CLS] spread", "[CLS] norm", f"probe {metric}"]
    header += [f"{name} ({report['ramps'][name]['ramp_type']}) {width.replace('_', ' ')}" for name, width in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    last = report["layers"][-1]["layer"]
    for row in report["layers"]:
        layer = str(row["layer"])
        ramps = [report["ramps"][name][width].get(layer) for name, width in columns]
        # The embeddings' output is layer 0; the ramp columns' last layer is the model's own classifier.
        label = {0: f"{layer} (embeddings)", last: f"{layer} (final head)"}.get(row["layer"], layer)
        cells = [label, f"{row['cls_spread']:.4f}", f"{row['cls_norm']:.2f}", f"{100 * probe_score(row, metric):.1f}"]
        cells += ["" if value is None else f"{100 * value:.1f}" for value in ramps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
