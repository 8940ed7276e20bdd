"""The soak test: ``python -m bench.soak`` (see ``__main__``). Modules: ``upstream`` (the scripted model),
``service`` (its processes and settings), ``traffic`` (the clients), ``events`` (reading a stream), ``probe``
(what the service holds), ``growth`` (what may grow), ``verify`` (the database check), ``report`` (the table)."""
