"""A cache's stored encoder state re-encodes raw rows exactly as prepare did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nasrec.data.cache import open_cache
from nasrec.data.encode import RowEncoder
from nasrec.data.prepare import PrepareConfig, prepare
from nasrec.data.synthetic import SynthConfig, generate_synthetic


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "synth.tsv"
    cfg = SynthConfig(cardinalities=tuple([3, 10, 50, 200, 1000] * 5 + [7]))
    generate_synthetic(path, rows=6000, seed=3, config=cfg)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("encoding", "dense", "cap"),
    [("hash", "log", None), ("hash", "bucketize", 100), ("vocab", "standardize", None), ("vocab", "log", 50)],
)
def test_round_trip_equals_prepared_arrays(synth_file: Path, tmp_path: Path, encoding: str, dense: str, cap) -> None:
    out = tmp_path / "cache"
    prepare(
        PrepareConfig(
            inputs=(str(synth_file),),
            out=str(out),
            format="criteo",
            encoding=encoding,
            dense_transform=dense,
            max_table_size=cap,
            min_count=2,
            chunk_bytes=64 << 10,
        )
    )
    cache = open_cache(out)
    enc = RowEncoder.from_cache(out)  # state re-read from disk
    rows = enc.encode([synth_file], chunk_bytes=100_000)
    np.testing.assert_array_equal(rows.label, cache.label)
    np.testing.assert_array_equal(rows.dense, cache.dense)
    np.testing.assert_array_equal(rows.sparse, cache.sparse)
    assert (rows.sparse < np.array(cache.table_sizes)).all()


def test_unseen_values_map_to_oov(synth_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare(PrepareConfig(inputs=(str(synth_file),), out=str(out), format="criteo", encoding="vocab"))
    line = "1\t" + "\t".join(["3"] * 13) + "\t" + "\t".join(["0badc0de"] * 25 + [""]) + "\n"
    new = tmp_path / "new.tsv"
    new.write_text(line)
    rows = RowEncoder.from_cache(out).encode([new])
    assert rows.sparse.tolist() == [[1] * 25 + [0]]  # unseen -> out-of-vocabulary, missing -> 0
    np.testing.assert_allclose(rows.dense, np.log(4.0) * np.ones((1, 13)), rtol=1e-6)
