"""Evaluating and timing the static sub-networks of a FlexBert model."""

import os
import platform
import statistics
import time
from collections.abc import Callable, Hashable, Iterable, Mapping

import torch
from tqdm.auto import tqdm

from .flops import paper_flops, subnet_flops
from .metrics import accuracy
from .modeling_flexbert import FlexBertPreTrainedModel
from .squad import postprocess_predictions, squad_metrics, squad_references

Batch = Mapping[str, torch.Tensor]


def subnet_grid(config, full_depth_only: bool = False) -> list[tuple[float, float]]:
    """Every (width, depth) pair of the config, depth descending then width descending (DynaBERT's order)."""
    widths = sorted(config.width_mults, reverse=True)
    depths = [1.0] if full_depth_only else sorted(config.depth_mults, reverse=True)
    return [(width, depth) for depth in depths for width in widths]


@torch.inference_mode()
def predict(model: FlexBertPreTrainedModel, batches: Iterable[Batch]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Logits, labels and real (unpadded) lengths of every example, for the active sub-network."""
    logits, labels, lengths = [], [], []
    for batch in batches:
        inputs = {key: value.to(model.device) for key, value in batch.items() if key != "labels"}
        logits.append(model(**inputs).logits.float().cpu())
        labels.append(batch["labels"])
        lengths.extend(batch["attention_mask"].sum(dim=1).tolist())
    return torch.cat(logits), torch.cat(labels), lengths


def evaluate_subnets(
    model: FlexBertPreTrainedModel,
    batches: Iterable[Batch],
    subnets: list[tuple[float, float]],
    show_progress: bool = True,
) -> list[dict]:
    """Dev accuracy and FLOPs of each (width, depth) sub-network of a sequence classifier.

    `mean_flops` averages per-example FLOPs at each example's real length; `paper_flops` is the papers' figure
    (linear layers only, padded length 128).
    """
    rows = []
    was_training = model.training
    model.eval()
    for width, depth in tqdm(subnets, desc="evaluate subnets", disable=not show_progress):
        with model.subnet(width=width, depth=depth):
            logits, labels, lengths = predict(model, batches)
        flops_of_length = {length: subnet_flops(model.config, width, depth, length) for length in set(lengths)}
        rows.append(
            {
                "width": width,
                "depth": depth,
                "accuracy": accuracy(logits.argmax(dim=-1).numpy(), labels.numpy()),
                "mean_flops": statistics.fmean(flops_of_length[length] for length in lengths),
                "paper_flops": paper_flops(model.config, width, depth),
            }
        )
    model.train(was_training)
    return rows


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@torch.inference_mode()
def predict_spans(
    model: FlexBertPreTrainedModel, features, collate: Callable[[list], Batch], batch_size: int = 64, **subnet
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Start and end logits of every QA window of `features` (each trimmed to its real length), in the features'
    order; windows run in length-sorted batches so that each batch pads little. `subnet`: `width=`, `depth=`."""
    columns = {key: features[key] for key in MODEL_INPUTS if key in features.column_names}  # read once, not per row
    order = sorted(range(len(features)), key=lambda i: sum(columns["attention_mask"][i]))
    starts: list[torch.Tensor | None] = [None] * len(features)
    ends: list[torch.Tensor | None] = [None] * len(features)
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        batch = collate([{key: values[i] for key, values in columns.items()} for i in rows])
        inputs = {key: value.to(model.device) for key, value in batch.items()}
        output = model(**inputs, **subnet, dynamic=False)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        for row, length, start, end in zip(
            rows, lengths, output.start_logits.float().cpu(), output.end_logits.float().cpu()
        ):
            starts[row], ends[row] = start[:length], end[:length]
    return starts, ends


def evaluate_qa_subnets(
    model: FlexBertPreTrainedModel,
    examples,
    features,
    collate: Callable[[list], Batch],
    subnets: list[tuple[float, float]],
    batch_size: int = 64,
    show_progress: bool = True,
) -> list[dict]:
    """Official SQuAD v1.1 exact match and F1 of each (width, depth) sub-network of an extractive QA model on the
    eval `features` (windows) of `examples`, with FLOPs per question: the sum over its windows at their real
    lengths (`mean_flops`), and the papers' figure per window (`paper_flops`). Rows also carry the answers."""
    references = squad_references(examples)
    lengths = [sum(mask) for mask in features["attention_mask"]]
    windows_of: dict[str, list[int]] = {}
    for row, example_id in enumerate(features["example_id"]):
        windows_of.setdefault(example_id, []).append(row)
    rows = []
    model.eval()
    for width, depth in tqdm(subnets, desc="evaluate QA subnets", disable=not show_progress):
        starts, ends = predict_spans(model, features, collate, batch_size, width=width, depth=depth)
        answers = postprocess_predictions(examples, features, starts, ends)
        window_flops = {n: subnet_flops(model.config, width, depth, n, "question_answering") for n in set(lengths)}
        question_flops = [sum(window_flops[lengths[row]] for row in windows) for windows in windows_of.values()]
        rows.append(
            {
                "width": width,
                "depth": depth,
                **squad_metrics(answers, references),
                "mean_flops": statistics.fmean(question_flops),
                "paper_flops": paper_flops(model.config, width, depth, "question_answering"),
                "answers": answers,
            }
        )
    return rows


def question_batches(features, batch_size: int) -> list[list[int]]:
    """Rows of `features` in batches of about `batch_size` windows that never split a question's windows (they exit
    together), questions ordered by their longest window so each batch pads little."""
    lengths = [sum(mask) for mask in features["attention_mask"]]
    windows_of: dict[str, list[int]] = {}
    for row, example_id in enumerate(features["example_id"]):
        windows_of.setdefault(example_id, []).append(row)
    questions = sorted(windows_of.values(), key=lambda rows: max(lengths[row] for row in rows))
    batches, current = [], []
    for rows in questions:
        if current and len(current) + len(rows) > batch_size:
            batches.append(current)
            current = []
        current += rows
    return batches + ([current] if current else [])


@torch.inference_mode()
def evaluate_qa_dynamic(
    model: FlexBertPreTrainedModel,
    examples,
    features,
    collate: Callable[[list], Batch],
    batch_size: int = 64,
    **engine,
) -> dict:
    """Official SQuAD v1.1 exact match and F1 of a QA model's dynamic engine (`engine`: `criterion`, `threshold`,
    `width`, ...), the windows of each question exiting together (`exit_groups`), with the mean FLOPs per question
    (its windows' FLOPs as the engine counted them), the mean exit layer of the windows, and the answers."""
    columns = {key: features[key] for key in MODEL_INPUTS if key in features.column_names}  # read once, not per row
    question_of = {example_id: index for index, example_id in enumerate(dict.fromkeys(features["example_id"]))}
    groups = [question_of[example_id] for example_id in features["example_id"]]
    starts, ends = [None] * len(features), [None] * len(features)
    flops, exit_layers = [0.0] * len(features), [0] * len(features)
    model.eval()
    for rows in question_batches(features, batch_size):
        batch = collate([{key: values[i] for key, values in columns.items()} for i in rows])
        inputs = {key: value.to(model.device) for key, value in batch.items()}
        output = model.dynamic_forward(**inputs, exit_groups=torch.tensor([groups[i] for i in rows]), **engine)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        for position, (row, length) in enumerate(zip(rows, lengths)):
            starts[row] = output.start_logits[position, :length].float().cpu()
            ends[row] = output.end_logits[position, :length].float().cpu()
            flops[row], exit_layers[row] = float(output.flops[position]), int(output.exit_layers[position])
    answers = postprocess_predictions(examples, features, starts, ends)
    question_flops = [0.0] * len(question_of)
    for row, group in enumerate(groups):
        question_flops[group] += flops[row]
    return {
        **squad_metrics(answers, squad_references(examples)),
        "mean_flops": statistics.fmean(question_flops),
        "mean_exit_layer": statistics.fmean(exit_layers),
        "answers": answers,
    }


def length_bucketed_batches(dataset, collate: Callable[[list], Batch], batch_size: int) -> list[Batch]:
    """The dataset's examples sorted by length and cut into batches, so each batch pads little (length bucketing)."""
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    return [
        collate([dataset[i] for i in order[start : start + batch_size]]) for start in range(0, len(order), batch_size)
    ]


@torch.no_grad()
def dynamic_predict(model, batches: Iterable[Batch], **engine) -> dict[str, torch.Tensor]:
    """Logits, labels, exit layers, layer widths and FLOPs of every example under `model.dynamic_forward(**engine)`
    (engine settings: `criterion`, `threshold`, `use_gates`)."""
    parts: dict[str, list[torch.Tensor]] = {
        "logits": [],
        "labels": [],
        "exit_layers": [],
        "layer_widths": [],
        "flops": [],
    }
    for batch in batches:
        inputs = {key: value.to(model.device) for key, value in batch.items() if key != "labels"}
        output = model.dynamic_forward(**inputs, **engine)
        for key in parts:
            parts[key].append(batch["labels"] if key == "labels" else output[key].cpu())
    return {key: torch.cat(values) for key, values in parts.items()}


def interleaved_medians(
    runners: Mapping[Hashable, Callable[[], object]], rounds: int, warmup: int = 1, show_progress: bool = False
) -> dict:
    """Median wall-clock seconds of each runner; every round runs all of them, so noise hits them alike."""
    times: dict[Hashable, list[float]] = {key: [] for key in runners}
    for round_index in tqdm(range(warmup + rounds), desc="timing rounds", disable=not show_progress):
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            if round_index >= warmup:
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


@torch.inference_mode()
def subnet_latencies(
    model: FlexBertPreTrainedModel, batch: Batch, subnets: list[tuple[float, float]], rounds: int = 5
) -> dict[tuple[float, float], float]:
    """Median seconds of one forward pass of `batch` through each sub-network (sliced from the supernet)."""
    inputs = {key: value.to(model.device) for key, value in batch.items() if key != "labels"}

    def runner(width: float, depth: float) -> Callable[[], object]:
        def run() -> object:
            return model(**inputs, width=width, depth=depth)  # the sub-network travels with the call

        return run

    return interleaved_medians({subnet: runner(*subnet) for subnet in subnets}, rounds=rounds)


def machine_description() -> dict:
    """What a timing ran on: the device (GPU name, else the CPU's model name), cores, torch version and threads."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # not Linux: platform's answer
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu
    return {"device": device, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


__all__ = [
    "dynamic_predict",
    "evaluate_qa_dynamic",
    "evaluate_qa_subnets",
    "evaluate_subnets",
    "interleaved_medians",
    "length_bucketed_batches",
    "machine_description",
    "predict",
    "predict_spans",
    "question_batches",
    "subnet_grid",
    "subnet_latencies",
]
