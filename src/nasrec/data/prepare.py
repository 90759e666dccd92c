"""`nasrec prepare`: raw click logs to a columnar cache, in two streaming passes.

Pass 1 reads the inputs chunk by chunk (bounded memory), validates every value and writes labels,
first-pass dense values and categorical ids in file order. The split is then computed from the labels.
Pass 2, only when a fitted encoder is asked for (vocabularies, standardisation), fits it on the train
rows and rewrites the arrays block by block. The cache directory appears only when complete.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasrec import __version__
from nasrec.console import Heartbeat, duration, progress_bar
from nasrec.data.cache import AppendableArray, CacheWriter, read_rows, write_rows
from nasrec.data.encoders import (
    EncoderState,
    HashEncoder,
    Standardizer,
    VocabCounter,
    VocabEncoder,
)
from nasrec.data.formats import builtin_schema
from nasrec.data.integrity import record_files
from nasrec.data.parse import ChunkParser, EncodingPlan, make_plan
from nasrec.data.readers import DEFAULT_CHUNK_BYTES, SourceInfo
from nasrec.data.schema import Schema, load_schema
from nasrec.data.sources import (
    DEFAULT_MAX_BAD_FRACTION,
    ErrorLog,
    check_bad_share,
    check_inputs,
    iter_chunks,
    split_kdd_inputs,
)
from nasrec.data.split import AUTOCTR_SEED, SplitSpec, assign_splits
from nasrec.errors import NasrecError
from nasrec.prefetch import prefetch
from nasrec.rundir import exclusive

log = logging.getLogger(__name__)

PASS2_BLOCK_ROWS = 1 << 18  # rows per block of pass 2: bounds its memory


@dataclass(frozen=True)
class PrepareConfig:
    """Everything `prepare` needs; mirrors the CLI flags one to one."""

    inputs: tuple[str, ...]
    out: str
    format: str = "criteo"  # criteo | avazu | kdd12 | schema
    schema: str | None = None
    split: str = "autoctr"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int | None = None  # default: 2018 for autoctr, 0 otherwise
    encoding: str = "hash"  # hash | vocab
    min_count: int = 1
    max_table_size: int | None = None
    on_error: str = "fail"  # fail | skip
    # skip: fail all the same when more than this share of the rows read is malformed (see DEFAULT_MAX_BAD_FRACTION)
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    dense_transform: str | None = None  # override the format's default for every dense field
    drop_id: bool = False  # avazu
    time_features: bool = False  # avazu
    kdd_profile: str | None = None  # kdd12: userid_profile.txt (else taken from inputs by name)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    force: bool = False
    progress: bool = False


@dataclass(frozen=True)
class PrepareResult:
    """Summary of a finished prepare run."""

    path: Path
    rows: dict[str, int]
    ctr: dict[str, float]
    table_sizes: dict[str, int]
    skipped: int
    seconds: float
    rows_per_s: float
    peak_rss_mb: float
    meta: dict[str, Any] = field(repr=False, default_factory=dict)


def resolve_schema(cfg: PrepareConfig) -> Schema:
    """The schema of a prepare run: a built-in format (with its options) or a schema file."""
    if cfg.format == "schema":
        if not cfg.schema:
            raise NasrecError("--format schema needs --schema FILE")
        schema = load_schema(cfg.schema)
        if cfg.dense_transform:
            schema = _with_dense_transform(schema, cfg.dense_transform)
        return schema
    if cfg.schema:
        raise NasrecError(f"--schema is only used with --format schema (got --format {cfg.format})")
    opts: dict[str, Any] = {}
    if cfg.dense_transform:
        opts["dense_transform"] = cfg.dense_transform
    if cfg.format == "avazu":
        opts.update(drop_id=cfg.drop_id, time_features=cfg.time_features)
    elif cfg.drop_id or cfg.time_features:
        raise NasrecError("--drop-id and --time-features apply to --format avazu only")
    return builtin_schema(cfg.format, **opts)


def _with_dense_transform(schema: Schema, transform: str) -> Schema:
    from dataclasses import replace

    return replace(schema, dense=tuple(replace(f, transform=transform) for f in schema.dense))


def prepare(cfg: PrepareConfig) -> PrepareResult:
    """Prepare raw inputs into a cache directory (see module docstring)."""
    t0 = time.perf_counter()
    if cfg.on_error not in ("fail", "skip"):
        raise NasrecError(f"--on-error must be 'fail' or 'skip', not {cfg.on_error!r}")
    if cfg.min_count < 1:
        raise NasrecError(f"--min-count must be at least 1, not {cfg.min_count}")
    if not 0 <= cfg.max_bad_fraction <= 1:
        raise NasrecError(f"--max-bad-fraction must be between 0 and 1, not {cfg.max_bad_fraction}")
    schema = resolve_schema(cfg)
    plan = make_plan(schema, cfg.encoding, cfg.max_table_size)
    seed = cfg.seed if cfg.seed is not None else (AUTOCTR_SEED if cfg.split.startswith("autoctr") else 0)
    spec = SplitSpec(cfg.split, tuple(cfg.ratios), seed)
    paths = [Path(p) for p in cfg.inputs]
    check_inputs(paths)
    errors = ErrorLog() if cfg.on_error == "skip" else None
    parser = ChunkParser(plan, on_bad_row=errors)
    # One writer per output: the cache directory is replaced as a whole, so its lock file lies beside it.
    with exclusive(cfg.out, "cache", beside=True):
        return _prepare_locked(cfg, t0, schema, plan, spec, paths, errors, parser)


def _prepare_locked(
    cfg: PrepareConfig,
    t0: float,
    schema: Schema,
    plan: EncodingPlan,
    spec: SplitSpec,
    paths: list[Path],
    errors: ErrorLog | None,
    parser: ChunkParser,
) -> PrepareResult:
    try:
        writer = CacheWriter(cfg.out, overwrite=cfg.force)
    except OSError as e:  # e.g. a parent of --out is a file, or not writable
        raise NasrecError(f"{cfg.out}: cannot create the cache directory ({e.strerror or e})") from None
    with writer:
        D, S = len(plan.dense), len(plan.sparse)
        sparse_dtype = np.int32 if plan.mode == "hash" else np.int64
        arrays = {
            "label": AppendableArray(writer.path("label.npy"), np.float32),
            "dense": AppendableArray(writer.path("dense.npy"), np.float32, (D,)),
            "sparse": AppendableArray(
                writer.path("sparse.npy" if plan.mode == "hash" else "sparse_raw.npy"), sparse_dtype, (S,)
            ),
            "line": AppendableArray(writer.path("source_line.npy"), np.int64),
        }
        infos: list[SourceInfo] = []
        total_bytes = sum(p.stat().st_size for p in paths)
        bar = _progress(cfg.progress, total_bytes)
        log.info(
            "prepare %s: reading %d file(s), %s MB (%s format, %s encoding, %s split)",
            cfg.out,
            len(paths),
            f"{total_bytes / 1e6:,.1f}",
            cfg.format,
            plan.mode,
            cfg.split,
        )
        beat, read_bytes = Heartbeat(), 0
        try:
            chunks = iter_chunks(
                schema,
                paths,
                fmt=cfg.format,
                kdd_profile=cfg.kdd_profile,
                chunk_bytes=cfg.chunk_bytes,
                on_bad=errors,
                infos=infos,
            )
            parsed_chunks = ((parser.parse(c), c.nbytes) for c in chunks)
            for parsed, nbytes in prefetch(parsed_chunks, 2, "nasrec-prepare-reader"):
                arrays["label"].append(parsed.label)
                arrays["dense"].append(parsed.dense)
                arrays["sparse"].append(parsed.sparse)
                arrays["line"].append(parsed.lines)
                if bar is not None:
                    bar.update(nbytes)
                read_bytes += nbytes
                if bar is None and beat():  # every 30 s when no bar shows the progress
                    log.info(
                        "prepare: read %s of %s MB, %s rows",
                        f"{read_bytes / 1e6:,.1f}",
                        f"{total_bytes / 1e6:,.1f}",
                        f"{arrays['label'].rows:,}",
                    )
        finally:
            for a in arrays.values():
                a.close()
            if bar is not None:
                bar.close()
        n = arrays["label"].rows
        where = ", ".join(map(str, paths))
        if errors is not None:
            check_bad_share(where, n, errors, cfg.max_bad_fraction)
        if n == 0:
            raise NasrecError(f"{where}: no data rows")

        log.info(
            "prepare: read %s rows in %s%s",
            f"{n:,}",
            duration(time.perf_counter() - t0),
            f", skipped {errors.count:,} bad rows" if errors and errors.count else "",
        )
        label = read_rows(writer.path("label.npy"), 0, n).astype(np.int8)  # 0/1: one byte per row
        splits = assign_splits(label, spec)
        log.info("prepare: split %s", ", ".join(f"{k} {len(v):,}" for k, v in splits.items()))
        for name, idx in splits.items():
            np.save(writer.path(f"splits/{name}.npy"), idx)
        train_mask = np.zeros(n, dtype=bool)
        train_mask[splits["train"]] = True

        state = _fit_and_transform(writer, plan, train_mask, cfg.min_count)
        state.save_arrays(writer.tmp)

        rows = {k: len(v) for k, v in splits.items()}
        ctr = {k: (float(label[v].mean()) if len(v) else float("nan")) for k, v in splits.items()}
        meta: dict[str, Any] = {
            "nasrec_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "format": cfg.format,
            "schema": schema.to_dict(),
            "rows": n,
            "dense_fields": plan.dense_names,
            "sparse_fields": plan.sparse_names,
            "table_sizes": state.table_sizes(plan.sparse_names),
            "encoder": state.to_dict(),
            "split": {**spec.to_dict(), "rows": rows, "ctr": ctr},
            "sources": [vars(i) for i in infos],
            "skipped": {
                "count": errors.count if errors else 0,
                "rows_read": n + (errors.count if errors else 0),
                "examples": errors.sorted_examples() if errors else [],
            },
        }
        if cfg.format == "kdd12":
            meta["kdd_profile"] = str(split_kdd_inputs(paths, cfg.kdd_profile)[1])
        bayes = _bayes_floor(paths, writer, splits, label)
        if bayes is not None:
            meta["bayes_logloss"] = bayes
        meta["files"] = record_files(writer.tmp)  # sizes, mtimes, checksums and id ranges (integrity.py)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        meta["prepare_stats"] = {
            "seconds": round(seconds, 3),
            "rows_per_s": round(n / seconds),
            "peak_rss_mb": round(peak),
        }
        writer.commit(meta)
    log.info("prepare: wrote the cache %s in %s (%s rows/s)", cfg.out, duration(seconds), f"{n / seconds:,.0f}")
    return PrepareResult(
        path=Path(cfg.out),
        rows=rows,
        ctr=ctr,
        table_sizes=dict(zip(plan.sparse_names, meta["table_sizes"], strict=True)),
        skipped=meta["skipped"]["count"],
        seconds=seconds,
        rows_per_s=n / seconds,
        peak_rss_mb=peak,
        meta=meta,
    )


def _fit_and_transform(writer: CacheWriter, plan: EncodingPlan, train_mask: np.ndarray, min_count: int) -> EncoderState:
    """Pass 2: fit standardisers and vocabularies on train rows, then rewrite the arrays in blocks."""
    n = len(train_mask)
    blocks = [(lo, min(lo + PASS2_BLOCK_ROWS, n)) for lo in range(0, n, PASS2_BLOCK_ROWS)]
    dense_path, raw_path = writer.path("dense.npy"), writer.path("sparse_raw.npy")
    dense_state: dict[str, dict[str, Any]] = {
        f.name: {"transform": f.transform if f.column is not None else "constant"} for f in plan.dense
    }
    std_cols = [i for i, f in enumerate(plan.dense) if f.transform == "standardize"]
    if std_cols:
        sums = np.zeros((3, len(std_cols)))
        for lo, hi in blocks:
            block = read_rows(dense_path, lo, hi)[:, std_cols][train_mask[lo:hi]].astype(np.float64)
            present = ~np.isnan(block)
            sums[0] += np.where(present, block, 0).sum(0)
            sums[1] += np.where(present, block * block, 0).sum(0)
            sums[2] += present.sum(0)
        for j, i in enumerate(std_cols):
            scaler = Standardizer().fit(sums[0, j], sums[1, j], int(sums[2, j]))
            dense_state[plan.dense[i].name].update(mean=scaler.mean, std=scaler.std)

    sparse: dict[str, HashEncoder | VocabEncoder] = {}
    if plan.mode == "hash":
        sparse = {out.name: HashEncoder(out.table_size) for out in plan.sparse}
    else:
        counters = [VocabCounter() for _ in plan.sparse]
        for lo, hi in blocks:
            block = read_rows(raw_path, lo, hi)[train_mask[lo:hi]]
            for j, c in enumerate(counters):
                c.add(block[:, j])
        for out, c in zip(plan.sparse, counters, strict=True):
            sparse[out.name] = VocabEncoder(min_count, plan.max_table_size).fit(*c.result())
    state = EncoderState(plan.mode, dense_state, sparse, plan.max_table_size)

    if std_cols:
        for lo, hi in blocks:
            write_rows(dense_path, lo, state.transform_dense(plan.dense_names, read_rows(dense_path, lo, hi)))
    if plan.mode == "vocab":
        final = AppendableArray(writer.path("sparse.npy"), np.int32, (len(plan.sparse),))
        try:
            for lo, hi in blocks:
                final.append(state.transform_sparse(plan.sparse_names, read_rows(raw_path, lo, hi)))
        finally:
            final.close()
        os.remove(raw_path)
    return state


def _bayes_floor(paths: list[Path], writer: CacheWriter, splits: dict, label: np.ndarray) -> dict | None:
    """Bayes-optimal log loss per split when the input is a synthetic file with its truth sidecar."""
    if len(paths) != 1:
        return None
    truth_path = Path(str(paths[0]) + ".truth.npy")
    if not truth_path.is_file():
        return None
    from nasrec.data.synthetic import bayes_logloss

    n = len(label)
    names = list(splits)
    split_of = np.full(n, -1, dtype=np.int8)
    for k, name in enumerate(names):
        split_of[splits[name]] = k
    total, count = np.zeros(len(names)), np.zeros(len(names), dtype=np.int64)
    n_truth = np.load(truth_path, mmap_mode="r").shape[0]
    line_path = writer.path("source_line.npy")
    for lo in range(0, n, PASS2_BLOCK_ROWS):  # in blocks: memory stays bounded for any file size
        lines = read_rows(line_path, lo, lo + PASS2_BLOCK_ROWS)
        if lines[-1] > n_truth:
            return None  # the sidecar does not describe this file
        p = read_rows(truth_path, int(lines[0]) - 1, int(lines[-1]))[lines - lines[0]]
        y, which = label[lo : lo + len(lines)], split_of[lo : lo + len(lines)]
        for k in range(len(names)):
            sel = which == k
            if sel.any():
                total[k] += bayes_logloss(p[sel], y[sel]) * int(sel.sum())
                count[k] += int(sel.sum())
    return {name: (float(total[k] / count[k]) if count[k] else None) for k, name in enumerate(names)}


def _progress(enabled: bool, total: int):
    return progress_bar(enabled, total=total, unit="B", unit_scale=True, desc="prepare")
