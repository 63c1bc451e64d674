"""End-to-end experiments: each is one function ``run(config, workdir)`` that launch/ calls."""
