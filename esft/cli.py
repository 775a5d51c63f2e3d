"""The ``esft`` command: thin typer wrappers over ``esft.workflows`` with progress bars and clear errors.

Service commands (``serve``, ``quickstart``, ``models``, ``keys``) are added by the service package through
the ``esft.commands`` entry point; the library itself never imports the service.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from esft.cli_options import config_options
from esft.config import ScoringConfig, SelectionConfig, TrainingConfig
from esft.errors import ConfigError, ESFTError, TrainingCancelled

app = typer.Typer(
    name="esft",
    help="Expert-Specialized Fine-Tuning for Mixture-of-Experts models: score, select, train, merge, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ModelOpt = Annotated[Path, typer.Option("--model", help="Local model directory (save_pretrained layout).")]
DataOpt = Annotated[Path, typer.Option("--data", help="JSONL: {messages} | {prompt, completion} | {text}.")]
# Launch flags: CLI-only, not options of any config (the command re-runs itself under torchrun with the rest).
NprocOpt = Annotated[int | None, typer.Option(
    "--nproc-per-node", help="Run as N processes on this node under torchrun (one per device; gloo on CPU).")]
NnodesOpt = Annotated[int, typer.Option("--nnodes", help="Nodes in the run (the same command on each).")]
NodeRankOpt = Annotated[int, typer.Option("--node-rank", help="This node's index; node 0 hosts the rendezvous.")]
MasterAddrOpt = Annotated[str, typer.Option("--master-addr", help="Address of node 0 (c10d rendezvous).")]
MasterPortOpt = Annotated[int, typer.Option("--master-port", help="Rendezvous port on node 0.")]
EpSizeOpt = Annotated[int | None, typer.Option(
    "--ep-size", help="Shard each layer's experts over E ranks (expert parallelism; needs --nproc-per-node).")]
_LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


@contextmanager
def _errors() -> Iterator[None]:
    """Print library errors as one readable line (exit code 2) instead of a traceback."""
    try:
        yield
    except ESFTError as exc:
        where = f" [{exc.param}]" if exc.param else ""
        console.print(f"[bold red]error{where}:[/] {exc.message}")
        raise typer.Exit(2) from None


@contextmanager
def _progress_bar(description: str) -> Iterator:
    """A rich progress bar fed by ``ProgressEvent`` callbacks (step, loss, tokens/s, ETA)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=None, info="")

        def update(event) -> None:
            info = " ".join(
                f"{k}={v:.4g}" for k, v in (("loss", event.loss), ("val", event.val_loss),
                                            ("tok/s", event.tokens_per_s)) if v is not None
            )
            bar.update(task, total=event.total_steps, completed=event.step, description=event.phase, info=info)

        yield update


_TOY_SIZES = {"layers": 2, "experts": 8, "top_k": 2, "hidden": 64}  # the plain toy's defaults


