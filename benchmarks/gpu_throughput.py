"""Throughput on a lent H100/H200 in bf16 at batch 256: the same ratios as the CPU tables, measured as medians of
interleaved rounds with the GPU synchronised after each variant.
- Classification (`dynamic_throughput.py`'s variants): every static sub-network, the batched early-exit engine, the
  gated engine and GEEP; 7 rounds over the whole packed dev set.
- Extractive QA (SQuAD; `squad_throughput.py`'s batches: a question's windows share a batch and exit together):
  every static sub-network (each width x depth of the QA config) and, where the checkpoint has off-ramps, the QA
  engine (the gated one too, where it has gates) at each `--qa-thresholds`; 5 rounds of batches of at most 256
  windows over every packed dev window. SQuAD v1.1's whole dev set (10,570 questions, about 10,800 windows of up to
  384 tokens, 180 on average) is about 60 full-model passes of about 45 TFLOP: well under a minute on an H200 by
  that estimate (not yet measured there), so measuring both keeps to about 5 minutes.
Every row is a speed-up over its full model next to the FLOPs-ideal one and names its `head`; the QA rows are under
the JSON's `qa` key (`rows` stays the classification rows, as before).

The device image has torch and transformers but no `datasets` and no package registry, and at most 64 MiB travels
with a call, the repository's own few MiB included. So this runs in two steps: `--pack` (here) writes a run's dynamic
checkpoint in bf16 and its dev (and GEEP training) examples, already tokenized, as parquet files into a folder to
carry, and with `--qa-run` a QA run's checkpoint in bf16 and its dev windows (input_ids, attention_mask,
token_type_ids and each window's question id) into the folder's `qa/`; `--packed` (there) reads them with pyarrow
and measures what the folder holds. A MiniLM-L6 (22.7M parameters) is about 44 MiB in bf16, so a classification pack
(about 45 MiB) and a QA pack (about 47 MiB with SQuAD's whole dev set) never travel in one call: pack the QA run into
a folder of its own (`--pack --qa-run` without `--run`) and measure it in a second call right after the first (the
machine still warm). `--pack` prints the sizes and says when the two must travel apart. Without CUDA, `--packed` runs
a tiny CPU fallback (fp32, batch 8, one round; the first 16 examples, the first 8 QA windows) that checks the script
end to end and prints what it would measure on a GPU.

    python benchmarks/gpu_throughput.py --pack --run runs/dynamic/sst2 --stage gates --into device_pack
    python benchmarks/gpu_throughput.py --pack --qa-run runs/squad --qa-stage dynamic/gates --into device_pack_qa
    PYTHONPATH=src python benchmarks/gpu_throughput.py --packed device_pack --output $OUT/gpu_throughput.json
    PYTHONPATH=src python benchmarks/gpu_throughput.py --packed device_pack_qa --output $OUT/gpu_throughput_qa.json
    python benchmarks/gpu_throughput.py --show benchmarks/results/gpu_throughput_sst2.json
"""

import argparse
import json
from pathlib import Path

import torch
from common import RunSplits, add_run_arguments, parse_or_show, run_record, run_splits, write_report
from squad_setup import load_dev
from squad_throughput import THRESHOLDS, question_groups, run_engine, run_static

from transformers_flex import FlexBertForQuestionAnswering, FlexBertForSequenceClassification, subnet_flops
from transformers_flex.evaluation import MODEL_INPUTS, interleaved_medians, question_batches, subnet_grid
from transformers_flex.inference import bucketed_forward, fit_exit_predictor
from transformers_flex.utils import load_tokenizer

PACKED_SPLITS = ("dev", "train")  # train: the examples GEEP's token table is fitted on
GPU_SETTINGS = {"batch_size": 256, "rounds": 7, "dtype": "bfloat16", "max_examples": None}
FALLBACK_SETTINGS = {"batch_size": 8, "rounds": 1, "dtype": "float32", "max_examples": 16}
QA_GPU_SETTINGS = {"batch_size": 256, "rounds": 5, "dtype": "bfloat16", "max_windows": None}
QA_FALLBACK_SETTINGS = {"batch_size": 8, "rounds": 1, "dtype": "float32", "max_windows": 8}
PACK_LIMIT_MIB = 60  # a device call carries 64 MiB, the repository's own files (a few MiB) included
WOULD_MEASURE = (
    "On a GPU this measures, in bf16 at batch 256 over the whole packed dev set: examples/s of the full model and "
    "the speed-up (with its FLOPs-ideal value) of every static sub-network, the early-exit engine and the gated "
    "engine at each threshold, and GEEP; for a packed QA run, windows/s of the full QA model and the speed-up of "
    "every static sub-network and of the QA engines at each QA threshold."
)


