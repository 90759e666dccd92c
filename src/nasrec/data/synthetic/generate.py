"""Writing a synthetic Criteo-format file (`generate_synthetic`), its schema and metadata, and reading them back."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import polars as pl

from nasrec.data.schema import DenseField, Schema, SparseField
from nasrec.data.synthetic.clickmodel import (
    _STREAM_ROWS,
    _Block,
    _build_model,
    _calibrate_intercept,
    _draw_features,
    _entropy_terms,
    _logloss_terms,
    _Model,
    _sigmoid,
)
from nasrec.data.synthetic.config import (
    BLOCK_ROWS,
    FORMAT_VERSION,
    META_SUFFIX,
    SynthConfig,
    SynthResult,
    _check_int,
    meta_path,
    truth_path,
)
from nasrec.errors import NasrecError


def synth_schema(cfg: SynthConfig) -> Schema:
    """The schema of a generated file (the Criteo layout with the configured field counts)."""
    dense = tuple(DenseField(f"I{i}", f"I{i}") for i in range(1, cfg.num_dense + 1))
    sparse = tuple(
        SparseField(f"C{i}", f"C{i}", "hex", table_size=max(2 * card + 2, 16))
        for i, card in enumerate(cfg.cardinalities, 1)
    )
    columns = ("label", *(f.column for f in dense), *(f.column for f in sparse))
    return Schema(
        name="synthetic",
        label="label",
        dense=dense,
        sparse=sparse,
        separator="\t",
        header=False,
        columns=columns,
        quote=None,
    )


def _block_frame(model: _Model, cfg: SynthConfig, block: _Block, labels: np.ndarray) -> pl.DataFrame:
    """The Criteo text columns of one block: label, I1..In with nulls, C1..Cn as hex strings."""
    columns: list[pl.Series] = [pl.Series("label", labels.astype(np.int8))]
    for k in range(cfg.num_dense):
        s = pl.Series(f"I{k + 1}", block.dense[k])
        if block.dense_missing[k].any():
            s = s.set(pl.Series(block.dense_missing[k]), None)
        columns.append(s)
    for f, vocab in enumerate(model.vocab):
        columns.append(vocab.gather(block.sparse[f]))
    return pl.DataFrame(columns)


def _flush(fh: BinaryIO, frames: list[pl.DataFrame]) -> None:
    pl.concat(frames, rechunk=False).write_csv(fh, separator="\t", include_header=False, null_value="")
    frames.clear()


def generate_synthetic(
    path: str | Path,
    rows: int,
    seed: int = 0,
    config: SynthConfig | None = None,
    chunk_rows: int = 250_000,
    model_seed: int | None = None,
) -> SynthResult:
    """Write ``rows`` synthetic Criteo-format rows to ``path`` plus the truth and JSON sidecars.

    Existing files are replaced. ``chunk_rows`` only sets how many rows are buffered per write (it
    bounds memory); the rows themselves depend on nothing but ``seed``, ``model_seed`` and ``config``.
    ``model_seed`` (default ``seed``) draws the click model, ``seed`` the rows: files with the same
    configuration and model seed share one click model whatever their row seeds.
    """
    start = time.perf_counter()
    rows = _check_int("rows", rows, 1)
    seed = _check_int("seed", seed, 0)
    model_seed = seed if model_seed is None else _check_int("model_seed", model_seed, 0)
    chunk_rows = _check_int("chunk_rows", chunk_rows, 1)
    if config is not None and not isinstance(config, SynthConfig):
        raise NasrecError(f"config must be a SynthConfig, got {type(config).__name__}")
    cfg = config or SynthConfig()
    path = Path(path)
    if path.is_dir():
        raise NasrecError(f"{path} is a directory, expected a file path for the synthetic data")
    path.parent.mkdir(parents=True, exist_ok=True)

    model = _build_model(cfg, model_seed)
    model.intercept = _calibrate_intercept(model, cfg, model_seed)

    # Everything goes to temporary siblings first, so a crash never leaves a file set that looks whole.
    tag = f".part-{os.getpid()}"
    final = [path, truth_path(path), meta_path(path)]
    tmp = [p.with_name(p.name + tag) for p in final]
    positives = 0
    loss_sum = 0.0
    entropy_sum = 0.0
    try:
        truth = np.lib.format.open_memmap(tmp[1], mode="w+", dtype=np.float64, shape=(rows,))
        with open(tmp[0], "wb") as fh:
            pending: list[pl.DataFrame] = []
            pending_rows = 0
            for b in range(-(-rows // BLOCK_ROWS)):
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM_ROWS, b)))
                # Always draw a whole block and cut the last one, so a file is a prefix of any longer one.
                block = _draw_features(model, cfg, rng, BLOCK_ROWS)
                p = _sigmoid(model.intercept + block.logit)
                labels = rng.random(BLOCK_ROWS) < p
                n = min(BLOCK_ROWS, rows - b * BLOCK_ROWS)
                if n < BLOCK_ROWS:
                    block = _Block(block.sparse[:, :n], block.dense[:, :n], block.dense_missing[:, :n], block.logit[:n])
                    p, labels = p[:n], labels[:n]
                truth[b * BLOCK_ROWS : b * BLOCK_ROWS + n] = p
                positives += int(labels.sum())
                loss_sum += float(_logloss_terms(p, labels).sum())
                entropy_sum += float(_entropy_terms(p).sum())
                pending.append(_block_frame(model, cfg, block, labels))
                pending_rows += n
                if pending_rows >= chunk_rows:
                    _flush(fh, pending)
                    pending_rows = 0
            if pending:
                _flush(fh, pending)
        truth.flush()
        del truth

        result = SynthResult(
            path=path,
            rows=rows,
            positives=positives,
            ctr=positives / rows,
            bayes_logloss=loss_sum / rows,
            expected_logloss=entropy_sum / rows,
            seconds=0.0,
        )
        meta = _meta(cfg, seed, model_seed, model, result)
        with open(tmp[2], "w") as fh:
            json.dump(meta, fh, indent=1)
            fh.write("\n")
        # The JSON goes last: its presence marks a complete set.
        for src, dst in zip(tmp, final, strict=True):
            os.replace(src, dst)
    except BaseException:
        for part in tmp:
            part.unlink(missing_ok=True)
        raise
    return replace(result, seconds=time.perf_counter() - start)


def _meta(cfg: SynthConfig, seed: int, model_seed: int, model: _Model, result: SynthResult) -> dict[str, Any]:
    """The JSON record: config, counts, loss floors and the planted structure of the click model."""
    return {
        "format_version": FORMAT_VERSION,
        "format": "criteo-kaggle-tsv",
        "seed": seed,
        "model_seed": model_seed,
        "rows": result.rows,
        "positives": result.positives,
        "ctr": result.ctr,
        "bayes_logloss": result.bayes_logloss,
        "expected_logloss": result.expected_logloss,
        "block_rows": BLOCK_ROWS,
        "config": asdict(cfg),
        "columns": ["label"]
        + [f"I{k + 1}" for k in range(cfg.num_dense)]
        + [f"C{f + 1}" for f in range(cfg.num_sparse)],
        "planted": {
            "intercept": model.intercept,
            "dense_linear": [
                {"dense": int(k), "weight": float(a), "missing_weight": float(am)}
                for k, a, am in zip(model.linear_fields, model.linear_weight, model.linear_missing_weight, strict=True)
            ],
            "pairs": [[i, j] for i, j in model.pairs],
            "gates": [[k, m] for k, m in model.gates],
            "dense_mu": model.dense_mu.tolist(),
            "dense_sigma": model.dense_sigma.tolist(),
        },
        "files": {"truth": truth_path(result.path).name, "data": result.path.name},
    }


def click_model_of(path: str | Path) -> tuple[SynthConfig, int, int]:
    """The configuration, click-model seed and row seed of a synthetic file (read from its sidecar).

    `path` is the data file (or its ``.synth.json``). ``generate_synthetic(out, rows, seed=s,
    config=config, model_seed=model_seed)`` with another ``s`` then draws new rows from the same click
    model: same fields, same category codes, same weights.
    """
    path = Path(path)
    meta = path if path.name.endswith(META_SUFFIX) else meta_path(path)
    try:
        record = json.loads(meta.read_text())
    except FileNotFoundError:
        raise NasrecError(f"{path}: no {meta.name} beside it (not a file written by nasrec synth)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise NasrecError(f"{meta}: unreadable ({e})") from None
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        raise NasrecError(f"{meta}: not a synthetic data description of format version {FORMAT_VERSION}")
    known = {f.name for f in fields(SynthConfig)}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in record["config"].items() if k in known}
    seed = int(record["seed"])
    return SynthConfig(**options), int(record.get("model_seed", seed)), seed
