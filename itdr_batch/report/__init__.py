"""The HTML report of one or more runs (``itdr-batch report``)."""

from itdr_batch.report.page import Report, build_report, write_report
from itdr_batch.report.runs import ReportError

__all__ = ["Report", "ReportError", "build_report", "write_report"]
