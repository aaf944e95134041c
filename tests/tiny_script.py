"""The flag defaults of a tiny stand-in script, for the tests that drive the runner's plumbing
(``experiment``) without a real data set or model."""

import experiment

DEFAULTS = experiment.ScriptDefaults(
    datasets=("real", "fake"),
    dataset="real",
    dry_run_dataset="fake",
    batch_size=8,
    min_lr_log10=-5,
    max_lr_log10=1,
    n_classifiers=4,
)
