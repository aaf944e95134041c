"""The machinery of ``reproduce.py``: the paper's protocol, sweeps of runs, tables and figures.

- :mod:`.protocol`: the paper's grids, settings, published Table 1, and the profiles.
- :mod:`.plan`: methods, table rows and columns, one run's flags and folder.
- :mod:`.launch`: running the runs (in process, local subprocesses, Slurm via submitit).
- :mod:`.aggregate`: summaries to numbers (best rate on validation, mean ± std).
- :mod:`.tables`, :mod:`.figures`: Markdown/JSON tables and PNG figures.
- :mod:`.experiments`: the experiments, each its runs and its report.
"""
