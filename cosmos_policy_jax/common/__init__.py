"""Cross-cutting helpers every layer may use: the bottom of the import graph.

Modules here import only the standard library and numpy (``torch_pickle`` also ``ml_dtypes`` for
bfloat16), never another ``cosmos_policy_jax`` package, so that models, data, training, eval and
serving can all share one copy of each helper.

- ``files``: atomic writes (a reader sees the old file or the new one, never half of one).
- ``errors``: the first line of an exception message, for one-line error reports.
- ``plain``: configs, numpy and jax values as plain Python (JSON/YAML-safe).
- ``paths``: ``${VAR}``/``~`` expansion of path settings, naming unset variables.
- ``git``: the commit of the checkout, for run metadata.
- ``torch_pickle``: the restricted reader of PyTorch ``.pt``/pickle files.
"""
