"""The benchmark report: results/<profile>/ -> reports/<profile>/report.md and a self-contained report.html.

`collect` is what bench cases write for the report; `load` reads it into pandas; `figures` draws; `render` writes.
"""

from intraq.report.render import ReportFiles, build_report, render_report

__all__ = ["ReportFiles", "build_report", "render_report"]
