"""Hyper-parameter tuning of a training recipe with Optuna (`nasrec tune`), at the search layer.

- `space`: what is searched (`TuneSpace`: the default one derived from the model, or a user's YAML file);
- `recipe`: a recipe file (model, hyper-parameters, training settings), written by a tune, read by `nasrec train`;
- `trial`: one trial's training, with its validation evaluations reported for pruning;
- `api`: `tune`, the study in the run directory (SQLite), its workers, resume and the best recipe.

Optuna is an optional dependency (`pip install 'nasrec[tune]'`), imported when a tune starts.
"""
