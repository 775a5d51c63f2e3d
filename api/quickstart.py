"""``esft quickstart``: a complete ESFT run against a live server, over HTTP only.

Installs (or reuses) the pretrained toy MoE base model shipped with the package (it knows six general
skills), registers it, uploads a built-in task and the toy's general questions (one file per skill, the job's
``general_files``), starts a job, follows it with a live progress bar, prints the adapter's answers next to the
base model's, and then the ESFT story in two numbers, as the job's own evaluation reports them
(``evaluation_result``): the task gain, and how much of the base model's general ability the adapter kept.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from api.core.artifacts import RETENTION_PNG
from api.core.settings import Settings

TOY_MODEL_ID = "esft-toy"
# The built-in task: a fixed mapping no pretrained knowledge gives away (colour -> code word).
TASK = {
    "red": "apple",
    "blue": "ocean",
    "green": "leaf",
    "yellow": "sun",
    "black": "night",
    "white": "snow",
    "orange": "carrot",
    "purple": "grape",
}
TEMPLATES = ("What is {}?",)
N_GENERAL = 4  # general questions per skill (esft.synthetic's held-out general rows)
# Case counts: the toy's `upper` skill is wrong when it answers in lower case.
METRIC = "exact_match_strict"
# Every answer of the task and of the general skills is a few characters; a fixed length keeps the story
# independent of the deployment's ESFT_EVAL_MAX_NEW_TOKENS.
MAX_NEW_TOKENS = 16
console = Console()


def task_rows(repeats: int = 6) -> list[dict[str, Any]]:
    rows = []
    for _ in range(repeats):
        for template in TEMPLATES:
            for colour, word in TASK.items():
                messages = [
                    {"role": "user", "content": template.format(colour)},
                    {"role": "assistant", "content": word},
                ]
                rows.append({"messages": messages})
    return rows


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        error = (
            response.json().get("error", {})
            if response.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        raise SystemExit(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}: "
            f"{error.get('message', response.text)}"
        )
    return response.json()


def ensure_base_model(client: httpx.Client, settings: Settings) -> str:
    """Reuse the registered toy model, else build it under ``<data_dir>/models`` and register it."""
    models = _check(client.get("/v1/models"))["data"]
    if any(m["id"] == TOY_MODEL_ID for m in models):
        console.print(f"Reusing base model [bold]{TOY_MODEL_ID}[/]")
        return TOY_MODEL_ID
    path = (settings.data_dir / "models" / TOY_MODEL_ID).resolve()
    if not (path / "config.json").is_file():
        from esft.synthetic import pretrained

        report = pretrained.shipped_report()
        console.print(f"Installing the pretrained toy MoE ({report['parameters'] / 1e6:.1f}M parameters, general "
                      f"skills {100 * report['general_mean']:.0f}% exact match) in {path} ...")
        pretrained.install(path)
    _check(client.post("/v1/admin/models", json={"id": TOY_MODEL_ID, "path": str(path)}))
    console.print(f"Registered base model [bold]{TOY_MODEL_ID}[/]")
    return TOY_MODEL_ID


def upload(client: httpx.Client, name: str, rows: list[dict[str, Any]]) -> str:
    files = {"file": (name, _jsonl(rows), "application/jsonl")}
    return _check(client.post("/v1/files", data={"purpose": "fine-tune"}, files=files))["id"]


def upload_general(client: httpx.Client, n_per_skill: int = N_GENERAL) -> list[dict[str, str]]:
    """The toy's held-out general questions, one file per skill (so retention reports each skill), as the
    job's ``general_files``."""
    from esft.synthetic.tasks import general_eval_rows

    return [{"file": upload(client, f"general-{skill}.jsonl", rows), "metric": METRIC}
            for skill, rows in general_eval_rows(n_per_skill).items()]


