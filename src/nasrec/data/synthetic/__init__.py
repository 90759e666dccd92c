"""Criteo-shaped synthetic click logs drawn from a known ground-truth click model.

The generator writes three files:

``<path>``
    The raw Criteo Kaggle format: tab-separated, no header, one row per line with the label
    (``0``/``1``), ``num_dense`` integer counts (empty when missing) and ``num_sparse`` categorical
    values, each an 8-character lowercase hex string (empty when missing).
``<path>.truth.npy``
    float64 ``[rows]``: the true click probability of every row, in file order. Predicting it is
    Bayes-optimal, so its log loss on any subset of rows is the floor a model can reach there.
``<path>.synth.json``
    The configuration, seed, row and positive counts, the planted structure of the click model and
    the Bayes-optimal log loss (realised and expected) over the whole file.

The click model is ``p = sigmoid(logit)`` with

    logit = intercept
          + sum_f  w_f[c_f]                                    first order, every sparse field
          + sum_k  a_k * (log1p(x_k) - mu_k) / sigma_k         a few dense fields
          + sum_(i,j) u_ij[c_i] . v_ij[c_j]                    planted low-rank field pairs
          + sum_(k,m) sigmoid(s * (log1p(x_k) - mu_k) / sigma_k) * g_km[c_m]   gated dense-sparse

where a missing categorical value is a category of its own (index 0) with its own weights, and a
missing dense value contributes its own weight to the linear term and ``log1p(x) = 0`` to a gate.
Every table is centred under the field's marginal distribution, so the pair and gate terms carry no
first-order signal a purely additive model could pick up, and scaled so that each term's standard
deviation over rows equals the configured strength.

Rows are drawn in fixed blocks of ``BLOCK_ROWS`` rows, each from its own generator derived from the
seed and the block number, so the output does not depend on how it is written out, and the first
``n`` rows of a larger file are exactly the ``n``-row file.

The click model (vocabularies, weights, intercept) comes from ``model_seed`` and the rows from ``seed``;
by default the two are the same. New rows from the click model of an existing file, e.g. to predict
on with a model trained on it, take that file's configuration and model seed with another row seed
(``click_model_of``; ``nasrec synth --like FILE``). Another ``seed`` alone draws another click model:
other category codes, other weights, so a model trained on the first file has nothing to go on.
"""

from nasrec.data.synthetic.clickmodel import bayes_logloss
from nasrec.data.synthetic.config import (
    BLOCK_ROWS,
    MAX_CARDINALITY,
    META_SUFFIX,
    SYNTH_PRESETS,
    TRUTH_SUFFIX,
    SynthConfig,
    SynthResult,
    meta_path,
    truth_path,
)
from nasrec.data.synthetic.generate import click_model_of, generate_synthetic, synth_schema

__all__ = [
    "BLOCK_ROWS",
    "MAX_CARDINALITY",
    "META_SUFFIX",
    "SYNTH_PRESETS",
    "TRUTH_SUFFIX",
    "SynthConfig",
    "SynthResult",
    "bayes_logloss",
    "click_model_of",
    "generate_synthetic",
    "meta_path",
    "synth_schema",
    "truth_path",
]
