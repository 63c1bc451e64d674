"""Report writing: markdown tables in the paper's format, plots, report.html (``html``), results.json, run metadata."""
