"""The benchmark suite at three budgets (`make bench BUDGET=smoke|cpu|gpu`).

- `smoke`: every benchmark script on tiny runs (two training steps, 32 tokens, a few dev examples), each writing its
  JSON into a scratch folder: minutes, part of `make test`, and it fails when any script breaks. The tiny runs are
  trained here unless `--classification-run` / `--qa-run` name finished ones.
- `cpu`: the full CPU protocol, the commands that made the committed results (hours on 2 cores; resumable: a run
  that finished is read back). Subsets are stated in each command.
- `gpu`: `benchmarks/gpu_throughput.py`, the throughput script for a lent H100/H200; on a machine without CUDA it
  runs its tiny CPU fallback and says what it would measure.

    python benchmarks/suite.py --budget smoke
    python benchmarks/suite.py --budget cpu --only fixed_size_baselines
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results"
# The smallest training budget that trains every stage (as the test suite's shared runs do).
TINY_TRAINING = "--max_steps 2 --per_device_train_batch_size 8 --max_seq_length 32 --importance_samples 8"
TINY_TRAINING += " --max_train_samples 32 --max_eval_samples 16 --use_cpu --report_to none --disable_tqdm true"
TINY_DYNAMIC = "--subnet_sampling sandwich --exit_layers 2 4 --gate_block_size 3 --ramps_learning_rate 1e-3"
# The ablations' pipelines (examples/run_glue_flex.py) at the same tiny size, one task and one seed.
TINY_ABLATION = "--max_steps 2 --max_train_samples 16 --max_eval_samples 8 --importance_samples 8 --max_seq_length 32"
TINY_ABLATION += " --per_device_train_batch_size 8 --num_random_subnets 0 --use_cpu --disable_tqdm true"
TINY_RUNS = {
    "classification_run": f"--task_name mrpc {TINY_TRAINING} {TINY_DYNAMIC}",
    "qa_run": f"--task_name squad {TINY_TRAINING.replace('32 --imp', '128 --doc_stride 32 --imp')} {TINY_DYNAMIC}",
}
# script -> its smoke command's arguments: {classification_run} and {qa_run} are the tiny runs, {out} the scratch
# folder, {results} the committed results (scripts that read JSON only).
SMOKE = {
    "deploy_tradeoffs": "--run {classification_run} --subnets 1.0,1.0 0.5,0.5 --rounds 1 --batch-size 2 "
    "--seq-length 16 --max-eval-samples 8 --output {out}/deploy_tradeoffs.json",
    "budget_search": "--run {classification_run_copy} --budgets 0.7 --seeds 0 1 --heldout-samples 8 "
    "--max-eval-samples 8 --output {out}/budget_search.json",
    "fixed_size_baselines": "--task_name mrpc --output_dir {out}/baselines --baselines first3_ft width0.5_kd "
    f"--output {{out}}/fixed_size_baselines.json {TINY_TRAINING}",
    "recipe_avenues": "--task_name mrpc --output_dir {out}/avenues --avenues sandwich_final prefix_ramps augmented "
    f"--output {{out}}/recipe_avenues.json {TINY_TRAINING}",
    "method_comparison": "--flexible {results}/glue_flex_mrpc_seed42.json --baselines "
    "{results}/baselines_mrpc_seed42.json --dynamic {results}/dynamic_tradeoffs_mrpc.json --dynabert "
    "{results}/grafting_ablation.json --avenues {results}/avenues_mrpc_seed42.json "
    "--output {out}/method_comparison.json",
    "seed_comparison": "--avenues {results}/avenues_mrpc_seed42.json --baselines {results}/baselines_mrpc_seed42.json "
    "--output {out}/seed_comparison.json",
    "render_results": "--check",
    "dynamic_tradeoffs": "--run {classification_run} --max-eval-samples 8 --geep-train-examples 8 --batch-size 8 "
    "--output {out}/dynamic_tradeoffs.json",
    "dynamic_throughput": "--run {classification_run} --max-eval-samples 8 --geep-train-examples 8 --batch-size 8 "
    "--thresholds 0.3 --rounds 1 --output {out}/dynamic_throughput.json",
    "engine_profile": "--run {classification_run} --max-eval-samples 8 --batch-size 8 --rounds 1 "
    "--output {out}/engine_profile.json",
    "dynamic_summary": "{results}/dynamic_tradeoffs_sst2.json {results}/dynamic_tradeoffs_stsb.json "
    "--output {out}/dynamic_summary.json",
    "compare_results": "tradeoffs {results}/dynamic_tradeoffs_sst2.json {results}/repro/dynamic_tradeoffs_sst2.json "
    "--output {out}/compare_results.json",
    "ramp_report": "--run {classification_run} --max-eval-samples 16 --output {out}/ramp_report.json",
    "layer_probe": "--run {classification_run} --ramps ramps gates --train-examples 16 --max-eval-samples 16 "
    "--output {out}/layer_probe.json",
    "summarize_glue": "{classification_run} --output {out}/summarize_glue",
    "subnet_latency": "--rounds 1 --warmup 0 --batch-size 2 --seq-length 16 --output {out}/subnet_latency.json",
    "training_cost": "--rounds 1 --batch-size 2 --max-length 16 --output {out}/training_cost.json",
    "squad_subnets": "--run {qa_run} --stage width_depth --max-eval-samples 4 --batch-size 16 "
    "--predictions-dir {out}/squad/pred --output {out}/squad/subnets.json",
    "squad_dynamic": "--run {qa_run} --max-eval-samples 4 --thresholds 1.0 --patience 1 --gated-thresholds 2.0 "
    "--output {out}/squad/dynamic.json",
    "squad_throughput": "--run {qa_run} --max-eval-samples 4 --rounds 1 --thresholds 1.0 --batch-size 8 "
    "--output {out}/squad/throughput_cpu.json",
    "plain_trainer_squad_baseline": "--run {qa_run} --max-train-samples 8 --max-eval-samples 4 --max-steps 1 "
    "--output {out}/squad/plain_trainer_seed42.json",
    "squad_summary": "--results-dir {out}/squad",
    "plain_trainer_baseline": "--run {classification_run} --output {out}/plain_trainer.json",
    "grafting_ablation": "--tasks mrpc --seeds 42 --output-dir {out}/grafting_runs --results {out}/grafting.json "
    f"-- {TINY_ABLATION}",
    "sampling_ablation": "--tasks mrpc --seeds 42 --width-runs {out}/grafting_runs --output-dir {out}/sampling_runs "
    f"--results {{out}}/sampling.json -- {TINY_ABLATION}",
    "gpu_throughput:pack": "--pack --run {classification_run} --qa-run {qa_run} --into {out}/device_pack "
    "--max-eval-samples 16 --geep-train-examples 16 --qa-max-eval-samples 4",
    "gpu_throughput": "--packed {out}/device_pack --output {out}/gpu_throughput.json",
}
# A smoke command that reads what another one wrote runs after it (in the same worker with --jobs).
RUNS_AFTER = {
    "gpu_throughput": "gpu_throughput:pack",
    "sampling_ablation": "grafting_ablation",
    # squad_summary reads the four SQuAD results: one chain.
    "squad_dynamic": "squad_subnets",
    "squad_throughput": "squad_dynamic",
    "plain_trainer_squad_baseline": "squad_throughput",
    "squad_summary": "plain_trainer_squad_baseline",
}
# The full CPU protocol: the commands that made the committed results, in the order their inputs need.
CPU = {
    "fixed_size_baselines": "--task_name mrpc --output_dir runs/bench/mrpc_seed42 --seed 42 --max_seq_length 128 "
    f"--output {RESULTS}/baselines_mrpc_seed42.json",
    "recipe_avenues": "--task_name mrpc --output_dir runs/avenues/mrpc_seed42 --seed 42 --max_seq_length 128 "
    f"--baselines {RESULTS}/baselines_mrpc_seed42.json --output {RESULTS}/avenues_mrpc_seed42.json "
    "--avenues sandwich prefix same_width_teacher sandwich_final longer prefix_ramps prefix_ramps_joint "
    "prefix_ramps_then_joint attention_kd",  # all12: §3's sampling ablation
    "fixed_size_baselines:rte": "--task_name rte --output_dir runs/avenues/rte_seed42 --seed 42 --max_seq_length 128 "
    f"--flexible {RESULTS}/glue_flex_rte_seed42.json --output {RESULTS}/baselines_rte_seed42.json",
    "recipe_avenues:rte": "--task_name rte --output_dir runs/avenues/rte_seed42 --seed 42 --max_seq_length 128 "
    f"--baselines {RESULTS}/baselines_rte_seed42.json --avenues sandwich sandwich_final "
    f"--output {RESULTS}/avenues_rte_seed42.json",
    # The dynamic model on the avenues' final stage, trained by docs/RESULTS.md §9's train_dynamic.sh step.
    "dynamic_tradeoffs:mrpc_final": "--run runs/dynamic_final/mrpc "
    f"--output {RESULTS}/dynamic_tradeoffs_mrpc_final.json",
    "dynamic_summary": " ".join(f"{RESULTS}/dynamic_tradeoffs_{task}.json" for task in ("sst2", "mrpc", "rte", "stsb"))
    + f" --output {RESULTS}/dynamic_summary.json",
    # Every method per task, from the JSON above (no training).
    "method_comparison:mrpc": f"--flexible {RESULTS}/glue_flex_mrpc_seed42.json --baselines "
    f"{RESULTS}/baselines_mrpc_seed42.json --dynamic {RESULTS}/dynamic_tradeoffs_mrpc.json --dynabert "
    f"{RESULTS}/grafting_ablation.json --avenues {RESULTS}/avenues_mrpc_seed42.json "
    f"--dynamic-final {RESULTS}/dynamic_tradeoffs_mrpc_final.json --output {RESULTS}/method_comparison_mrpc.json",
    "method_comparison:rte": f"--flexible {RESULTS}/glue_flex_rte_seed42.json --baselines "
    f"{RESULTS}/baselines_rte_seed42.json --dynamic {RESULTS}/dynamic_tradeoffs_rte.json --dynabert "
    f"{RESULTS}/grafting_ablation.json --avenues {RESULTS}/avenues_rte_seed42.json "
    f"--output {RESULTS}/method_comparison_rte.json",
    "method_comparison:sst2": f"--flexible {RESULTS}/glue_flex_sst2_seed42.json --dynamic "
    f"{RESULTS}/dynamic_tradeoffs_sst2.json --output {RESULTS}/method_comparison_sst2.json",
    "method_comparison:stsb": f"--flexible {RESULTS}/glue_flex_stsb_seed42.json --dynamic "
    f"{RESULTS}/dynamic_tradeoffs_stsb.json --teacher-tolerance 1e-8 --output {RESULTS}/method_comparison_stsb.json",
    # Batch size 1 (docs/RESULTS.md §1): warm weights, eager and compiled, two threads and one.
    "subnet_latency:b1": "--rounds 40 --calls-per-round 10 --batch-size 1 --seq-length 32 --compile "
    f"--output {RESULTS}/subnet_latency_b1.json",
    "subnet_latency:b1_1thread": "--rounds 40 --calls-per-round 10 --batch-size 1 --seq-length 32 --compile "
    f"--threads 1 --output {RESULTS}/subnet_latency_b1_1thread.json",
    "render_results": "",  # docs/RESULTS.md's tables and plots from the JSON
}
# Here: the script's CPU fallback on the tiny run. On a lent GPU, pack a real run here and measure there
# (docs/guide.md, "Benchmarks on a GPU").
GPU = {name: arguments for name, arguments in SMOKE.items() if name.startswith("gpu_throughput")}
BUDGETS = {"smoke": SMOKE, "cpu": CPU, "gpu": GPU}


def train_tiny_runs(folder: Path, given: dict[str, str | None], needed: set[str]) -> dict[str, str]:
    """The `needed` tiny runs: those given, the others trained into `folder` (a minute each)."""
    runs = {}
    for name, arguments in TINY_RUNS.items():
        if name not in needed:
            continue
        if given.get(name):
            runs[name] = given[name]
            continue
        runs[name] = str(folder / name)
        command = [str(Path(sys.executable).parent / "transformers-flex"), "train", "--output_dir", runs[name]]
        print(f"training the tiny {name} ...", flush=True)
        subprocess.run([*command, *shlex.split(arguments)], check=True, capture_output=True, text=True)
    return runs


def writable_copy(run_dir: str, copy: Path) -> str:
    """The run's record and final (gates) checkpoint in a folder of their own, for a script that writes to the run."""
    copy.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "run_config.json"):
        shutil.copy(Path(run_dir) / name, copy / name)
    shutil.copytree(Path(run_dir) / "gates", copy / "gates", ignore=shutil.ignore_patterns("checkpoint-*"))
    return str(copy)


