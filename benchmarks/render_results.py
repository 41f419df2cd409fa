"""Regenerate docs/RESULTS.md's tables (and plots) from the committed result JSON: no number in them is typed by hand.

A generated block in the Markdown names the script whose `table(report)` prints it and the JSON it reads:

    <!-- table: fixed_size_baselines baselines_mrpc_seed42.json -->
    ...replaced by the script's table...
    <!-- end table -->

A block may name a function of another module instead, as `module:function` (the demo's table is
`transformers_flex.cli:demo_table`, since `transformers-flex demo` writes its JSON).

`KEY=VALUE` words after the JSON are passed to the table as string keyword arguments, for a variant of it (one task
of a JSON that holds several, say): `<!-- table: grafting_ablation grafting_ablation.json task=mrpc -->` prints
`table(report, task="mrpc")`.

A plot line names the script whose `plot(report, path)` draws it, the JSON and the image (beside the JSON):

    <!-- plot: dynamic_tradeoffs dynamic_tradeoffs_mrpc.json dynamic_tradeoffs_mrpc.png -->

JSON and image paths are relative to benchmarks/results/.

    python benchmarks/render_results.py            # rewrite the tables in place, redraw the plots
    python benchmarks/render_results.py --check    # exit 1 if a table is out of date (make test runs this)
"""

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
DOCUMENT = BENCHMARKS.parent / "docs" / "RESULTS.md"
TABLE = re.compile(r"(<!-- table: (\S+) (\S+)((?: \S+=\S+)*) -->\n)(.*?)(<!-- end table -->)", re.DOTALL)
PLOT = re.compile(r"<!-- plot: (\S+) (\S+) (\S+) -->")


def script(name: str):
    """The benchmark script `benchmarks/<name>.py` as a module (its `table` and `plot` functions)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the scripts import their shared modules by plain name
    return importlib.import_module(name)


def table_function(name: str):
    """The function a block names: `script` (that benchmark script's `table`) or `module:function`."""
    module, _, function = name.partition(":")
    return getattr(script(module), function or "table")


def report(json_name: str) -> dict:
    path = RESULTS / json_name
    if not path.is_file():
        raise SystemExit(f"{DOCUMENT.name} names {json_name}, which benchmarks/results/ does not have.")
    return json.loads(path.read_text())


def rendered_tables(text: str) -> str:
    """`text` with every generated block's table printed again from its JSON."""

    def render(match: re.Match) -> str:
        opening, name, json_name, words, _, closing = match.groups()
        options = dict(word.split("=", 1) for word in words.split())  # the block's KEY=VALUE words
        return f"{opening}{table_function(name)(report(json_name), **options).rstrip()}\n{closing}"

    return TABLE.sub(render, text)


def draw_plots(text: str) -> list[Path]:
    """Redraw every plot the document names; the images written."""
    drawn = []
    for name, json_name, image in PLOT.findall(text):
        script(name).plot(report(json_name), RESULTS / image)
        drawn.append(RESULTS / image)
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="Only check that every table is up to date.")
    parser.add_argument("--document", type=Path, default=DOCUMENT)
    args = parser.parse_args()
    text = args.document.read_text()
    updated = rendered_tables(text)
    if args.check:
        if updated != text:
            raise SystemExit(f"{args.document} has tables that differ from their JSON: run {Path(__file__).name}")
        print(f"{len(TABLE.findall(text))} tables up to date")
        return
    args.document.write_text(updated)
    drawn = draw_plots(updated)
    print(f"{len(TABLE.findall(updated))} tables rendered, {len(drawn)} plots drawn")


if __name__ == "__main__":
    main()
