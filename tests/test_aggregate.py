"""Unit tests of reproduce.py's aggregation and tables, on hand-made run summaries."""

import math
from pathlib import Path

import numpy as np
import pytest

from reproduce_lib.aggregate import RowResult, RunResult, Stat, choose_on_validation, column_cell, mean_std
from reproduce_lib.outputs import Provenance, format_rate, format_seeds, runs_note
from reproduce_lib.plan import Column, Row, adam, sgd, table1_columns
from reproduce_lib.protocol import PAPER_TABLE1, PROFILES, SGD_RATES
from reproduce_lib.tables import json_table1, markdown_table1


def result(valid_loss, test_loss=None, test_acc=None, diverged=False, folder="run"):
    """A finished run whose best epoch has these metrics (``None``: no finite value, as JSON's null)."""
    return RunResult(
        folder,
        {
            "status": "diverged" if diverged else "completed",
            "diverged": diverged,
            "best_epoch": None if valid_loss is None else 1,
            "valid_loss": valid_loss,
            "test_loss": test_loss,
            "test_acc": test_acc,
        },
    )


# ---------------------------------------------------------------- mean ± std
def test_mean_std_is_the_mean_and_sample_standard_deviation():
    stat = mean_std([1.0, 2.0, 4.0])
    assert stat.n == 3 and stat.mean == pytest.approx(7 / 3)
    assert stat.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))


def test_mean_std_leaves_out_missing_and_non_finite_values():
    assert mean_std([None, 3.0, math.nan, math.inf, 5.0]) == Stat(4.0, math.sqrt(2), 2)
    assert mean_std([2.5]) == Stat(2.5, None, 1)  # one value: no deviation to report
    assert mean_std([None, math.nan]) is None


# ------------------------------------------------------------- best on valid
def test_the_best_rate_is_the_lowest_mean_validation_loss_not_the_best_test_loss():
    candidates = {
        "sgd-lr0.01": [result(0.50, test_loss=0.30), result(0.70, test_loss=0.30)],  # mean 0.60
        "sgd-lr0.1": [result(0.55, test_loss=0.90), result(0.55, test_loss=0.90)],  # mean 0.55: chosen
        "sgd-lr1": [result(0.40), result(None, diverged=True)],  # a run without result: inf
    }
    assert choose_on_validation(candidates) == "sgd-lr0.1"


def test_missing_runs_are_left_out_of_the_choice_and_ties_go_to_the_first():
    assert choose_on_validation({"a": [result(0.5), None], "b": [None, result(0.4)]}) == "b"
    assert choose_on_validation({"a": [result(0.5)], "b": [result(0.5)]}) == "a"
    assert choose_on_validation({"a": [None], "b": [result(None, diverged=True)]}) is None
    assert choose_on_validation({}) is None


# --------------------------------------------------------------------- cells
def test_a_tuned_column_reports_the_chosen_rate_and_its_test_metrics_over_seeds():
    column = Column("SGD", (sgd(0.01), sgd(0.1)))
    results = {
        "sgd-lr0.01": [result(0.9, 0.8, 0.70), result(0.9, 0.8, 0.70)],
        "sgd-lr0.1": [result(0.4, 0.5, 0.80, folder="a"), result(0.6, 0.7, 0.90, diverged=True, folder="b")],
    }
    cell = column_cell(column, results, "test_loss")
    assert (cell.method, cell.lr) == ("sgd-lr0.1", 0.1)
    assert cell.loss == Stat(0.6, pytest.approx(math.sqrt(0.02)), 2)
    assert cell.top1.mean == pytest.approx(85.0) and cell.top1.n == 2  # accuracy in %
    assert (cell.expected, cell.missing, cell.diverged, cell.no_result) == (2, 0, 1, 0)
    assert cell.validation == {"sgd-lr0.01": pytest.approx(0.9), "sgd-lr0.1": pytest.approx(0.5)}
    assert [r["folder"] for r in cell.runs] == ["a", "b"] and cell.finished == 4


def test_a_cell_counts_missing_runs_and_runs_without_a_finite_validation_loss():
    column = Column("Adam", (adam(),))
    cell = column_cell(column, {"adam": [result(0.5, 0.4, 0.9), None, result(None, diverged=True)]}, "test_loss")
    assert cell.method == "adam" and cell.lr is None  # an untuned column shows no rate
    assert cell.loss == Stat(0.4, None, 1)
    assert (cell.expected, cell.missing, cell.diverged, cell.no_result) == (3, 1, 1, 1)


def test_a_rate_chosen_before_every_rate_finished_is_flagged():
    column = Column("SGD", (sgd(0.01), sgd(0.1)))
    complete = column_cell(column, {"sgd-lr0.01": [result(0.9)], "sgd-lr0.1": [result(0.5)]}, "test_loss")
    partial = column_cell(column, {"sgd-lr0.01": [None], "sgd-lr0.1": [result(0.5)]}, "test_loss")
    assert not complete.choice_incomplete and partial.choice_incomplete
    assert not column_cell(Column("Adam", (adam(),)), {"adam": [None]}, "test_loss").choice_incomplete