def save_packed_model(model_class, data: RunSplits, run: str, stage: str | None, folder: Path) -> Path:
    """The checkpoint of `stage` (None: the run's final one) in bf16 with its tokenizer into `folder/model`, and where
    it came from into `folder/pack.json`; returns the checkpoint's folder."""
    checkpoint = data.checkpoint(stage)
    model_class.from_pretrained(checkpoint, dtype=torch.bfloat16).save_pretrained(folder / "model")
    load_tokenizer(checkpoint).save_pretrained(folder / "model")
    source = {"run": run, "stage": stage or data.run.final_stage, "task": data.run.results["task"]}
    (folder / "pack.json").write_text(json.dumps(source, indent=2) + "\n")
    return checkpoint


def pack_classification(args, folder: Path) -> None:
    """The run's checkpoint in bf16 and its dev/train examples tokenized, into `folder`."""
    data = run_splits(args.run, args.max_eval_samples)
    checkpoint = save_packed_model(FlexBertForSequenceClassification, data, str(args.run), args.stage, folder)
    tokenizer = load_tokenizer(checkpoint)
    limits = {"dev": args.max_eval_samples, "train": args.geep_train_examples}
    for split in PACKED_SPLITS:
        examples = data.splits[split]
        if split == "train":
            examples = examples.shuffle(seed=0)  # GEEP's table from a random slice, as the CPU scripts take it
        if limits[split] is not None:
            examples = examples.select(range(min(limits[split], len(examples))))
        tokenized = data.task.tokenize(examples, tokenizer, data.max_seq_length)
        tokenized.to_parquet(str(folder / f"{split}.parquet"))


def pack_qa(args, folder: Path) -> None:
    """The QA run's checkpoint in bf16 and its dev windows tokenized as the run cut them, with each window's question
    (`example_id`), into `folder`."""
    data = run_splits(args.qa_run, args.qa_max_eval_samples, whole_dev=True)  # SQuAD: the whole dev split
    checkpoint = save_packed_model(FlexBertForQuestionAnswering, data, str(args.qa_run), args.qa_stage, folder)
    features = load_dev(data, checkpoint).features
    columns = [name for name in (*MODEL_INPUTS, "example_id") if name in features.column_names]
    features.select_columns(columns).to_parquet(str(folder / "dev.parquet"))  # no offsets: nothing is decoded there


def folder_mib(folder: Path) -> float:
    """The size of every file under `folder`, in MiB (0 where there is no folder)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def pack(args) -> None:
    """`--run` into `args.into` and `--qa-run` into its `qa/` subfolder; prints their sizes against a call's limit."""
    folder = Path(args.into)
    if args.run:
        pack_classification(args, folder)
    if args.qa_run:
        pack_qa(args, folder / "qa")
    total, qa = folder_mib(folder), folder_mib(folder / "qa")
    parts = [f"classification {total - qa:.1f}"] if args.run else []
    parts += [f"QA {qa:.1f} in qa/"] if args.qa_run else []
    print(f"packed {folder}: {total:.1f} MiB ({', '.join(parts)})")
    if total <= PACK_LIMIT_MIB:
        print("It fits in one device call (at most 64 MiB travel, the repository included).")
    elif args.run and args.qa_run:
        print(
            f"Over {PACK_LIMIT_MIB} MiB: a device call cannot carry it (64 MiB, the repository included). The QA pack "
            "must travel in a separate call: pack --qa-run into a folder of its own (--pack without --run) and "
            "measure each folder in its own call."
        )
    else:
        print(f"Over {PACK_LIMIT_MIB} MiB: a device call cannot carry it; pack fewer examples.")


def read_columns(path: Path, max_rows: int | None) -> dict[str, list]:
    """The first `max_rows` rows (None: all) of a packed parquet file, column by column (pyarrow only)."""
    import pyarrow.parquet as pq

    return {name: values[:max_rows] for name, values in pq.read_table(path).to_pydict().items()}