def command_for(name: str, arguments: str, fields: dict[str, str]) -> list[str]:
    """The command line of one benchmark (`script` or `script:step`): a Python or shell script under benchmarks/."""
    path = ROOT / "benchmarks" / name.split(":")[0]
    argv = shlex.split(arguments.format(**fields))
    if path.with_suffix(".sh").is_file():
        return ["bash", str(path.with_suffix(".sh")), *argv]
    return [sys.executable, str(path.with_suffix(".py")), *argv]


def run_one(name: str, command: list[str], timeout: float | None, env: dict) -> tuple[bool, float, str]:
    """Run one command from the repository root: (passed, seconds, its output)."""
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        passed, output = result.returncode == 0, result.stdout + result.stderr
    except subprocess.TimeoutExpired as expired:
        passed, output = False, f"timed out after {timeout} s\n{expired.stderr or ''}"
    return passed, time.perf_counter() - start, output


def chains(names: list[str]) -> list[list[str]]:
    """The commands grouped so that each one runs after the command it reads from (RUNS_AFTER), in order."""
    grouped, chain_of = [], {}
    for name in names:
        chain = chain_of.get(RUNS_AFTER.get(name))
        if chain is None:  # reads nothing another command writes: a chain of its own
            chain = []
            grouped.append(chain)
        chain.append(name)
        chain_of[name] = chain
    return grouped