def test_a_column_without_any_finished_run_has_no_numbers():
    cell = column_cell(table1_columns("VGG19")[0], {}, "test_loss")
    assert cell.method is None and cell.loss is None and cell.top1 is None and cell.finished == 0
    assert set(cell.validation) == {f"sgd-lr{lr:g}" for lr in SGD_RATES}


# -------------------------------------------------------------------- tables
def test_published_numbers_are_the_papers_text():
    alrao = PAPER_TABLE1[("VGG19", 3)]["Alrao"]
    assert alrao.loss_text == "0.381 ± 0.004" and alrao.loss == (0.381, 0.004) and alrao.top1 == (88.4, 0.7)
    assert PAPER_TABLE1[("LSTM", 1)]["SGD"].lr == 1.0 and "SGD" not in PAPER_TABLE1[("GoogLeNet", 3)]


def test_rates_and_seeds_are_written_as_the_paper_does():
    assert [format_rate(lr) for lr in SGD_RATES] == ["1e-5", "1e-4", "1e-3", "1e-2", "1e-1", "1", "10"]
    assert [format_rate(10 ** (-5 + 6 * j / 9)) for j in range(10)] == [
        "1e-5",
        "4.6e-5",
        "2.2e-4",
        "1e-3",
        "4.6e-3",
        "0.022",
        "1e-1",
        "0.46",
        "2.2",
        "10",
    ]  # Alrao's copies
    assert format_rate(250.0) == "2.5e2" and format_rate(None) == "–"
    float32 = [float(np.float32(lr)) for lr in (1e-5, 1e-3, 0.1, 10 ** (-5 + 6 / 9))]  # rates read from tensors
    assert [format_rate(lr) for lr in float32] == ["1e-5", "1e-3", "1e-1", "4.6e-5"]
    assert format_seeds([3, 0, 1, 2, 7]) == "0-3, 7" and format_seeds([0]) == "0"


def _row(comparable):
    column = Column("SGD", (sgd(0.01), sgd(0.1)))
    cell = column_cell(
        column, {"sgd-lr0.1": [result(0.4, 0.40, 0.9), result(0.6, 0.50, 0.8, diverged=True), None]}, "test_loss"
    )
    return RowResult(
        Row("VGG19", 1, (column,)),
        "cifar10" if comparable else "digits",
        "nats",
        [cell],
        PAPER_TABLE1[("VGG19", 1)],
        comparable,
    )


def test_the_markdown_table_puts_ours_the_paper_and_the_difference_side_by_side():
    provenance = Provenance("paper", "0-2", "abc1234", "python reproduce.py table1")
    text = markdown_table1([_row(True)], provenance, 1, "runs/x")
    lines = text.splitlines()
    assert "profile paper · seeds 0-2 · commit abc1234" in lines[2]
    assert lines[4] == "| Model |  | SGD best lr | SGD loss | SGD top-1 |"
    assert lines[6] == "| CIFAR-10 VGG19 | ours | 1e-1 | 0.45 ± 0.07 † ‡ (n=2/3) | 85.0 ± 7.1 † ‡ (n=2/3) |"
    assert lines[7] == "|  | paper (CIFAR-10) | 1e-1 | 0.42 ± 0.02 | 89.5 ± 0.2 |"
    assert lines[8] == "|  | ours − paper |  | +0.03 | -4.5 |"
    table = json_table1([_row(True)], provenance, 1)
    sgd_cell = table["rows"][0]["cells"]["SGD"]
    assert table["commit"] == "abc1234" and sgd_cell["loss"]["mean"] == pytest.approx(0.45)
    assert sgd_cell["difference"]["top1"] == pytest.approx(85.0 - 89.5)


def test_results_say_when_their_runs_were_trained_by_other_code():
    assert Provenance("quick", "0", "abc", "cmd", ("abc",)).line() == "profile quick · seeds 0 · commit abc"
    other = Provenance("quick", "0", "abc", "cmd", ("123", "abc"))
    assert other.line().endswith("commit abc (runs trained at 123, abc)") and other.as_dict()["run_commits"] == [
        "123",
        "abc",
    ]


def test_other_data_get_the_papers_numbers_for_reference_but_no_difference():
    provenance = Provenance("quick", "0-1", "unknown", "python reproduce.py table1 --profile quick")
    text = markdown_table1([_row(False)], provenance, PROFILES["quick"].size_multiplier, "runs/x")
    assert "| digits VGG19 width×0.25 | ours |" in text and "paper (CIFAR-10)" in text
    assert "ours − paper" not in text and "without a difference" in text
    assert json_table1([_row(False)], provenance, 0.25)["rows"][0]["cells"]["SGD"]["difference"] is None


def test_runs_note_names_runs_inside_the_repository_by_their_relative_path(tmp_path):
    """A committed table names ``runs/regenerate-<hash>`` whatever clone regenerated it."""
    root = Path(__file__).resolve().parents[1]
    assert runs_note(root / "runs" / "regenerate-abc") == "Runs: `runs/regenerate-abc`."
    assert runs_note(tmp_path / "runs") == f"Runs: `{tmp_path / 'runs'}`."