def padded_batch(columns: dict[str, list], rows: list[int], device) -> dict[str, torch.Tensor]:
    """The model inputs of `rows` (unpadded token lists) zero-padded to the longest of them, on `device`."""
    names = [name for name in MODEL_INPUTS if name in columns]
    length = max(len(columns["input_ids"][index]) for index in rows)
    batch = {name: torch.zeros(len(rows), length, dtype=torch.long) for name in names}
    for row, index in enumerate(rows):
        for name in names:
            values = columns[name][index]
            batch[name][row, : len(values)] = torch.tensor(values)
    return {name: tensor.to(device) for name, tensor in batch.items()}


def packed_batches(path: Path, batch_size: int, max_examples: int | None, device) -> list[dict]:
    """Tokenized examples from parquet, sorted by length and padded per batch (length bucketing)."""
    columns = read_columns(path, max_examples)
    ids = columns["input_ids"]
    order = sorted(range(len(ids)), key=lambda index: len(ids[index]))
    return [
        padded_batch(columns, order[start : start + batch_size], device) for start in range(0, len(ids), batch_size)
    ]


def packed_qa_batches(path: Path, batch_size: int, max_windows: int | None, device) -> list[dict]:
    """Packed dev windows in batches of about `batch_size` that keep each question's windows together, each batch
    with its rows' question as `exit_groups` (as squad_throughput.py batches them)."""
    columns = read_columns(path, max_windows)
    groups = torch.tensor(question_groups(columns["example_id"]))
    return [
        {**padded_batch(columns, rows, device), "exit_groups": groups[rows].to(device)}
        for rows in question_batches(columns, batch_size)
    ]


def synchronised(run, device):
    """`run` followed by a wait for the GPU, so the wall clock covers the kernels it queued."""

    def timed():
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return timed


def static_variants(model, batches: list[dict], head: str) -> tuple[dict, dict, float]:
    """Runners of every static sub-network, the FLOPs-ideal speed-up of each (full-model FLOPs / its FLOPs at the
    batches' real lengths), and the full model's FLOPs."""
    lengths = torch.cat([batch["attention_mask"].sum(dim=1) for batch in batches]).tolist()

    def flops(width: float, depth: float) -> float:
        return sum(subnet_flops(model.config, width, depth, length, head) for length in lengths)

    full_flops = flops(1.0, 1.0)
    runners, ideal = {}, {}
    for width, depth in subnet_grid(model.config):
        runners["static", width, depth] = lambda w=width, d=depth: run_static(model, batches, w, d)
        ideal["static", width, depth] = full_flops / flops(width, depth)
    return runners, ideal, full_flops


def engine_variants(model, batches: list[dict], thresholds: list[float], full_flops: float) -> tuple[dict, dict]:
    """Runners of the early-exit engine (and the gated engine, where the model has gates) at each threshold, and
    the FLOPs-ideal speed-up of each from the FLOPs an untimed run spends."""
    engines = {"engine": False, "gated": True} if len(model.width_gates) else {"engine": False}
    runners, ideal = {}, {}
    for threshold in thresholds:
        for name, use_gates in engines.items():
            runners[name, threshold] = lambda t=threshold, g=use_gates: run_engine(model, batches, t, g)
            outputs = runners[name, threshold]()  # the untimed run
            ideal[name, threshold] = full_flops / float(sum(out.flops.sum() for out in outputs))
    return runners, ideal


def variants(model, batches, train_batches, thresholds: list[float]) -> tuple[dict, dict]:
    """Runners of every classification variant, and the FLOPs-ideal speed-up of each."""
    runners, ideal, full_flops = static_variants(model, batches, "sequence_classification")
    engine_runners, engine_ideal = engine_variants(model, batches, thresholds, full_flops)
    runners, ideal = runners | engine_runners, ideal | engine_ideal
    for threshold in thresholds:
        predictor = fit_exit_predictor(model, train_batches, threshold=threshold)
        predicted = [predictor.predict(batch["input_ids"], batch["attention_mask"]) for batch in batches]
        outputs = geep(model, batches, predicted)
        ideal["geep", threshold] = full_flops / float(sum(out.flops.sum() for out in outputs))
        runners["geep", threshold] = lambda p=predicted: geep(model, batches, p)
    return runners, ideal


