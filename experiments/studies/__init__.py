"""The studies: measured checks of the paper's claims, each a thin front-end on the engine.

``python -m experiments.studies.NAME`` for NAME in ``vanishing`` (a deep sigmoid MLP),
``saddle`` (a deep linear network near the origin), ``lr_sensitivity`` and ``grouping``
(LeNet under the paper's Table I protocol). Each trains through :mod:`experiments.engine`
(one run record per run under ``--out/runs``, so a rerun trains only what is missing) and
writes ``results.json``, ``table.md`` and figures under ``--out`` (:mod:`.common`).
"""