def run_all(commands: dict[str, list[str]], timeout: float | None, jobs: int = 1) -> dict[str, tuple[bool, float]]:
    """Run every command, `jobs` at a time; (passed, seconds) of each, printing failures' output as they end."""
    env = dict(os.environ)
    if jobs > 1:  # the commands share the cores: one thread each, as many as the cores allow
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    outcomes = {}

    def run_chain(chain: list[str]) -> None:
        for name in chain:
            passed, seconds, output = run_one(name, commands[name], timeout, env)
            outcomes[name] = passed, seconds
            print(
                f"--- {'ok  ' if passed else 'FAIL'} {name} ({seconds:.0f} s): {shlex.join(commands[name])}",
                flush=True,
            )
            if not passed:
                print(output[-4000:], flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run_chain, chains(list(commands))))  # list(): re-raise a worker's exception here
    return {name: outcomes[name] for name in commands}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=list(BUDGETS), default="smoke")
    parser.add_argument("--only", nargs="+", help="Run only these benchmarks (script names).")
    parser.add_argument("--classification-run", help="smoke: a finished tiny classification run to reuse.")
    parser.add_argument("--qa-run", help="smoke: a finished tiny extractive-QA run to reuse.")
    parser.add_argument("--out", help="smoke: the scratch folder (default: a temporary one).")
    parser.add_argument("--timeout", type=float, default=None, help="Seconds one command may take.")
    parser.add_argument("--jobs", type=int, default=1, help="Commands run at once (smoke: 2 on 2 cores halves it).")
    args = parser.parse_args()
    chosen = BUDGETS[args.budget]
    unknown = set(args.only or ()) - set(chosen)
    if unknown:
        raise SystemExit(f"--only {sorted(unknown)}: the {args.budget} budget has {sorted(chosen)}.")
    selected = {name: chosen[name] for name in args.only or chosen}
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        out.mkdir(parents=True, exist_ok=True)
        fields = {"out": str(out), "results": RESULTS}
        if args.budget in ("smoke", "gpu"):
            given = {"classification_run": args.classification_run, "qa_run": args.qa_run}
            needed = {name for name in TINY_RUNS if any(name in arguments for arguments in selected.values())}
            fields |= train_tiny_runs(out, given, needed)
            if "classification_run" in fields:
                fields["classification_run_copy"] = writable_copy(fields["classification_run"], out / "run_copy")
        commands = {name: command_for(name, arguments, fields) for name, arguments in selected.items()}
        outcomes = run_all(commands, args.timeout, args.jobs)
    print(f"\n{args.budget} budget:")
    for name, (passed, seconds) in outcomes.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {name} ({seconds:.0f} s)")
    failed = [name for name, (passed, _) in outcomes.items() if not passed]
    if failed:
        raise SystemExit(f"{len(failed)} benchmark(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