@app.command("toy-model")
def toy_model(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the model and tokenizer to.")],
    family: Annotated[str, typer.Option(help="MoE family (model_type): deepseek_v2, qwen3_moe, ...")] = "deepseek_v2",
    layers: Annotated[int | None, typer.Option(help="MoE decoder layers [default: 2; --pretrain: 4].")] = None,
    experts: Annotated[int | None, typer.Option(help="Routed experts per layer [default: 8; --pretrain: 32].")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Experts per token [default: 2; --pretrain: 4].")] = None,
    hidden: Annotated[int | None, typer.Option(help="Hidden size [default: 64; --pretrain: 128].")] = None,
    seed: Annotated[int, typer.Option(help="Initialisation seed.")] = 0,
    pretrain: Annotated[bool, typer.Option("--pretrain", help=(
        "Pretrain a DeepSeek-V2-family toy (default 4 layers, 32 experts top-4, 2 shared, group-limited routing) on "
        "synthetic tasks for a fixed number of steps (~20 min on 2 cores at the defaults; cached in OUT_DIR) so "
        "its experts specialise. The size flags apply; --family must be deepseek_v2."))] = False,
    steps: Annotated[int | None, typer.Option(help="Pretraining steps (only with --pretrain) [default: 3000].")] = None,
) -> None:
    """Build a tiny MoE model of any family, with a local tokenizer (no network)."""
    sizes = {"layers": layers, "experts": experts, "top_k": top_k, "hidden": hidden}
    with _errors():
        if pretrain:
            _pretrain_toy(out_dir, family, {k: v for k, v in sizes.items() if v is not None}, seed, steps)
            return
        if steps is not None:
            raise typer.BadParameter("--steps applies only with --pretrain")
        from esft.models.toy import build_toy_model

        options = {k: v if v is not None else _TOY_SIZES[k] for k, v in sizes.items()}
        path = build_toy_model(out_dir, family=family, seed=seed, **options)
    console.print(f"wrote {family} toy model to {path}")


def _pretrain_toy(out_dir: Path, family: str, sizes: dict[str, int], seed: int, steps: int | None) -> None:
    """``toy-model --pretrain``: the synthetic-task pretraining of ``esft.synthetic.pretrain`` at the given size."""
    from esft.synthetic.pretrain import PretrainConfig, pretrain

    if family != "deepseek_v2":
        raise typer.BadParameter(f"--pretrain builds a deepseek_v2 model; got --family {family}")
    config = PretrainConfig(seed=seed, **sizes, **({"steps": steps} if steps is not None else {}))
    report = pretrain(out_dir, config, log=console.print)
    console.print(f"pretrained toy model in {out_dir}: {report['parameters']:,} parameters, "
                  f"general exact match {report['general_mean']:.3f}")


@app.command()
@config_options(scoring=ScoringConfig)
def score(
    model: ModelOpt,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Scores JSON to write.")],
    scoring: ScoringConfig,
    nproc_per_node: NprocOpt = None,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    master_addr: MasterAddrOpt = "127.0.0.1",
    master_port: MasterPortOpt = 29500,
    ep_size: EpSizeOpt = None,
) -> None:
    """Score every routed expert on task data (token and gate scores per layer)."""
    from esft import workflows

    _launch_if_asked(nproc_per_node, nnodes, node_rank, master_addr, master_port)
    with _errors(), _progress_bar("scoring") as progress:
        _init_distributed()
        scores = workflows.score(model, data, out, scoring, progress=progress, ep_size=ep_size)
    console.print(f"scored {scores.n_tokens} tokens in {scores.n_sequences} sequences -> {out}")


@app.command()
@config_options(selection=SelectionConfig)
def select(
    scores: Annotated[Path, typer.Option("--scores", help="Scores JSON from `esft score`.")],
    out: Annotated[Path, typer.Option("--out", help="Expert config JSON to write.")],
    selection: SelectionConfig,
) -> None:
    """Select experts per layer until their cumulative score reaches top_p."""
    from esft import workflows

    with _errors():
        config = workflows.select(scores, selection, out)
    total = sum(len(v) for v in (config.scores or {}).values())
    console.print(f"selected {config.n_selected}/{total} experts across {len(config.experts)} layers -> {out}")


@app.command()
@config_options(training=TrainingConfig)
def train(
    model: ModelOpt,
    data: DataOpt,
    training: TrainingConfig,
    expert_config: Annotated[Path | None, typer.Option(
        "--expert-config", help="Expert config JSON (required with --method esft/esft_lora, refused otherwise).")]
    = None,
    out: Annotated[Path, typer.Option("--out", help="Adapter directory to write.")] = Path("adapter"),
    method: Annotated[str, typer.Option(help="esft, esft_lora (rank 4 deltas on the selected experts), or fft (all "
                                        "weights), lora (rank 8, attention) or lora_experts to compare.")] = "esft",
    validation_file: Annotated[Path | None, typer.Option(help="Validation JSONL.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")] = False,
    progress_jsonl: Annotated[Path | None, typer.Option(
        "--progress-jsonl", help="Also append rank 0's progress to this JSONL file (step records, then "
        "checkpoint / done / stopped records), for a process that follows the run.")] = None,
    nproc_per_node: NprocOpt = None,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    master_addr: MasterAddrOpt = "127.0.0.1",
    master_port: MasterPortOpt = 29500,
    ep_size: EpSizeOpt = None,
) -> None:
    """Train with ESFT (only the selected experts), or FFT / LoRA for comparison, and write the result to --out.

    SIGTERM stops the run at the end of the current step with a checkpoint (resume with --resume).
    """
    from esft import workflows
    from esft.training.progress import ProgressFile

    _launch_if_asked(nproc_per_node, nnodes, node_rank, master_addr, master_port)
    stop = _stop_on_sigterm()
    record = ProgressFile(progress_jsonl) if progress_jsonl else None
    with _errors():
        _init_distributed()
        try:
            with _progress_bar("training") as bar, _recording(record):
                progress = _both(bar, record) if record else bar
                result = workflows.train(model, data, expert_config, out, training, validation_path=validation_file,
                                         resume=resume, progress=progress, should_stop=stop.is_set, method=method,
                                         ep_size=ep_size)
        except TrainingCancelled as exc:
            if not stop.is_set():
                raise
            from esft.parallel.launch import mark_stopped

            console.print(exc.message)  # asked to stop (SIGTERM): a checkpoint is written, a clean exit
            mark_stopped()
            raise typer.Exit(0) from None
    params = result.report["parameters"]
    console.print(f"{method}: trained {params['trainable']:,} of {params['total']:,} parameters "
                  f"({100 * params['trainable'] / params['total']:.2f}%) for {result.steps} steps; "
                  f"final loss {result.final_loss:.4f}; result -> {result.adapter_dir}")


@app.command()
@config_options(training=TrainingConfig)
def compare(
    model: ModelOpt,
    data: DataOpt,
    training: TrainingConfig,
    methods: Annotated[str, typer.Option(help="Comma-separated methods to run on the same data and budget.")] = (
        "esft,esft_lora,lora,lora_experts,fft"),
    out: Annotated[Path, typer.Option("--out", help="Directory for the runs and the report.")] = Path("comparison"),
    validation_file: Annotated[Path | None, typer.Option(help="Validation JSONL (task metric; default: --data).")]
    = None,
) -> None:
    """Train several methods with the same budget and write a side-by-side report (JSON, Markdown, PNG)."""
    from esft import comparison

    names = [m.strip() for m in methods.split(",") if m.strip()]
    with _errors():
        comparison.compare(model, data, names, out, training, validation_path=validation_file)
    console.print((out / comparison.REPORT_MD).read_text())


@app.command()
@config_options(training=TrainingConfig)
def plan(
    model: Annotated[Path, typer.Option("--model", help="Model directory; only its config.json is read.")],
    training: TrainingConfig,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="Devices per node.")] = 8,
    gpu_memory: Annotated[str, typer.Option("--gpu-memory", help="Memory per device, e.g. 80GiB.")] = "80GiB",
    expert_config: Annotated[Path | None, typer.Option(
        "--expert-config", help="Expert config to size (default: 10% of each layer's experts).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Memory per rank (frozen weights, trained rows, AdamW state, activations) and the smallest layout that fits."""
    from transformers import AutoConfig

    from esft.expert_config import ExpertConfig
    from esft.parallel import plan as sizing

    with _errors():
        if not (model / "config.json").is_file():
            raise ConfigError(f"{model} has no config.json", param="model")
        sizes = sizing.model_sizes(AutoConfig.from_pretrained(model, local_files_only=True))
        experts = (ExpertConfig.load(expert_config) if expert_config else
                   sizing.uniform_selection(sizes.num_experts, sorted(sizes.per_expert), 0.1))
        weight_bytes = 4 if training.dtype == "float32" else 2
        fits, tried = sizing.smallest_layout(
            sizes, experts, gpus_per_node=gpus_per_node, gpu_memory=sizing.parse_bytes(gpu_memory),
            weight_bytes=weight_bytes, batch_tokens=training.batch_size * training.seq_len,
            activation_checkpointing=training.activation_checkpointing)
    if as_json:
        typer.echo(json.dumps({"fits": fits.to_dict() if fits else None, "tried": [m.to_dict() for m in tried]},
                              indent=2))
        return
    typer.echo("nodes x gpus  ep  frozen  trained  adamw  activations  total (GiB per rank)")
    for m in tried:
        typer.echo(f"{m.nodes:>5} x {m.gpus_per_node:<4} {m.ep_size:>3} {sizing.gib(m.frozen_weights):>7} "
                   f"{sizing.gib(m.trained_rows):>8} {sizing.gib(m.adamw_state):>6} {sizing.gib(m.activations):>12} "
                   f"{sizing.gib(m.total):>6}")
    if fits is None:
        console.print(f"no layout up to {len(tried)} nodes fits {gpu_memory} per device")
        raise typer.Exit(1)
    console.print(f"smallest layout: --nnodes {fits.nodes} --nproc-per-node {fits.gpus_per_node} "
                  f"--ep-size {fits.ep_size}")


@app.command()
def merge(
    model: ModelOpt,
    adapter: Annotated[Path, typer.Option("--adapter", help="Adapter directory.")],
    out: Annotated[Path, typer.Option("--out", help="Merged model directory to write.")],
) -> None:
    """Write base model + adapter as one checkpoint that from_pretrained loads."""
    from esft import workflows

    with _errors():
        path = workflows.merge(model, adapter, out)
    console.print(f"merged model -> {path}")


@app.command()
def convert(
    adapter: Annotated[Path, typer.Option("--adapter", help="Adapter directory to convert.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write.")],
    source: Annotated[str | None, typer.Option(
        "--from", help="'official': import a deepseek-ai/ESFT adapter (expert_cfg.json + *.safetensors).")] = None,
    target: Annotated[str | None, typer.Option(
        "--to", help="'official': write this project's adapter in the deepseek-ai/ESFT layout.")] = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="Base model directory (required with --from official: every tensor is checked).")] = None,
) -> None:
    """Convert adapters from or to the layout of deepseek-ai/ESFT."""
    from esft.adapters.official import export_official, import_official

    with _errors():
        if (source, target) == ("official", None):
            if model is None:
                raise typer.BadParameter("--from official needs --model BASE_DIR (the adapter is checked against it)")
            path = import_official(model, adapter, out)
        elif (source, target) == (None, "official"):
            path = export_official(adapter, out)
        else:
            raise typer.BadParameter("pass exactly one of --from official or --to official")
    console.print(f"wrote {path}")


