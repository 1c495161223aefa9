"""The search report: tables (from the run directory and Parquet), EDF plots (matplotlib) and one
self-contained HTML page per run. Reads a run directory; never writes outside the report directory.

Imports pyarrow, matplotlib and read-only helpers of `peft_search.search` (run directory layout,
records, decisions, status formatting); never ray or torch.
"""

from peft_search.reporting.html import INDEX, REPORT_DIR, write_report
from peft_search.reporting.tables import RunView, comparison, load_run

__all__ = ["INDEX", "REPORT_DIR", "RunView", "comparison", "load_run", "write_report"]
