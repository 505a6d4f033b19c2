"""Entry point of the nightly deployment (``prefect.yaml``): the flow lives in the package."""

from itdr_batch.nightly import nightly

__all__ = ["nightly"]
