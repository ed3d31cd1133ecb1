"""The bench's one entry point: `python -m bench <command> [its arguments]` (from the repository root, with the
development venv: `.dev/venv/bin/python -m bench ...`). Each command makes numbers that README.md or docs/RESULTS.md
publish; results/README.md says which number comes from which command and file. `python -m bench <command> --help`
lists a command's arguments.
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# command -> (module with main(argv), what it makes)
COMMANDS = {
    "demo": ("bench.demo", "the demo workflow uncached and with SenCache: report, previews, measured speed-up "
                           "(scripts/demo.sh; output/demo/)"),
    "quality": ("bench.quality", "every method at exactly equal model evaluations, PSNR/SSIM against the uncached run "
                                 "(scripts/bench_quality.sh; results/quality/)"),
    "summary": ("bench.summary", "the compact quality tables of docs/RESULTS.md from results/quality/*.json"),
    "wide": ("bench.wide", "the wide benchmark's summary results/wide/README.md from results/wide/<model>/*.json "
                           "(scripts/bench_wide.sh runs the whole benchmark)"),
    "budget": ("bench.budget", "budget mode as the node runs it at 2x, 3x, 4x: PSNR, computed steps, extrapolation "
                               "error per step (results/budget/)"),
    "verdict": ("bench.verdict", "the Calibrator's caching-or-fewer-steps verdict with more runs, against the wide "
                                 "benchmark's truth (results/verdict/)"),
    "learned": ("bench.learned", "learned profiles against Calibrator profiles at matched evaluations "
                                 "(results/learned/)"),
    "defaults": ("bench.defaults", "evaluations and PSNR of the node's default settings per model "
                                   "(results/defaults/)"),
    "speed": ("bench.speed", "wall-clock speed-up and overhead at real scale on a GPU, or reduced on a CPU "
                             "(scripts/bench_speed.sh; results/speed/)"),
    "overhead": ("bench.overhead", "the caching wrappers' own cost per evaluation with a zero-cost model "
                                   "(results/speed/overhead-cpu.md)"),
    "coverage": ("demo_model.check", "does the demo model draw the prompt? colour coverage of uncached samples "
                                     "(results/demo_model/)"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    width = max(map(len, COMMANDS))
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()))
    ap.add_argument("command", choices=COMMANDS, metavar="command", help="one of: " + ", ".join(COMMANDS))
    ap.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments (see <command> --help)")
    if not argv or argv[0] in ("-h", "--help"):
        ap.print_help()
        return 0 if argv else 2
    ns = ap.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[ns.command][0])
    sys.argv = [f"python -m bench {ns.command}", *argv[1:]]        # the command's --help and usage name it so
    rc = module.main(argv[1:])
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