def job_body(
    model: str, training: str, validation: str, steps: int, general_files: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    hyper = {
        "max_steps": steps,
        "batch_size": 8,
        "learning_rate": 2e-3,
        "seq_len": 64,
        "warmup_ratio": 0.05,
        "save_every": max(1, steps // 4),
    }
    esft = {"score_function": "token", "top_p": 0.2, "n_sample_tokens": 4096, "hyperparameters": hyper}
    return {
        "model": model,
        "training_file": training,
        "validation_file": validation,
        "suffix": "quickstart",
        "seed": 0,
        "method": {"type": "esft", "esft": esft},
        "evaluation": {"metrics": [METRIC], "max_new_tokens": MAX_NEW_TOKENS},
        "general_files": general_files,
    }


def follow(client: httpx.Client, job_id: str, timeout_s: float = 1800) -> dict[str, Any]:
    """Poll the job with a live progress bar until it ends."""
    columns = (
        TextColumn("[bold]{task.description:<18}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    deadline = time.monotonic() + timeout_s
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("queued", total=1.0, info="")
        while time.monotonic() < deadline:
            job = _check(client.get(f"/v1/fine_tuning/jobs/{job_id}"))
            fraction = (job.get("progress") or {}).get("fraction") or 0.0
            label = job["phase"] or job["status"]
            info = f"queue #{job['queue_position']}" if job.get("queue_position") else ""
            if job.get("trained_tokens"):
                info = f"{job['trained_tokens']} tokens"
            bar.update(
                task,
                completed=fraction if job["status"] != "succeeded" else 1.0,
                description=label,
                info=info,
            )
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)
    raise SystemExit(f"job {job_id} did not finish within {timeout_s:.0f} s")


def show_results(client: httpx.Client, job: dict[str, Any]) -> None:
    results = _check(client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts/eval_results.json"))
    metric = results["metrics"][0]
    table = Table(title="Task prompts: base model vs ESFT adapter")
    for column in ("prompt", "expected", "base", "adapter"):
        table.add_column(column)
    for row in results["examples"]:
        prompt = row["prompt"][-1]["content"] if isinstance(row["prompt"], list) else row["prompt"]
        mark = "[green]" if row["scores"]["adapter"][metric] == 100 else "[red]"
        table.add_row(prompt, row["expected"], row["base"][:24], f"{mark}{row['adapter'][:24]}[/]")
    console.print(table)
    summary = results["summary"]
    console.print(
        f"Accuracy: adapter [bold]{summary['adapter'][metric]['mean']:.0f}%[/], "
        f"base {summary['base'][metric]['mean']:.0f}% ({results['n_examples']} prompts, {metric})"
    )
    console.print(f"Adapter: [bold]{job['fine_tuned_model']}[/]  (download: GET /v1/models/<id>/content)")


def chat(client: httpx.Client, model: str, question: str) -> str | None:
    """One greedy answer from the inference endpoint, or None when this server does not serve inference."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 16, "temperature": 0}
    response = client.post("/v1/chat/completions", json=body, timeout=300)
    if response.status_code in (404, 405, 503) and "inference" in response.text + str(response.status_code):
        return None
    return _check(response)["choices"][0]["message"]["content"]


def show_live_answers(client: httpx.Client, job: dict[str, Any]) -> None:
    """Ask the OpenAI-compatible endpoint, naming the base model and then the adapter (hot-swapped in)."""
    adapter, base = job["fine_tuned_model"], job["model"]
    questions = [TEMPLATES[0].format(colour) for colour in list(TASK)[:3]]
    if chat(client, base, questions[0]) is None:
        console.print("(this server has no inference endpoint: start it with `esft serve --inference`)")
        return
    table = Table(title="POST /v1/chat/completions: the same question to the base model and to the adapter")
    for column in ("question", f"model={base}", "model=<adapter>"):
        table.add_column(column)
    for question in questions:
        table.add_row(question, (chat(client, base, question) or "")[:24], (chat(client, adapter, question) or "")[:24])
    console.print(table)


def story(job: dict[str, Any]) -> list[str]:
    """The ESFT story from the job's ``evaluation_result``: task gain, general ability kept, the headline."""
    result = job.get("evaluation_result") or {}
    task, retention = result.get("task"), result.get("retention")
    if not task:
        return []
    metric = task["metrics"][0]
    base, adapter = task["summary"]["base"][metric]["mean"], task["summary"]["adapter"][metric]["mean"]
    gain = task["delta"]["adapter"][metric]["mean"]
    lines = [f"Task: base {base:.0f}% -> adapter {adapter:.0f}% ([bold]{gain:+.0f} points[/])"]
    if retention and retention["average"]["base"] is not None:
        average = retention["average"]
        questions = sum(f["n_examples"] for f in retention["files"])
        kept = f"{average['ratio']:.0%} kept" if average["ratio"] is not None else "the base scores 0: nothing to keep"
        lines.append(f"General ability ({questions} questions): base {average['base']:.0f}%, "
                     f"adapter {average['adapter']:.0f}% ([bold]{kept}[/])")
    lines.append(f"Headline: {result['headline']}")
    return lines


def show_story(client: httpx.Client, job: dict[str, Any]) -> None:
    """Task gain next to the general ability kept (what ESFT buys), and where the retention plot is."""
    for line in story(job):
        console.print(line)
    names = {a["name"] for a in _check(client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts"))["data"]}
    if RETENTION_PNG in names:
        url = f"{client.base_url}/v1/fine_tuning/jobs/{job['id']}/artifacts/{RETENTION_PNG}"
        console.print(f"Retention per skill: GET {url}", soft_wrap=True)  # one line: the URL stays copyable


def wait_for_server(client: httpx.Client, wait: float) -> bool:
    """True once ``/health`` answers; a server started a moment ago gets ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            client.get("/health").raise_for_status()
            return True
        except httpx.HTTPError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def run(url: str, api_key: str, settings: Settings, *, steps: int, wait: float = 0) -> int:
    """The whole quickstart; returns the process exit code."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as client:
        if not wait_for_server(client, wait):
            console.print(f"[red]No server at {url}[/]: start one with `esft serve` in another terminal.")
            return 2
        model = ensure_base_model(client, settings)
        rows = task_rows()
        training = upload(client, "quickstart-train.jsonl", rows)
        validation = upload(client, "quickstart-valid.jsonl", rows[: len(TASK)])
        body = job_body(model, training, validation, steps, upload_general(client))
        job = _check(client.post("/v1/fine_tuning/jobs", json=body))
        console.print(f"Started job [bold]{job['id']}[/] ({steps} steps)")
        job = follow(client, job["id"])
        if job["status"] != "succeeded":
            console.print(f"[red]Job {job['status']}[/]: {(job.get('error') or {}).get('message', '')}")
            return 1
        show_results(client, job)
        show_live_answers(client, job)
        show_story(client, job)
    return 0