def qa_variants(model, batches: list[dict], thresholds: list[float]) -> tuple[dict, dict]:
    """Runners of every static QA sub-network and, where the model has off-ramps, the QA engines; their FLOPs-ideal
    speed-ups."""
    runners, ideal, full_flops = static_variants(model, batches, "question_answering")
    if model.config.exit_layers:  # the engine exits at off-ramps: none, no engine to time
        engine_runners, engine_ideal = engine_variants(model, batches, thresholds, full_flops)
        runners, ideal = runners | engine_runners, ideal | engine_ideal
    return runners, ideal


def geep(model, batches, predicted) -> list:
    """GEEP: each batch split by predicted exit layer, each part run as a full batch to exactly that layer."""
    return [
        bucketed_forward(model, batch["input_ids"], layers, batch["attention_mask"], batch.get("token_type_ids"))
        for batch, layers in zip(batches, predicted)
    ]


def timed_rows(runners: dict, ideal: dict, rounds: int, device, head: str) -> tuple[list[dict], float]:
    """Every variant timed (medians of interleaved rounds after one warm-up): one row each, its speed-up over the
    full static model next to the FLOPs-ideal one; and the full model's seconds."""
    timed = {key: synchronised(run, device) for key, run in runners.items()}
    seconds = interleaved_medians(timed, rounds=rounds, warmup=1)
    full = seconds["static", 1.0, 1.0]
    rows = []
    for key, spent in seconds.items():
        variant, *setting = key
        names = ("width", "depth") if variant == "static" else ("threshold",)
        row = {"head": head, "variant": variant, **dict(zip(names, setting))}
        row |= {"flops_ideal_speedup": ideal[key], "measured_speedup": full / spent}
        row["fraction_of_ideal"] = row["measured_speedup"] / row["flops_ideal_speedup"]
        rows.append(row)
    return rows, full


def chosen_settings(args, gpu_settings: dict, fallback_settings: dict, device) -> dict:
    """The GPU or the fallback settings, with `--batch-size` and `--rounds` where given."""
    settings = gpu_settings if device.type == "cuda" else fallback_settings
    return settings | {
        "batch_size": args.batch_size or settings["batch_size"],
        "rounds": args.rounds or settings["rounds"],
    }


def load_packed(model_class, folder: Path, dtype: str, device):
    """A packed checkpoint in `dtype` on `device`, in eval mode."""
    return model_class.from_pretrained(folder, dtype=getattr(torch, dtype)).to(device).eval()


def classification_report(args, folder: Path, device) -> dict:
    """Every classification variant timed on the packed dev set: the report's keys for it."""
    settings = chosen_settings(args, GPU_SETTINGS, FALLBACK_SETTINGS, device)
    model = load_packed(FlexBertForSequenceClassification, folder / "model", settings["dtype"], device)
    batches = packed_batches(folder / "dev.parquet", settings["batch_size"], settings["max_examples"], device)
    train_batches = packed_batches(folder / "train.parquet", settings["batch_size"], settings["max_examples"], device)
    runners, ideal = variants(model, batches, train_batches, args.thresholds)
    rows, full = timed_rows(runners, ideal, settings["rounds"], device, "sequence_classification")
    examples = sum(len(batch["input_ids"]) for batch in batches)
    source = json.loads((folder / "pack.json").read_text())
    return {**source, **settings, "dev_examples": examples, "full_examples_per_second": examples / full, "rows": rows}


def qa_report(args, folder: Path, device) -> dict:
    """Every QA variant timed on the packed dev windows: the report's `qa` section."""
    settings = chosen_settings(args, QA_GPU_SETTINGS, QA_FALLBACK_SETTINGS, device)
    model = load_packed(FlexBertForQuestionAnswering, folder / "model", settings["dtype"], device)
    batches = packed_qa_batches(folder / "dev.parquet", settings["batch_size"], settings["max_windows"], device)
    runners, ideal = qa_variants(model, batches, args.qa_thresholds)
    rows, full = timed_rows(runners, ideal, settings["rounds"], device, "question_answering")
    windows = sum(len(batch["input_ids"]) for batch in batches)
    questions = sum(len(batch["exit_groups"].unique()) for batch in batches)  # no question spans two batches
    source = json.loads((folder / "pack.json").read_text())
    counts = {"dev_questions": questions, "dev_windows": windows, "full_windows_per_second": windows / full}
    return {**source, **settings, **counts, "rows": rows}


