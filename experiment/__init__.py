"""Plumbing shared by the experiment scripts ``main_cnn.py`` and ``main_rnn.py``.

Flags, seeding, device, optimizer table, the network wrapper, metrics,
checkpoints, early stopping and resume, the training loop's shared part
(:func:`train_steps`); nothing specific to a model or a data set (DESIGN.md,
principle 2). Each script keeps its own training step.
"""

from .early_stopping import EarlyStopping
from .errors import one_line_errors, start_up
from .flags import (
    ArgumentParser,
    Flags,
    ScriptDefaults,
    add_common_arguments,
    add_network_arguments,
    add_shared_argument,
    check_log10_interval,
    dry_run_line,
    given_flags,
    log10_rate,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    probability,
    unused_data_path,
    used_only_with,
)
from .lazy import LazyModule, lazy_package
from .optimizer_hooks import OptimizerHooks
from .optimizers import OPTIMIZERS, MissingPackage, OptimizerSpec, build_optimizer, build_optimizer_hooks
from .report import format_config, format_copies, format_epoch

# The names below need torch: imported on first use (experiment.lazy.lazy_package).
_LAZY = {
    **dict.fromkeys(["Ranks"], "distributed"),
    **dict.fromkeys(
        "WriteError atomic_torch_save atomic_write_text dumps_json to_json write_json write_jsonl".split(), "files"
    ),
    **dict.fromkeys("Meter Progress epoch_record".split(), "meter"),
    **dict.fromkeys("REFRESH_EVERY train_steps".split(), "training"),
    **dict.fromkeys("PlainModel build_model check_memory count_parameters".split(), "model"),
    **dict.fromkeys("Run best_record summarize".split(), "run"),
    **dict.fromkeys("BEST CHECKPOINT CONFIG METRICS SUMMARY UsageError exit_with_error".split(), "run_folder"),
    **dict.fromkeys(
        "Precision UnsupportedPrecision choose_device derived_generator keep_freed_memory rng_state "
        "seed_everything set_rng_state".split(),
        "runtime",
    ),
}

__getattr__, __dir__ = lazy_package(__name__, _LAZY)


__all__ = [
    # flags
    "ArgumentParser",
    "ScriptDefaults",
    "Flags",
    "check_log10_interval",
    "dry_run_line",
    "given_flags",
    "add_common_arguments",
    "add_network_arguments",
    "add_shared_argument",
    "unused_data_path",
    "used_only_with",
    "positive_int",
    "nonnegative_int",
    "positive_float",
    "nonnegative_float",
    "probability",
    "log10_rate",
    "LazyModule",
    # seeding, device, optimizers, the network
    "seed_everything",
    "derived_generator",
    "choose_device",
    "Precision",
    "UnsupportedPrecision",
    "rng_state",
    "set_rng_state",
    "keep_freed_memory",
    "OPTIMIZERS",
    "OptimizerSpec",
    "build_optimizer",
    "build_optimizer_hooks",
    "OptimizerHooks",
    "MissingPackage",
    "Ranks",
    "PlainModel",
    "build_model",
    "check_memory",
    "count_parameters",
    # metrics, files, the run
    "Meter",
    "Progress",
    "epoch_record",
    "train_steps",
    "REFRESH_EVERY",
    "format_config",
    "format_epoch",
    "format_copies",
    "atomic_torch_save",
    "atomic_write_text",
    "dumps_json",
    "to_json",
    "write_json",
    "write_jsonl",
    "EarlyStopping",
    "Run",
    "UsageError",
    "exit_with_error",
    "one_line_errors",
    "start_up",
    "WriteError",
    "best_record",
    "summarize",
    "CONFIG",
    "METRICS",
    "CHECKPOINT",
    "BEST",
    "SUMMARY",
]
