"""The promotion gate: may a freshly trained challenger become the champion? Pure Python.

All three rules compare metrics measured on the same validation shards:

1. **Beats the majority guess by a clear margin** on the primary metric, macro F1:
   ``challenger[metric] >= majority[metric] + margin`` (default margin 0.10). Macro F1 is the
   primary metric because the class-weighted models trade accuracy for minority-class recall,
   and always predicting class 0 scores about 0.60 accuracy on Drought Watch but only about
   0.19 macro F1: accuracy alone would let a useless model through.
2. **Not far below the majority guess in accuracy**:
   ``challenger["accuracy"] >= majority["accuracy"] - accuracy_slack`` (default slack 0.25).
   A model that buys macro F1 by wrecking the frequent class is not promoted either. The slack
   is wide on purpose: the earlier project's class weights (1, 4, 4, 6) make a briefly
   trained model favour the rare classes, so after 2 epochs on a small corpus a useful baseline
   sits well below the majority guess in accuracy (0.38 against 0.60 in the tests) while its
   macro F1 clears rule 1.
3. **No worse than the current champion** when there is one:
   ``challenger[metric] >= champion[metric] - tolerance`` (default tolerance 0.0, so a tie
   promotes the newer model).

Every rule is checked and every failure is named in the reason, with the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # a human sentence: which rule passed or failed, with the numbers
    metric: str
    challenger: float
    champion: float | None
    majority: float
    challenger_accuracy: float
    majority_accuracy: float
    margin: float
    tolerance: float
    accuracy_slack: float = 0.25


def majority_baseline(
    labels: Sequence[int], majority_class: int, n_classes: int = 4
) -> dict[str, float]:
    """Accuracy and macro F1 of always predicting ``majority_class`` on these labels.

    ``majority_class`` comes from the training labels; ``labels`` are the validation labels the
    challenger is scored on. Only that class gets a non-zero F1 (precision = its share,
    recall = 1), so macro F1 is ``2p / (1 + p) / n_classes``: about 0.19 at p = 0.60.
    """
    if len(labels) == 0:
        raise ValueError("majority baseline needs at least one label")
    if not 0 <= majority_class < n_classes:
        raise ValueError(f"majority class {majority_class} is not in 0..{n_classes - 1}")
    bad = [x for x in labels if not 0 <= int(x) < n_classes]
    if bad:
        raise ValueError(f"labels outside 0..{n_classes - 1}: {sorted(set(bad))[:5]}")
    share = sum(1 for x in labels if int(x) == majority_class) / len(labels)
    f1 = 2 * share / (1 + share) if share > 0 else 0.0
    return {"accuracy": share, "macro_f1": f1 / n_classes}


def _value(metrics: Mapping[str, float], key: str, who: str) -> float:
    if key not in metrics:
        raise ValueError(f"{who} metrics lack {key!r} (have: {sorted(metrics)})")
    value = float(metrics[key])
    if not math.isfinite(value):
        raise ValueError(f"{who} metric {key!r} is not a finite number: {metrics[key]!r}")
    return value


def promotion_gate(
    *,
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    majority: Mapping[str, float],
    metric: str = "macro_f1",
    margin: float = 0.10,
    tolerance: float = 0.0,
    accuracy_slack: float = 0.25,
) -> GateDecision:
    """Decide whether the challenger replaces the champion; see the module docstring."""
    if margin < 0 or tolerance < 0 or accuracy_slack < 0:
        raise ValueError(
            f"margin, tolerance and accuracy_slack must be >= 0 "
            f"(got {margin}, {tolerance}, {accuracy_slack})"
        )
    ch = _value(challenger, metric, "challenger")
    ch_acc = _value(challenger, "accuracy", "challenger")
    maj = _value(majority, metric, "majority-class baseline")
    maj_acc = _value(majority, "accuracy", "majority-class baseline")
    champ = None if champion is None else _value(champion, metric, "champion")

    failures: list[str] = []
    passes: list[str] = []
    # A tiny epsilon keeps exact ties (0.1 + 0.2 style float noise) on the passing side.
    eps = 1e-12

    needed = maj + margin
    if ch + eps >= needed:
        passes.append(f"{metric} {ch:.4f} >= majority {maj:.4f} + margin {margin:.2f}")
    else:
        failures.append(
            f"{metric} {ch:.4f} is below majority-class {maj:.4f} + margin {margin:.2f} "
            f"= {needed:.4f}"
        )

    floor = maj_acc - accuracy_slack
    if ch_acc + eps >= floor:
        passes.append(f"accuracy {ch_acc:.4f} >= majority {maj_acc:.4f} - {accuracy_slack:.2f}")
    else:
        failures.append(
            f"accuracy {ch_acc:.4f} is below majority-class accuracy {maj_acc:.4f} "
            f"- slack {accuracy_slack:.2f} = {floor:.4f}"
        )

    if champ is None:
        passes.append("no champion yet")
    elif ch + eps >= champ - tolerance:
        passes.append(f"{metric} {ch:.4f} >= champion {champ:.4f} - tolerance {tolerance:.2f}")
    else:
        failures.append(
            f"{metric} {ch:.4f} is worse than the champion's {champ:.4f} "
            f"(tolerance {tolerance:.2f})"
        )

    promote = not failures
    reason = ("promoted: " + "; ".join(passes)) if promote else ("refused: " + "; ".join(failures))
    return GateDecision(
        promote=promote,
        reason=reason,
        metric=metric,
        challenger=ch,
        champion=champ,
        majority=maj,
        challenger_accuracy=ch_acc,
        majority_accuracy=maj_acc,
        margin=margin,
        tolerance=tolerance,
        accuracy_slack=accuracy_slack,
    )
