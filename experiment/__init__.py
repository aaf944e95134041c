"""Plumbing shared by the experiment scripts ``main_cnn.py`` and ``main_rnn.py``.

Flags, seeding, device, optimizer table, the network wrapper, metrics,
checkpoints, early stopping and resume; nothing specific to a model or a data
set (DESIGN.md, principle 2). Each script keeps its own training loop.
"""

from .baselines import MissingPackage, OptimizerHooks
from .distributed import Ranks
from .early_stopping import EarlyStopping
from .errors import one_line_errors
from .files import WriteError, atomic_torch_save, atomic_write_text, dumps_json, to_json, write_json, write_jsonl
from .flags import (
    ArgumentParser,
    Flags,
    ScriptDefaults,
    add_common_arguments,
    check_log10_interval,
    dry_run_line,
    given_flags,
    log10_rate,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    probability,
)
from .meter import Meter, Progress, epoch_record
from .model import PlainModel, build_model, check_memory, count_parameters
from .optimizers import OPTIMIZERS, OptimizerSpec, build_optimizer, build_optimizer_hooks
from .report import format_config, format_copies, format_epoch
from .run import BEST, CHECKPOINT, CONFIG, METRICS, SUMMARY, Run, UsageError, best_record, exit_with_error, summarize
from .runtime import (
    Precision,
    UnsupportedPrecision,
    choose_device,
    derived_generator,
    keep_freed_memory,
    rng_state,
    seed_everything,
    set_rng_state,
)

__all__ = [
    # flags
    "ArgumentParser",
    "ScriptDefaults",
    "Flags",
    "check_log10_interval",
    "dry_run_line",
    "given_flags",
    "add_common_arguments",
    "positive_int",
    "nonnegative_int",
    "positive_float",
    "nonnegative_float",
    "probability",
    "log10_rate",
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
    "WriteError",
    "best_record",
    "summarize",
    "CONFIG",
    "METRICS",
    "CHECKPOINT",
    "BEST",
    "SUMMARY",
]
