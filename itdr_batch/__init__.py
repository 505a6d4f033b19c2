"""itdr-batch."""

import os

# Ray reads this once, when it is first imported, and vLLM may import Ray long before the nightly
# flow starts a cluster, so it is set here. With it on (Ray's default), a driver under `uv run`
# starts every Ray worker with `uv run` in a packaged copy of the working directory: each worker
# builds its own environment and the Rust extension (here they hung). Workers should use the
# installed environment, as the driver does.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
