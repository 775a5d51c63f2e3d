"""ESFT vs full fine-tuning vs LoRA on a pretrained toy MoE: task score, general ability, cost. One command.

Pretrains the DeepSeek-V2-family toy base (cached in --model-dir), measures routing concentration and
overlap, then runs every method with its own learning-rate sweep and several seeds, writes
docs/results.md with tables and PNG plots, and prints one JSON summary.

    python research/method_comparison.py                 # the documented run (< 60 min on 2 CPU cores)
    python research/method_comparison.py --small --out-md /tmp/r.md --plots /tmp/plots --model-dir /tmp/m
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from research.comparison import ComparisonConfig, run_comparison  # noqa: E402
from research.document import write_results  # noqa: E402
from research.report import scoring_finding  # noqa: E402
from research.routing import routing_summary  # noqa: E402


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny model and budget (seconds; for tests)")
    parser.add_argument("--model-dir", default=None, help="pretrained base cache (default .esft/experiments/toy-moe)")
    parser.add_argument("--out-md", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--plots", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--json", type=Path, default=None, help="raw results (default: <plots>/method_comparison.json)")
    parser.add_argument("--workers", type=int, default=None, help="parallel runs (default 2; --small: 1)")
    parser.add_argument("--tasks", nargs="+", default=None, help="task names (esft.synthetic.tasks.TASKS)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps per run (default 150)")
    parser.add_argument("--report-only", action="store_true", help="re-render the page from the saved --json")
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> ComparisonConfig:
    if args.small:
        config = ComparisonConfig.small(args.model_dir or str(ROOT / ".esft" / "experiments" / "toy-moe-small"))
    else:
        config = ComparisonConfig(model_dir=args.model_dir or str(ROOT / ".esft" / "experiments" / "toy-moe"))
    overrides = {"workers": args.workers, "steps": args.steps,
                 "tasks": tuple(args.tasks) if args.tasks else None,
                 "seeds": tuple(range(args.seeds)) if args.seeds else None}
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _summary(results: dict, out_md: Path) -> dict:
    _, best_scoring = scoring_finding(results)
    table = {f"{r['task']}/{r['method']}": {"task_em": round(r["test_accuracy"]["mean"], 4),
                                            "task_em_std": round(r["test_accuracy"]["std"], 4),
                                            "general_em": round(r["general_mean"]["mean"], 4),
                                            "lr": r["learning_rate"]} for r in results["table"]}
    base = {b["task"]: {"task_em": b["test_accuracy"], "general_em": b["general_mean"]} for b in results["base"]}
    return {"results_md": str(out_md), "seconds": results["seconds"], "routing": routing_summary(results["routing"]),
            "base": base, "methods": table, "best_scoring": best_scoring}


def _run(args: argparse.Namespace, argv: list[str] | None, json_path: Path) -> dict:
    start = time.perf_counter()
    results = run_comparison(_config(args), args.plots, log=lambda line: print(line, file=sys.stderr, flush=True))
    results["seconds"] = round(time.perf_counter() - start, 1)
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    results["cpu_seconds"] = round(sum(u.ru_utime + u.ru_stime for u in usage), 1)  # workers are reaped by now
    command = ["python research/method_comparison.py", *(argv if argv is not None else sys.argv[1:])]
    results["command"] = " ".join(command)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, sort_keys=True))
    return results


def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    json_path = args.json or args.plots / "method_comparison.json"
    results = json.loads(json_path.read_text()) if args.report_only else _run(args, argv, json_path)
    write_results(results, args.out_md, args.plots, results.get("command", "python research/method_comparison.py"))
    summary = _summary(results, args.out_md)
    print(json.dumps(summary, sort_keys=True))
    return summary


if __name__ == "__main__":
    main()
