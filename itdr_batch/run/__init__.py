"""The score job: configuration → plan → units (build, score) → run folder → manifest.

``run_job`` is the one entry point; the CLI, the nightly flow, the demo and the benchmarks call it.
"""

from itdr_batch.run.config import ConfigError, JobConfig, load_config, parse_override
from itdr_batch.run.job import AccountingError, EngineCrashed, JobError, JobResult, run_job
from itdr_batch.run.manifest import Manifest, ManifestError

__all__ = [
    "AccountingError",
    "ConfigError",
    "EngineCrashed",
    "JobConfig",
    "JobError",
    "JobResult",
    "Manifest",
    "ManifestError",
    "load_config",
    "parse_override",
    "run_job",
]
