"""Record NannyML's CBPE estimates for a few sets of calibrated probabilities, for
droughtwatch_tests/core/test_calibration.py to compare ours with (`make nannyml-reference`
runs this in its own environment; the JSON it writes is committed).

Each case: a reference period of labelled, calibrated probabilities (labels drawn from them)
and an analysis period (probabilities only). NannyML fits on the reference and estimates
multiclass accuracy and macro F1 on the analysis period as one chunk, with no recalibration of
its own (the probabilities are calibrated already, as droughtwatch serves them).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # no telemetry
warnings.filterwarnings("ignore")

OUT = Path(__file__).resolve().parents[1] / "core" / "nannyml_cbpe_reference.json"
CASES = [  # seed, analysis rows, logit scale, class bias
    (1, 300, 1.2, (1.0, 0.0, 0.0, -0.5)),
    (2, 300, 2.5, (0.0, 0.0, 0.0, 0.0)),
    (3, 200, 0.6, (2.0, -0.5, -0.5, -1.0)),
]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _draw(rng: np.random.Generator, n: int, scale: float, bias) -> tuple[np.ndarray, np.ndarray]:
    p = np.round(_softmax(rng.normal(size=(n, 4)) * scale + np.array(bias)), 6)
    p /= p.sum(axis=1, keepdims=True)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return p, labels


def _frame(p: np.ndarray, labels: np.ndarray | None) -> pd.DataFrame:
    df = pd.DataFrame({f"p{k}": p[:, k] for k in range(4)})
    df["pred"] = p.argmax(axis=1)
    if labels is not None:
        df["y"] = labels
    return df


def main() -> int:
    import nannyml as nml
    from nannyml.calibration import NoopCalibrator

    cases = []
    for seed, n, scale, bias in CASES:
        rng = np.random.default_rng(seed)
        ref_p, ref_y = _draw(rng, 4000, scale, bias)
        ana_p, _ = _draw(rng, n, scale, bias)
        estimator = nml.CBPE(
            y_pred_proba={k: f"p{k}" for k in range(4)}, y_pred="pred", y_true="y",
            problem_type="classification_multiclass", metrics=["accuracy", "f1"],
            chunk_number=1,
            # The probabilities are calibrated already (droughtwatch scales them at training):
            # compare the estimator itself, not NannyML's own isotonic recalibration.
            calibrator=NoopCalibrator(),
        )  # fmt: skip
        estimator.fit(_frame(ref_p, ref_y))
        result = estimator.estimate(_frame(ana_p, None)).filter(period="analysis").to_df()
        cases.append(
            {
                "seed": seed,
                "probabilities": ana_p.tolist(),
                "accuracy": float(result[("accuracy", "value")].iloc[0]),
                "macro_f1": float(result[("f1", "value")].iloc[0]),
            }
        )
    OUT.write_text(json.dumps({"nannyml": nml.__version__, "cases": cases}) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases, nannyml {nml.__version__})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
