"""The promotion gate on hand-made metrics: the rules, their numbers and their reasons."""

from __future__ import annotations

import numpy as np
import pytest

from droughtwatch_assets.core.promotion import majority_baseline, promotion_gate

# Drought Watch validation balance: always guessing class 0 scores ~0.60 accuracy, ~0.19 macro F1.
MAJORITY = {"accuracy": 0.598, "macro_f1": 0.187}
GOOD = {"accuracy": 0.71, "macro_f1": 0.52}


def test_first_good_model_is_promoted():
    decision = promotion_gate(challenger=GOOD, champion=None, majority=MAJORITY)
    assert decision.promote
    assert decision.reason.startswith("promoted")
    assert "no champion yet" in decision.reason
    assert decision.champion is None
    assert (decision.challenger, decision.majority) == (0.52, 0.187)
    assert (decision.challenger_accuracy, decision.majority_accuracy) == (0.71, 0.598)
    assert (decision.metric, decision.margin, decision.tolerance) == ("macro_f1", 0.10, 0.0)


def test_dummy_like_model_is_refused_with_the_margin_in_the_reason():
    # An untrained network that always says "0": majority accuracy, majority macro F1.
    dummy = {"accuracy": 0.598, "macro_f1": 0.187}
    decision = promotion_gate(challenger=dummy, champion=None, majority=MAJORITY)
    assert not decision.promote
    assert decision.reason.startswith("refused")
    assert "margin 0.10" in decision.reason
    assert "0.2870" in decision.reason  # the bar it missed: 0.187 + 0.10


def test_uniform_random_model_is_refused_on_both_rules():
    # Random guessing: ~0.25 accuracy, macro F1 ~0.21; fails margin and accuracy floor.
    decision = promotion_gate(
        challenger={"accuracy": 0.25, "macro_f1": 0.21},
        champion=None,
        majority=MAJORITY,
        accuracy_slack=0.05,
    )
    assert not decision.promote
    assert "margin" in decision.reason and "slack 0.05" in decision.reason


def test_high_macro_f1_but_accuracy_far_below_majority_is_refused():
    decision = promotion_gate(
        challenger={"accuracy": 0.30, "macro_f1": 0.40}, champion=None, majority=MAJORITY
    )
    assert not decision.promote
    assert "accuracy 0.3000 is below majority-class accuracy 0.5980" in decision.reason
    assert "margin" not in decision.reason.split("refused:")[1]


def test_accuracy_slack_is_a_parameter():
    challenger = {"accuracy": 0.50, "macro_f1": 0.40}
    decision = promotion_gate(
        challenger=challenger, champion=None, majority=MAJORITY, accuracy_slack=0.15
    )
    assert decision.promote
    assert decision.accuracy_slack == 0.15


def test_worse_than_champion_is_refused():
    decision = promotion_gate(
        challenger=GOOD, champion={"accuracy": 0.74, "macro_f1": 0.58}, majority=MAJORITY
    )
    assert not decision.promote
    assert "worse than the champion's 0.5800" in decision.reason
    assert decision.champion == 0.58


def test_better_than_champion_is_promoted():
    decision = promotion_gate(
        challenger=GOOD, champion={"accuracy": 0.70, "macro_f1": 0.50}, majority=MAJORITY
    )
    assert decision.promote
    assert "champion 0.5000" in decision.reason


def test_tie_with_champion_promotes_and_tolerance_allows_slightly_worse():
    tie = promotion_gate(challenger=GOOD, champion=dict(GOOD), majority=MAJORITY)
    assert tie.promote
    slightly_worse = {"accuracy": 0.71, "macro_f1": 0.51}
    assert not promotion_gate(challenger=slightly_worse, champion=GOOD, majority=MAJORITY).promote
    tolerated = promotion_gate(
        challenger=slightly_worse, champion=GOOD, majority=MAJORITY, tolerance=0.02
    )
    assert tolerated.promote and tolerated.tolerance == 0.02


def test_exactly_on_the_margin_passes_despite_float_noise():
    # 0.1 + 0.2 != 0.3 in binary floating point; the gate must not refuse on that.
    decision = promotion_gate(
        challenger={"accuracy": 0.6, "macro_f1": 0.3},
        champion=None,
        majority={"accuracy": 0.6, "macro_f1": 0.2},
        margin=0.1,
    )
    assert decision.promote


def test_other_primary_metric():
    decision = promotion_gate(
        challenger={"accuracy": 0.70, "macro_f1": 0.10},
        champion=None,
        majority=MAJORITY,
        metric="accuracy",
    )
    assert decision.promote and decision.metric == "accuracy"


