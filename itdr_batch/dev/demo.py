"""``itdr-batch demo``: the whole product on a fresh clone, offline, on 2 cores in minutes.

It ingests the bundled MovieLens sample, builds the tiny model and an adapter (on the real Qwen2.5
tokenizer when ``../shared`` has it, else on a tokenizer trained on the sample's own text), writes
a job configuration, scores every sample user in evaluation mode with the same job code as
``itdr-batch score``, evaluates the run against the baselines and writes its HTML report. Every
step is idempotent, so a second demo reuses what the first built and finds its run complete.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from itdr_batch.datasets import SAMPLE, read_movielens, write_canonical
from itdr_batch.dev.tiny import build_tiny
from itdr_batch.dev.tokenizer import sample_texts, train_tokenizer
from itdr_batch.evaluate import evaluate, write_json
from itdr_batch.report import build_report, write_report
from itdr_batch.run import JobResult, load_config, run_job
from itdr_batch.run.progress import Reporter
from itdr_batch.tables.sink import write_parquet_atomic

# Where a checkout's shared data keeps the real tokenizer, relative to the working directory.
SHARED_TOKENIZER = Path("../shared/data/qwen2.5-tokenizer")

JOB = """\
# The demo's job: `itdr-batch score --users {users} --config {config}` reruns it.
[data]
interactions = "data/interactions.parquet"
items = "data/items.parquet"

[model]
path = "tiny/model"
chat = "qwen"
dtype = "float32"

[[adapters]]
name = "a1"
path = "tiny/a1"

[prompts]
tasks = ["tkr", "rp"]
domain = "movie"
evaluation = true
history_len = 10
candidates = 10
item_fields = {{ category = "genres" }}

[engine]
kind = "{engine}"
max_model_len = 2048
kv_cache_gib = 1
enforce_eager = true
block_size = 32

[scoring]
modes = {{ tkr = "likelihood", rp = "label" }}
batch_size = 16

[output]
dir = "run"
"""


@dataclass(frozen=True)
class Demo:
    tokenizer: str
    job: Path
    users: Path
    run: JobResult
    evaluation: dict[str, Any]
    evaluation_json: Path
    report: Path


def run_demo(
    out: Path, engine: str = "auto", tokenizer: Path | None = None, reporter: Reporter | None = None
) -> Demo:
    data = out / "data"
    if not ((data / "interactions.parquet").is_file() and (data / "items.parquet").is_file()):
        write_canonical(read_movielens(SAMPLE), data)
    users = data / "users.parquet"
    if not users.is_file():
        interactions = pl.scan_parquet(data / "interactions.parquet")
        write_parquet_atomic(interactions.select("user_id").unique().sort("user_id"), users)

    if tokenizer is None and SHARED_TOKENIZER.is_dir():
        tokenizer = SHARED_TOKENIZER
    if tokenizer is None:
        tokenizer = train_tokenizer(sample_texts(), out / "tokenizer")
        source = f"trained on the sample's own text ({tokenizer})"
    else:
        source = f"{tokenizer}"
    build_tiny(out / "tiny", tokenizer, adapters=1)

    job = out / "job.toml"
    job.write_text(JOB.format(users=users, config=job, engine=engine))
    result = run_job(load_config(job), users, reporter=reporter)
    evaluation = evaluate(result.out)
    evaluation_json = result.out / "evaluation.json"
    write_json(evaluation, evaluation_json)
    report = write_report(build_report([result.out]), result.out / "report.html")
    return Demo(source, job, users, result, evaluation, evaluation_json, report)
