"""Regenerate every committed number from the current code, in one command:

    python tools/regenerate.py            # the quick profile's sweep, the README's tables, the tutorial

1. ``reproduce.py all --profile quick`` into a new runs folder named after the code's hash (runs
   trained by other code are never reused), writing ``results/quick/`` (tables, figures, and
   ``provenance.json``: each file's sha256 and the hash of the code that wrote it);
2. the README's results tables, rewritten between their ``<!-- begin generated: FILE -->`` /
   ``<!-- end generated -->`` markers from ``results/quick/*.md``;
3. ``tutorial.ipynb``, rebuilt from the cells of ``tutorial.py`` (jupytext, tools/tutorial_notebook.py)
   and executed full size, its metadata stamped with the hash of the code it ran.

It took 13.5 minutes on a 2-core CPU (the sweep: 94 runs, 756 s). tests/test_committed_results.py
fails, naming this command, when the code that produced a committed number changed since. For a
check of the command itself, shrink it and write elsewhere, e.g.::

    python tools/regenerate.py --results_dir /tmp/r --readme /tmp/README.md --notebook /tmp/t.ipynb \\
        --runs_dir /tmp/runs --sweep_args="--models LSTM --seeds 0 --epochs 1 --dry_run" --quick_tutorial
"""

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiment.files import atomic_write_text  # noqa: E402
from experiment.provenance import RESULTS_SOURCES, TUTORIAL_SOURCES, source_hash  # noqa: E402
from tools import tutorial_notebook  # noqa: E402

#: A generated block of the README: ``<!-- begin generated: results/quick/table1.md -->`` ... end.
BLOCK = re.compile(r"(<!-- begin generated: (?P<name>[^ ]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)
#: The key of the tutorial's notebook metadata that holds its stamp.
NOTEBOOK_STAMP = "alrao_regenerated"


def table_block(markdown: str) -> str:
    """What the README shows of a results table file: its provenance line and its table."""
    lines = markdown.splitlines()
    provenance = [line for line in lines if line.startswith("profile ")][:1]
    table = [line for line in lines if line.startswith("|")]
    return "\n".join([*provenance, "", *table]) + "\n"


def rewrite_readme(readme: str, results_dir: Path) -> str:
    """``readme`` with each generated block rebuilt from the file it names (taken from
    ``results_dir``, by its file name)."""

    def rebuild(match: re.Match) -> str:
        source = results_dir / Path(match["name"]).name
        return match.group(1) + table_block(source.read_text()) + match.group(4)

    return BLOCK.sub(rebuild, readme)


def run_sweep(args) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "reproduce.py"),
        "all",
        "--profile",
        "quick",
        "--out_dir",
        str(args.runs_dir),
        "--results_dir",
        str(args.results_dir),
        *shlex.split(args.sweep_args),
    ]
    print("$ " + shlex.join(cmd), flush=True)
    status = subprocess.run(cmd, cwd=ROOT).returncode
    if status != 0:
        raise SystemExit(f"regenerate.py: error: the sweep failed (exit status {status}); nothing else rewritten")


def run_tutorial(args) -> None:
    nb = tutorial_notebook.build()
    start = time.perf_counter()
    tutorial_notebook.execute(nb, quick=args.quick_tutorial, timeout=1800)
    nb.metadata[NOTEBOOK_STAMP] = {
        "source_hash": source_hash(TUTORIAL_SOURCES),
        "execution_s": round(time.perf_counter() - start),
        "quick": args.quick_tutorial,
    }
    tutorial_notebook.write(nb, args.notebook)
    print(f"wrote {args.notebook} (executed in {time.perf_counter() - start:.0f} s)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="regenerate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results_dir", type=Path, default=ROOT / "results" / "quick", help="the sweep's tables")
    parser.add_argument(
        "--runs_dir", type=Path, default=None, help="the sweep's runs (default: runs/regenerate-<code hash>)"
    )
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README to rewrite")
    parser.add_argument("--notebook", type=Path, default=ROOT / "tutorial.ipynb", help="the tutorial to write")
    parser.add_argument("--jobs", type=int, default=2, help="runs of the sweep at a time")
    parser.add_argument("--sweep_args", default="", help="more flags of reproduce.py (to shrink a check)")
    parser.add_argument("--quick_tutorial", action="store_true", help="execute the tutorial at its smoke size")
    parser.add_argument(
        "--only", choices=("results", "readme", "tutorial"), nargs="+", default=None, help="only these steps"
    )
    args = parser.parse_args(argv)
    if args.runs_dir is None:
        args.runs_dir = ROOT / "runs" / f"regenerate-{source_hash(RESULTS_SOURCES)}"
    if "--jobs" not in args.sweep_args and "--launcher" not in args.sweep_args:
        args.sweep_args += f" --jobs {args.jobs}"
    steps = args.only or ("results", "readme", "tutorial")
    if "results" in steps:
        run_sweep(args)
    if "readme" in steps:
        atomic_write_text(args.readme, rewrite_readme(args.readme.read_text(), args.results_dir))
        print(f"rewrote the generated tables of {args.readme} from {args.results_dir}")
    if "tutorial" in steps:
        run_tutorial(args)


if __name__ == "__main__":
    main()
