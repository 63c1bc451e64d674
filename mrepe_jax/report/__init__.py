"""Report writing: markdown tables in the paper's format, results.json, run metadata."""
