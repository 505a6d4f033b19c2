"""Where a run's logs go: ours to the terminal, the libraries' to a file in the run folder.

vLLM, transformers, torch and Triton announce dozens of start-up notes (platform, arguments,
``LD_PRELOAD``, deprecations) that would bury a command's result; they are kept, in the run folder,
for when something goes wrong, and ``-v`` shows them on the terminal as well.
"""

import logging
import os
from pathlib import Path

OURS = "itdr_batch"
LOG_FILE = "library.log"


def ours(record: logging.LogRecord) -> bool:
    """A record of this package's loggers (``itdr_batch.*``)."""
    return record.name == OURS or record.name.startswith(f"{OURS}.")


def _terminal(record: logging.LogRecord) -> bool:
    return ours(record) or record.levelno >= logging.ERROR


def _library(record: logging.LogRecord) -> bool:
    return not ours(record)


class _FolderFileHandler(logging.FileHandler):
    """Creates its folder on the first record: the job checks the run folder is writable first."""

    def _open(self):  # type: ignore[no-untyped-def]  # typeshed's return type varies by version
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def library_logs_to(path: Path, verbose: bool, models: bool = True) -> Path:
    """Sends third-party records (and Python warnings) to ``path``; unless ``verbose``, only their
    errors still reach the terminal handlers set up before. Returns ``path``.

    vLLM, unless told otherwise, gives its loggers a handler of their own that prints to stdout;
    ``VLLM_CONFIGURE_LOGGING=0`` (read when vLLM is imported, which the engine does later) makes
    its records come here like any library's. transformers gives its root logger a stderr handler
    and stops propagation when first imported, whenever that is: when the command loads a model
    (``models``), it is imported here (~2 s) and told to propagate instead.
    """
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    if models:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_default_handler()
        transformers_logging.enable_propagation()
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not verbose:
        # transformers' and the hub's loading bars: read when transformers is imported.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        for handler in root.handlers:
            handler.addFilter(_terminal)
    handler = _FolderFileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_library)
    root.addHandler(handler)
    return path
