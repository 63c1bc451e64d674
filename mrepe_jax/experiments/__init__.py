"""End-to-end experiments, one package each (``toyworld``, ``clip``): each exports one
``run(config, workdir)`` that ``launch/run.py`` calls and a ``summary(results, workdir)`` it prints.
An experiment imports only its own package and the layers below; never another experiment."""