@pytest.mark.parametrize(
    ("challenger", "match"),
    [
        ({"accuracy": 0.7}, "challenger metrics lack 'macro_f1'"),
        ({"accuracy": 0.7, "macro_f1": float("nan")}, "not a finite number"),
    ],
)
def test_bad_metrics_give_clear_errors(challenger, match):
    with pytest.raises(ValueError, match=match):
        promotion_gate(challenger=challenger, champion=None, majority=MAJORITY)


def test_negative_margin_is_rejected():
    with pytest.raises(ValueError, match="margin"):
        promotion_gate(challenger=GOOD, champion=None, majority=MAJORITY, margin=-0.1)


def test_majority_baseline_matches_the_drought_watch_numbers():
    # Validation balance from the benchmark: 6443 / 1710 / 1673 / 952.
    labels = np.repeat([0, 1, 2, 3], [6443, 1710, 1673, 952])
    baseline = majority_baseline(labels, majority_class=0)
    assert baseline["accuracy"] == pytest.approx(0.5978, abs=1e-4)
    assert baseline["macro_f1"] == pytest.approx(0.1871, abs=1e-4)
    # A class absent from the labels scores zero everywhere.
    assert majority_baseline([0, 1, 1], majority_class=3) == {"accuracy": 0.0, "macro_f1": 0.0}


def test_majority_baseline_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside 0..3"):
        majority_baseline([0, 4], majority_class=0)
    with pytest.raises(ValueError, match="at least one label"):
        majority_baseline([], majority_class=0)


@pytest.mark.parametrize(
    ("who", "match"),
    [
        ("challenger-accuracy", "challenger metrics lack 'accuracy'"),
        ("majority-metric", "majority-class baseline metrics lack 'macro_f1'"),
        ("majority-accuracy", "majority-class baseline metrics lack 'accuracy'"),
        ("champion", "champion metrics lack 'macro_f1'"),
    ],
)
def test_a_missing_metric_names_whose_it_is(who, match):
    """Each side's missing metric is named with the side it is missing from."""
    args = {
        "challenger": {"accuracy": 0.7, "macro_f1": 0.4},
        "champion": None,
        "majority": {"accuracy": 0.6, "macro_f1": 0.19},
    }
    if who == "challenger-accuracy":
        args["challenger"] = {"macro_f1": 0.4}
    elif who == "majority-metric":
        args["majority"] = {"accuracy": 0.6}
    elif who == "majority-accuracy":
        args["majority"] = {"macro_f1": 0.19}
    else:
        args["champion"] = {"accuracy": 0.7}
    with pytest.raises(ValueError, match=match):
        promotion_gate(**args)


def test_zero_margin_tolerance_and_slack_are_allowed_and_each_negative_one_is_not():
    decision = promotion_gate(
        challenger={"accuracy": 0.60, "macro_f1": 0.19},
        champion={"accuracy": 0.60, "macro_f1": 0.19},
        majority={"accuracy": 0.60, "macro_f1": 0.19},
        margin=0.0, tolerance=0.0, accuracy_slack=0.0,
    )  # fmt: skip
    assert decision.promote
    for name in ("margin", "tolerance", "accuracy_slack"):
        with pytest.raises(ValueError, match="must be >= 0"):
            promotion_gate(challenger=GOOD, champion=None, majority=MAJORITY, **{name: -0.01})


def test_the_reason_lists_every_rule_in_order():
    """Promoted: all three passes, '; '-joined; refused: every failure, '; '-joined."""
    promoted = promotion_gate(
        challenger={"accuracy": 0.70, "macro_f1": 0.40},
        champion=None,
        majority={"accuracy": 0.60, "macro_f1": 0.19},
    )
    assert promoted.reason == (
        "promoted: macro_f1 0.4000 >= majority 0.1900 + margin 0.10; "
        "accuracy 0.7000 >= majority 0.6000 - 0.25; no champion yet"
    )
    refused = promotion_gate(
        challenger={"accuracy": 0.30, "macro_f1": 0.20},
        champion={"accuracy": 0.70, "macro_f1": 0.40},
        majority={"accuracy": 0.60, "macro_f1": 0.19},
    )
    assert refused.reason == (
        "refused: macro_f1 0.2000 is below majority-class 0.1900 + margin 0.10 = 0.2900; "
        "accuracy 0.3000 is below majority-class accuracy 0.6000 - slack 0.25 = 0.3500; "
        "macro_f1 0.2000 is worse than the champion's 0.4000 (tolerance 0.00)"
    )


def test_majority_class_must_be_one_of_the_classes():
    with pytest.raises(ValueError, match=r"majority class 4 is not in 0..3"):
        majority_baseline([0, 1], majority_class=4)
    with pytest.raises(ValueError, match=r"majority class -1 is not in 0..3"):
        majority_baseline([0, 1], majority_class=-1)
    assert majority_baseline([3, 3, 0, 1], majority_class=3) == {
        "accuracy": 0.5,
        "macro_f1": pytest.approx(2 * 0.5 / 1.5 / 4),
    }