def measure(args) -> None:
    """Time what the packed folder holds (classification, QA or both), write the JSON and print its tables."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        print(f"No CUDA here: a tiny CPU fallback ({FALLBACK_SETTINGS}; QA {QA_FALLBACK_SETTINGS}). {WOULD_MEASURE}")
    folder = Path(args.packed)
    report = run_record(fallback=device.type != "cuda")
    with torch.inference_mode():
        if (folder / "model").is_dir():
            report |= classification_report(args, folder, device)
        if (folder / "qa").is_dir():
            report["qa"] = qa_report(args, folder / "qa", device)
    write_report(args.output, report)
    print(table(report))


def speedup_table(heading: str, rows: list[dict]) -> list[str]:
    """`heading`, then one Markdown line per row: its setting, FLOPs-ideal and measured speed-ups."""
    lines = [
        heading,
        "| variant | setting | FLOPs-ideal speed-up | measured speed-up | fraction of ideal |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        setting = (
            f"width {row['width']}, depth {row['depth']}" if row["variant"] == "static" else f"θ {row['threshold']}"
        )
        lines.append(
            f"| {row['variant']} | {setting} | {row['flops_ideal_speedup']:.2f} | {row['measured_speedup']:.2f} "
            f"| {row['fraction_of_ideal']:.2f} |"
        )
    return lines


def table(report: dict) -> str:
    """The classification table and the QA one, for those the report holds (older reports: classification only)."""
    where = "CPU fallback (tiny; not a GPU result)" if report["fallback"] else report["machine"]["device"]
    lines = []
    if "rows" in report:
        heading = (
            f"{report['task']} dev, {report['dev_examples']} examples, batch {report['batch_size']}, "
            f"{report['dtype']}, {where}: full model {report['full_examples_per_second']:.0f} examples/s"
        )
        lines += speedup_table(heading, report["rows"])
    if "qa" in report:
        qa = report["qa"]
        heading = (
            f"{qa['task']} dev, {qa['dev_questions']} questions in {qa['dev_windows']} windows, batch "
            f"{qa['batch_size']}, {qa['dtype']}, {where}: full QA model {qa['full_windows_per_second']:.0f} windows/s"
        )
        lines += ([""] if lines else []) + speedup_table(heading, qa["rows"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, stage_help="the run's final one; it needs off-ramps")
    parser.add_argument("--qa-run", help="A finished extractive-QA run to pack too, into the pack's qa/ (here).")
    parser.add_argument("--qa-stage", help="The QA checkpoint: a stage or a folder in the QA run (default: final).")
    parser.add_argument("--qa-max-eval-samples", type=int, help="Pack only the first dev questions (default: all).")
    parser.add_argument("--pack", action="store_true", help="Pack --run and/or --qa-run into --into (here).")
    parser.add_argument("--into", help="Folder to pack into.")
    parser.add_argument("--geep-train-examples", type=int, default=2000, help="Training examples packed for GEEP.")
    parser.add_argument("--packed", help="A packed folder to measure (there).")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.4], help="Entropy thresholds.")
    parser.add_argument("--qa-thresholds", type=float, nargs="+", default=THRESHOLDS, help="QA entropy thresholds.")
    parser.add_argument("--batch-size", type=int, help="Default 256 on a GPU (QA too), 8 in the CPU fallback.")
    parser.add_argument("--rounds", type=int, help="Default 7 on a GPU (QA 5), 1 in the CPU fallback.")
    parser.add_argument("--output", help="Result JSON (measuring).")
    args = parse_or_show(parser, table, required=())
    if args is None:
        return
    if args.pack:
        if not ((args.run or args.qa_run) and args.into):
            parser.error("--pack needs --into and --run, --qa-run or both.")
        pack(args)
    elif args.packed and args.output:
        measure(args)
    else:
        usage = "--pack [--run RUN] [--qa-run QA_RUN] --into FOLDER, or --packed FOLDER --output JSON"
        parser.error(f"Either {usage} (or --show JSON).")


if __name__ == "__main__":
    main()