@app.command()
def generate(
    model: ModelOpt,
    prompt: Annotated[str, typer.Option("--prompt", help="User message (rendered with the chat template).")],
    adapter: Annotated[Path | None, typer.Option("--adapter", help="Adapter directory to apply.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.0,
) -> None:
    """Generate a reply with the base model or an adapter."""
    from esft import workflows

    with _errors():
        text = workflows.generate(model, prompt, adapter_dir=adapter, max_new_tokens=max_new_tokens,
                                  temperature=temperature)
    typer.echo(text)


@app.command()
def plot(
    scores: Annotated[Path | None, typer.Option("--scores", help="Scores JSON: draws the expert heatmap.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="PNG to write [default: scores.png, or loss.png with --metrics].")] = None,
    expert_config: Annotated[Path | None, typer.Option("--expert-config", help="Box the selected experts.")] = None,
    metrics: Annotated[Path | None, typer.Option("--metrics", help="metrics.jsonl: draws the loss curve.")] = None,
) -> None:
    """Plot the per-layer expert-score heatmap (or a loss curve with --metrics)."""
    from esft import plotting

    with _errors():
        if metrics is not None:
            path = plotting.plot_loss(metrics, out or Path("loss.png"))
        elif scores is not None:
            path = plotting.plot_scores(scores, out or Path("scores.png"), expert_config)
        else:
            raise typer.BadParameter("pass --scores or --metrics")
    console.print(f"wrote {path}")


@app.command()
def inspect(model: ModelOpt) -> None:
    """Show the MoE layout ESFT finds in a model (layers, experts, shared experts)."""
    from esft.models.discovery import find_moe_layers
    from esft.models.loading import load_model

    with _errors():
        loaded, _ = load_model(model, device="cpu")
        rows = [{"layer": ly.layer_index, "experts": ly.num_experts, "module": ly.experts_name,
                 "shared": list(ly.shared_names), "router": ly.router_name} for ly in find_moe_layers(loaded)]
    typer.echo(json.dumps(rows, indent=2))


def _launch_if_asked(nproc_per_node: int | None, nnodes: int, node_rank: int, master_addr: str,
                     master_port: int) -> None:
    """With ``--nproc-per-node``, run this command again under torchrun and exit with its status."""
    if nproc_per_node is None:
        return
    from esft.parallel.launch import LaunchPlan, launch, without_launch_flags

    plan = LaunchPlan(nproc_per_node, nnodes, node_rank, master_addr, master_port)
    with _errors():
        status = launch(plan, without_launch_flags(sys.argv[1:], _LAUNCH_FLAGS))
    raise typer.Exit(status)


def _stop_on_sigterm() -> threading.Event:
    """An event SIGTERM sets, for ``should_stop``: the loop checkpoints and stops (torchrun forwards SIGTERM)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    return stop


def _both(*callbacks):
    def progress(event) -> None:
        for callback in callbacks:
            callback(event)

    return progress


@contextmanager
def _recording(record) -> Iterator[None]:
    """Close a ``ProgressFile`` with ``done`` or ``stopped`` (rank 0 only; the loop reports on rank 0 only)."""
    from esft.parallel.data_parallel import is_main

    try:
        yield
    except TrainingCancelled:
        if record and is_main():
            record.stopped()
        raise
    if record and is_main():
        record.done()


def _init_distributed() -> None:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1): gloo on CPU, nccl on GPUs."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def _register_plugins() -> None:
    """Add commands that other installed packages (the service) offer through the ``esft.commands`` entry point."""
    for entry in entry_points(group="esft.commands"):
        try:
            register = entry.load()
        except ImportError as exc:  # the service's extra dependencies are not installed
            console.print(f"[dim]esft: skipping {entry.name} commands ({exc})[/]")
            continue
        register(app)


def main() -> None:
    _register_plugins()
    app(prog_name="esft")


if __name__ == "__main__":
    sys.exit(main())
