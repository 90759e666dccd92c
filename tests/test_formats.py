"""Input formats and encodings: user schemas (CSV / TSV / Parquet, YAML / JSON), KDD Cup 2012, Avazu
options, dense transforms, hash and vocabulary encodings. Every expected value is computed in the test
from the raw text, independently of the code under test (except the pinned string hash).
"""

from __future__ import annotations

import datetime
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

from nasrec.data.cache import Cache, open_cache
from nasrec.data.encoders import MISSING_ID, EncoderState, VocabEncoder
from nasrec.data.formats import AVAZU_COLUMNS, AVAZU_TABLE_SIZES, CRITEO_TABLE_SIZES, KDD12_TABLE_SIZES
from nasrec.data.parse import stable_hash64
from nasrec.data.prepare import PrepareConfig, prepare

NASREC_MOD = 2147483647
CHUNK = 128  # tiny read blocks: every file below spans several chunks


def run(inputs: list[Path] | Path, out: Path, **kw: Any) -> Cache:
    paths = inputs if isinstance(inputs, list) else [inputs]
    kw.setdefault("split", "sequential")
    kw.setdefault("chunk_bytes", CHUNK)
    prepare(PrepareConfig(inputs=tuple(str(p) for p in paths), out=str(out), **kw))
    return open_cache(out)


def hash_index(value: int, table_size: int, modulus: int | None = None) -> int:
    """NASRec modulo hashing of an integer id: ((v mod M) mod (N - 1)) + 1 (Python's floored mod)."""
    if modulus is not None:
        value %= modulus
    return value % (table_size - 1) + 1


def log1p0(x: str | None) -> float:
    """The default dense transform: log(max(x, 0) + 1), missing -> 0."""
    return 0.0 if x is None else math.log(max(float(x), 0.0) + 1.0)


def string_index(values: list[str | None], table_size: int) -> list[int]:
    """Hash-mode index of string categories: stable 64-bit hash mod (N - 1) + 1, missing -> 0."""
    h = stable_hash64(pl.Series(values, dtype=pl.String)).view(np.uint64)
    return [0 if v is None else int(x % np.uint64(table_size - 1)) + 1 for v, x in zip(values, h, strict=True)]


def arrays(c: Cache) -> dict[str, np.ndarray]:
    return {"dense": np.array(c.dense), "sparse": np.array(c.sparse), "label": np.array(c.label)}


def assert_same_arrays(a: Cache, b: Cache) -> None:
    assert a.dense_fields == b.dense_fields and a.sparse_fields == b.sparse_fields
    assert a.table_sizes == b.table_sizes
    for name, x in arrays(a).items():
        np.testing.assert_array_equal(x, arrays(b)[name], err_msg=name)


# -- the stable string hash --------------------------------------------------------------------------
HASH_PINS = {
    "": -2152535657050944081,
    "a": 5284146741911097487,
    "Boston": 7331923126310742268,
    "New York, NY": 5651145268288587519,
    "abcdefgh": 6384715891674914818,
    "abcdefghi": -3233608523557418540,
    "é": -7889779805144831631,
}


def test_stable_hash64_is_pinned() -> None:
    """Recorded outputs: any change of the hash silently remaps every string category of old caches."""
    keys = list(HASH_PINS)
    assert stable_hash64(pl.Series(keys)).tolist() == list(HASH_PINS.values())
    assert stable_hash64(pl.Series(["Boston", None])).tolist() == [HASH_PINS["Boston"], HASH_PINS[""]]
    assert stable_hash64(pl.Series([], dtype=pl.String)).tolist() == []


def test_stable_hash64_does_not_depend_on_other_values() -> None:
    values = ["x", "Boston", "New York, NY", "a much longer value than the others, 40 b", "é", "abcdefgh"]
    batch = stable_hash64(pl.Series(values)).tolist()
    alone = [int(stable_hash64(pl.Series([v]))[0]) for v in values]
    assert batch == alone
    assert len(set(batch)) == len(values)
    assert len(set(stable_hash64(pl.Series(["ab", "ab\x00", "\x00ab", "ba"])).tolist())) == 4


# -- user schemas: CSV / TSV / Parquet, YAML / JSON --------------------------------------------------
CITIES = ["New York, NY", "Boston", "Chicago", "San Jose", None, "NA", "\\N", "Boston"]
DEVICES = ["ios", "android", "web", None, "ios"]
USER_COLUMNS = ("clicked", "price", "qty", "city", "device", "ad_id", "note")


def user_rows(n: int = 40) -> list[dict[str, str]]:
    """Raw text of each column; None stands for an empty field."""
    rows = []
    for i in range(n):
        rows.append(
            {
                "clicked": str((i * 5 // 3) % 2),
                "price": ["10.5", "NA", "3", "-2", "0", "7.25", "\\N", ""][i % 8],
                "qty": str(i * 3 % 17) if i % 6 else "NA",
                "city": CITIES[i % len(CITIES)],
                "device": DEVICES[i % len(DEVICES)],
                "ad_id": str(1000 + i * 7919) if i % 9 else "",
                "note": f"row {i}",
            }
        )
    return rows


def present(v: str | None) -> str | None:
    """The value after missing-token replacement ("", NA and \\N are missing)."""
    return None if v in (None, "", "NA", "\\N") else v


USER_SCHEMA: dict[str, Any] = {
    "name": "clicks",
    "label": "clicked",
    "missing": ["", "NA", "\\N"],
    "dense": [{"column": "price", "transform": "none"}, "qty"],
    "sparse": [
        {"column": "city", "table_size": 50},
        {"column": "device", "name": "dev", "table_size": 7},
        {"column": "ad_id", "kind": "int", "table_size": 1000},
    ],
}
USER_YAML = """\
name: clicks
label: clicked
missing: ["", "NA", '\\N']
dense:
  - column: price
    transform: none
  - qty          # default transform: log
sparse:
  - {column: city, table_size: 50}
  - {column: device, name: dev, table_size: 7}
  - {column: ad_id, kind: int, table_size: 1000}
"""


def _csv_field(v: str | None) -> str:
    if v is None:
        return ""
    return f'"{v}"' if "," in v or " " in v else v


def write_user_csv(path: Path, rows: list[dict[str, str]], header: bool = True) -> Path:
    lines = [",".join(USER_COLUMNS)] if header else []
    lines += [",".join(_csv_field(r[c]) for c in USER_COLUMNS) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def check_user_cache(c: Cache, rows: list[dict[str, str]]) -> None:
    assert c.dense_fields == ["price", "qty"]
    assert c.sparse_fields == ["city", "dev", "ad_id"]
    assert c.table_sizes == [50, 7, 1000]
    assert c.label.tolist() == [float(r["clicked"]) for r in rows]
    price = [float(present(r["price"]) or 0.0) for r in rows]
    np.testing.assert_allclose(c.dense[:, 0], price, rtol=1e-6)
    np.testing.assert_allclose(c.dense[:, 1], [log1p0(present(r["qty"])) for r in rows], rtol=1e-6)
    assert c.sparse[:, 0].tolist() == string_index([present(r["city"]) for r in rows], 50)
    assert c.sparse[:, 1].tolist() == string_index([present(r["device"]) for r in rows], 7)
    ads = [present(r["ad_id"]) for r in rows]
    assert c.sparse[:, 2].tolist() == [0 if a is None else hash_index(int(a), 1000) for a in ads]
    # independent of the hash itself: equal strings share an index, missing is 0, others in [1, N)
    by_city: dict[str, set[int]] = {}
    for r, idx in zip(rows, c.sparse[:, 0].tolist(), strict=True):
        by_city.setdefault(str(present(r["city"])), set()).add(idx)
    assert by_city.pop("None") == {0}
    assert all(len(s) == 1 and 1 <= next(iter(s)) < 50 for s in by_city.values())


def test_yaml_and_json_schemas_for_quoted_csv(tmp_path: Path) -> None:
    rows = user_rows()
    data = write_user_csv(tmp_path / "clicks.csv", rows)
    assert '"New York, NY"' in data.read_text()
    (tmp_path / "s.yaml").write_text(USER_YAML)
    (tmp_path / "s.json").write_text(json.dumps(USER_SCHEMA))
    assert yaml.safe_load(USER_YAML) == USER_SCHEMA  # the two files say the same
    a = run(data, tmp_path / "yaml", format="schema", schema=str(tmp_path / "s.yaml"))
    b = run(data, tmp_path / "json", format="schema", schema=str(tmp_path / "s.json"))
    check_user_cache(a, rows)
    assert_same_arrays(a, b)
    assert a.meta["schema"] == b.meta["schema"]


def test_csv_tsv_parquet_and_headerless_give_identical_caches(tmp_path: Path) -> None:
    rows = user_rows()
    csv = write_user_csv(tmp_path / "clicks.csv", rows)
    (tmp_path / "s.yaml").write_text(USER_YAML)
    base = run(csv, tmp_path / "csv", format="schema", schema=str(tmp_path / "s.yaml"))
    check_user_cache(base, rows)

    tsv = tmp_path / "clicks.tsv"
    lines = ["\t".join(USER_COLUMNS)] + ["\t".join(r[c] or "" for c in USER_COLUMNS) for r in rows]
    tsv.write_text("\n".join(lines) + "\n")
    (tmp_path / "t.yaml").write_text(USER_YAML + 'separator: "\\t"\nquote: null\n')
    assert_same_arrays(base, run(tsv, tmp_path / "tsv", format="schema", schema=str(tmp_path / "t.yaml")))

    # Parquet: string columns holding the same text (missing tokens included), plus typed columns
    pq = tmp_path / "clicks.parquet"
    pl.DataFrame(
        {c: [r[c] for r in rows] for c in USER_COLUMNS}, schema=dict.fromkeys(USER_COLUMNS, pl.String)
    ).write_parquet(pq)
    (tmp_path / "p.yaml").write_text(USER_YAML + "file_type: parquet\n")
    assert_same_arrays(base, run(pq, tmp_path / "pq", format="schema", schema=str(tmp_path / "p.yaml")))
    typed = tmp_path / "typed.parquet"
    pl.DataFrame(
        {
            "clicked": [int(r["clicked"]) for r in rows],
            "price": [None if present(r["price"]) is None else float(r["price"]) for r in rows],
            "qty": [None if present(r["qty"]) is None else int(r["qty"]) for r in rows],
            "city": [present(r["city"]) for r in rows],
            "device": [r["device"] for r in rows],
            "ad_id": [None if present(r["ad_id"]) is None else int(r["ad_id"]) for r in rows],
        }
    ).write_parquet(typed)
    assert_same_arrays(base, run(typed, tmp_path / "typed", format="schema", schema=str(tmp_path / "p.yaml")))

    headerless = write_user_csv(tmp_path / "noheader.csv", rows, header=False)
    (tmp_path / "h.yaml").write_text(USER_YAML + f"header: false\ncolumns: [{', '.join(USER_COLUMNS)}]\n")
    got = run(headerless, tmp_path / "noheader", format="schema", schema=str(tmp_path / "h.yaml"))
    assert_same_arrays(base, got)


def test_header_column_order_does_not_matter(tmp_path: Path) -> None:
    rows = user_rows(20)
    data = tmp_path / "shuffled.csv"
    order = ["note", "ad_id", "device", "clicked", "city", "qty", "price"]
    lines = [",".join(order)] + [",".join(_csv_field(r[c]) for c in order) for r in rows]
    data.write_text("\n".join(lines) + "\n")
    (tmp_path / "s.yaml").write_text(USER_YAML)
    check_user_cache(run(data, tmp_path / "c", format="schema", schema=str(tmp_path / "s.yaml")), rows)


def test_string_categories_in_vocab_mode(tmp_path: Path) -> None:
    rows = user_rows()
    data = write_user_csv(tmp_path / "clicks.csv", rows)
    (tmp_path / "s.yaml").write_text(USER_YAML)
    c = run(data, tmp_path / "c", format="schema", schema=str(tmp_path / "s.yaml"), encoding="vocab", ratios=(1, 0, 0))
    for j, col in enumerate(["city", "device", "ad_id"]):
        values = [present(r[col]) for r in rows]
        ids = c.sparse[:, j].tolist()
        distinct = sorted({v for v in values if v is not None})
        assert c.table_sizes[j] == 2 + len(distinct)
        mapping: dict[str, int] = {}
        for v, i in zip(values, ids, strict=True):
            if v is None:
                assert i == 0
            else:
                assert 2 <= i < c.table_sizes[j]
                assert mapping.setdefault(v, i) == i  # equal values, equal ids
        assert len(set(mapping.values())) == len(distinct)  # distinct values, distinct ids


def test_per_field_table_size_and_default(tmp_path: Path) -> None:
    rows = user_rows()
    data = write_user_csv(tmp_path / "clicks.csv", rows)
    schema = dict(USER_SCHEMA, default_table_size=33)
    schema["sparse"] = [{"column": "city"}, {"column": "device", "table_size": 3}]
    (tmp_path / "s.json").write_text(json.dumps(schema))
    c = run(data, tmp_path / "c", format="schema", schema=str(tmp_path / "s.json"))
    assert c.table_sizes == [33, 3]
    assert c.sparse[:, 0].tolist() == string_index([present(r["city"]) for r in rows], 33)
    assert c.sparse[:, 1].tolist() == string_index([present(r["device"]) for r in rows], 3)
    assert int(c.sparse.max()) < 33


# -- KDD Cup 2012 ------------------------------------------------------------------------------------
KDD_ROWS = [
    # Click, Impression, DisplayURL, AdID, AdvertiserID, Depth, Position, QueryID, KeywordID, TitleID, DescriptionID, UserID
    "0\t1\t18446744073709551615\t7686695\t385\t3\t3\t1601\t5521\t7709\t576\t490234",
    "2\t3\t4298118681424644510\t21560664\t37484\t2\t2\t2255103\t317\t48989\t44771\t490234",
    "0\t1\t9223372036854775808\t21748480\t36759\t3\t1\t4532751\t60721\t685038\t29681\t0",
    "1\t1\t12057878999086460853\t20157764\t25345\t2\t1\t2147483647\t2147483648\t4294967296\t1\t1000",
    "0\t2\t7010392416225722811\t20692006\t38056\t1\t1\t6\t1\t2\t3\t23",
    "5\t9\t0\t2147483646\t1\t3\t2\t7\t8\t9\t10\t999999",
    "0\t1\t3\t4\t5\t1\t1\t8\t9\t10\t11\t23",
    "0\t4\t12\t13\t14\t2\t1\t16\t17\t18\t19\t1000",
]
KDD_PROFILE = ["490234\t1\t3", "1000\t2\t6", "23\t0\t1", "0\t1\t4", "77\t2\t2"]  # user 999999 is missing


def kdd_expected(rows: list[str], profile: list[str]) -> dict[str, list]:
    prof = {p.split("\t")[0]: p.split("\t")[1:] for p in profile}
    label, dense, sparse = [], [], []
    for r in rows:
        f = r.split("\t")
        label.append(1.0 if int(f[0]) > 0 else 0.0)
        dense.append([math.log1p(int(f[k])) for k in (1, 5, 6)])
        gender, age = prof.get(f[11], ["0", "0"])
        ids = [f[2], f[3], f[4], f[7], f[8], f[9], f[10], f[11], gender, age]
        sparse.append([hash_index(int(v), n, NASREC_MOD) for v, n in zip(ids, KDD12_TABLE_SIZES, strict=True)])
    return {"label": label, "dense": dense, "sparse": sparse}


def check_kdd(c: Cache) -> None:
    exp = kdd_expected(KDD_ROWS, KDD_PROFILE)
    assert c.dense_fields == ["Impression", "Depth", "Position"]
    assert c.sparse_fields == [
        "DisplayURL",
        "AdID",
        "AdvertiserID",
        "QueryID",
        "KeywordID",
        "TitleID",
        "DescriptionID",
        "UserID",
        "Gender",
        "Age",
    ]
    assert c.table_sizes == list(KDD12_TABLE_SIZES)
    assert c.label.tolist() == exp["label"]
    np.testing.assert_allclose(c.dense, exp["dense"], rtol=1e-6)
    assert c.sparse.tolist() == exp["sparse"]
    missing_user = KDD_ROWS.index(next(r for r in KDD_ROWS if r.endswith("\t999999")))
    assert c.sparse[missing_user, 8:].tolist() == [1, 1]  # Gender and Age "0" -> index 1


@pytest.fixture
def kdd_files(tmp_path: Path) -> tuple[Path, Path]:
    train = tmp_path / "training.txt"
    train.write_text("\n".join(KDD_ROWS) + "\n")
    prof = tmp_path / "userid_profile.txt"
    prof.write_text("\n".join(KDD_PROFILE) + "\n")
    return train, prof


def test_kdd12_profile_among_inputs(tmp_path: Path, kdd_files: tuple[Path, Path]) -> None:
    train, prof = kdd_files
    c = run([train, prof], tmp_path / "a", format="kdd12")
    check_kdd(c)
    # the profile is recognised by its name, wherever it is listed
    assert_same_arrays(c, run([prof, train], tmp_path / "b", format="kdd12"))


@pytest.mark.slow
def test_kdd12_profile_flag_cli(tmp_path: Path, kdd_files: tuple[Path, Path]) -> None:
    from nasrec.cli import main

    train, prof = kdd_files
    args = ["prepare", "--format", "kdd12", "--split", "sequential"]
    for name, inputs in [
        ("flag", ["--input", str(train), "--kdd-profile", str(prof)]),
        ("inputs", ["--input", str(train), str(prof)]),
    ]:
        if name == "flag":  # one real process; the other spelling is the same parser, in-process
            res = subprocess.run(
                [sys.executable, "-m", "nasrec.cli", *args, *inputs, "--out", str(tmp_path / name)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert res.returncode == 0, res.stderr
        else:
            assert main([*args, *inputs, "--out", str(tmp_path / name)]) == 0
        check_kdd(open_cache(tmp_path / name))
        assert open_cache(tmp_path / name).meta["kdd_profile"] == str(prof)


# -- Avazu -------------------------------------------------------------------------------------------
AVAZU_ROWS = [
    # id, click, hour, C1, banner_pos, site_id, site_domain, site_category, app_id, app_domain, app_category,
    # device_id, device_ip, device_model, device_type, device_conn_type, C14..C21
    "1000009418151094273,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79",
    "10000169349117863715,1,14102100,1005,1,12345678,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,96809ac8,711ee120,1,0,15704,320,50,1722,0,35,100084,79",
    "10000371904215119486,0,14103023,1002,0,85f751fd,c4e18dd6,50e219e0,51cedd4e,aefc06bd,0f2161f8,a99f214a,b3cf8def,8a4875bd,1,0,18993,320,50,2161,0,35,-1,157",
    "10000640724480838376,1,14110118,1005,0,d6137915,bb1ef334,f028772b,ecad2386,7801e8d9,07d7df22,9644d0bf,05241af0,8a4875bd,1,0,16920,320,50,1899,0,431,100077,117",
    "10000679056417042096,0,14102607,1010,1,85f751fd,c4e18dd6,50e219e0,9c13b419,2347f47a,f95efa07,-1,c1a4a6c6,a0f5f879,1,0,20362,320,50,2333,0,39,-1,157",
    "10000720757801103869,0,16022900,1005,0,0,0,0,ecad2386,7801e8d9,07d7df22,a99f214a,ABCDEF12,be6db1d7,1,0,20632,320,50,2374,3,39,-1,23",
]


def avazu_weekday(hour: str) -> int:
    return datetime.date(2000 + int(hour[:2]), int(hour[2:4]), int(hour[4:6])).isoweekday()


def auto_id(v: str) -> int:
    """NASRec's Avazu id rule: all digits -> decimal, otherwise (signed) hexadecimal; then mod 2^31 - 1."""
    return (int(v) if v.isdigit() else int(v, 16)) % NASREC_MOD


@pytest.mark.parametrize(
    ("drop_id", "time_features", "header"),
    [(False, False, True), (True, True, True), (True, True, False), (False, True, True)],
)
def test_avazu_options(tmp_path: Path, drop_id: bool, time_features: bool, header: bool) -> None:
    inp = tmp_path / "train.csv"
    inp.write_text("\n".join(([",".join(AVAZU_COLUMNS)] if header else []) + AVAZU_ROWS) + "\n")
    c = run(inp, tmp_path / "c", format="avazu", drop_id=drop_id, time_features=time_features)
    cats = [c for c in AVAZU_COLUMNS if c != "click"]
    sizes = dict(zip(cats, AVAZU_TABLE_SIZES, strict=True))
    kept = [x for x in cats if not (drop_id and x == "id")]
    expected_fields = kept + (["hour_of_day", "weekday"] if time_features else [])
    assert c.sparse_fields == expected_fields
    assert c.table_sizes == [sizes[x] for x in kept] + ([25, 8] if time_features else [])
    assert c.dense_fields == ["dense0"]
    assert c.dense.tolist() == [[0.0]] * len(AVAZU_ROWS)
    for r, row in enumerate(AVAZU_ROWS):
        f = dict(zip(AVAZU_COLUMNS, row.split(","), strict=True))
        assert c.label[r] == float(f["click"])
        want = [hash_index(auto_id(f[x]), sizes[x]) for x in kept]
        if time_features:
            want += [hash_index(int(f["hour"][6:]), 25), hash_index(avazu_weekday(f["hour"]), 8)]
        assert c.sparse[r].tolist() == want, r
    if time_features:  # the rows cover several weekdays, months and hours, Sunday and a leap day
        days = {avazu_weekday(row.split(",")[2]) for row in AVAZU_ROWS}
        assert {2, 4, 6, 7, 1} <= days
        assert len(set(c.sparse[:, -1].tolist())) == len(days)
        assert len(set(c.sparse[:, -2].tolist())) == len({row.split(",")[2][6:] for row in AVAZU_ROWS})


def test_avazu_auto_rule_edge_values() -> None:
    """The expectations above rest on these readings of the rule (checked against plain Python)."""
    assert auto_id("12345678") == 12345678  # all digits: decimal, although valid hexadecimal too
    assert auto_id("1fbe01fe") == 0x1FBE01FE
    assert auto_id("-1") == NASREC_MOD - 1  # signed hexadecimal, floored modulo
    assert auto_id("ABCDEF12") == 0xABCDEF12 % NASREC_MOD


# -- dense transforms --------------------------------------------------------------------------------
def criteo_rows(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        ints = [str(int(x)) for x in rng.integers(0, 3000, 13) ** rng.uniform(0.3, 1.0, 13)]
        ints[1] = "-1" if i % 10 == 0 else str(int(rng.integers(0, 30)))  # I2 holds Criteo's -1
        for k in rng.choice(13, size=int(rng.integers(0, 4)), replace=False):
            ints[k] = ""
        cats = [f"{int(x):08x}" for x in rng.integers(0, 2**32, 26)]
        cats[0] = f"{i:08x}"
        rows.append([str(int(rng.random() < 0.3)), *ints, *cats])
    return rows


def write_criteo(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    return path


def dense_column(rows: list[list[str]], k: int) -> np.ndarray:
    """Raw values of I(k+1) as float64, NaN where missing."""
    return np.array([float(r[1 + k]) if r[1 + k] else np.nan for r in rows])


def test_dense_none_and_log(tmp_path: Path) -> None:
    rows = criteo_rows(60)
    inp = write_criteo(tmp_path / "d.tsv", rows)
    for transform in ("none", "log"):
        c = run(inp, tmp_path / transform, dense_transform=transform)
        for k in range(13):
            x = dense_column(rows, k)
            want = (
                np.nan_to_num(x, nan=0.0)
                if transform == "none"
                else np.where(np.isnan(x), 0, np.log(np.maximum(x, 0) + 1))
            )
            np.testing.assert_allclose(c.dense[:, k], want, rtol=1e-6, atol=1e-7, err_msg=f"I{k + 1} {transform}")


@pytest.mark.slow
def test_dense_standardize_uses_train_statistics_only(tmp_path: Path) -> None:
    rows = criteo_rows(200, seed=1)
    inp = write_criteo(tmp_path / "d.tsv", rows)
    c = run(inp, tmp_path / "c", dense_transform="standardize", split="random", seed=5)
    train = np.array(c.split_index("train"))
    assert 0 < len(train) < len(rows)
    stats = c.meta["encoder"]["dense"]
    for k in range(13):
        name = f"I{k + 1}"
        x = dense_column(rows, k)
        xt = x[train]
        mean, std = float(np.nanmean(xt)), float(np.nanstd(xt))
        assert stats[name]["transform"] == "standardize"
        assert stats[name]["mean"] == pytest.approx(mean, rel=1e-9)
        assert stats[name]["std"] == pytest.approx(std, rel=1e-9)
        assert abs(float(np.nanmean(x)) - mean) > 1e-9  # all rows would give other statistics
        want = np.where(np.isnan(x), 0.0, (x - mean) / std)  # val/test rows too: train statistics
        np.testing.assert_allclose(c.dense[:, k], want, rtol=1e-5, atol=1e-6, err_msg=name)
        assert (c.dense[np.isnan(x), k] == 0).all()


def bucket(x: str) -> int | None:
    if x == "":
        return None
    v = float(x)
    return math.floor(math.log(v) ** 2) if v > 2 else math.floor(v)


def test_dense_bucketize_becomes_categorical(tmp_path: Path) -> None:
    rows = criteo_rows(80, seed=2)
    inp = write_criteo(tmp_path / "d.tsv", rows)
    c = run(inp, tmp_path / "c", dense_transform="bucketize")
    assert c.dense_fields == []
    assert c.sparse_fields == [f"C{i}" for i in range(1, 27)] + [f"I{i}_bucket" for i in range(1, 14)]
    assert c.table_sizes[26:] == [1024] * 13
    for k in range(13):
        b = [bucket(r[1 + k]) for r in rows]
        want = [0 if v is None else hash_index(v, 1024) for v in b]
        assert c.sparse[:, 26 + k].tolist() == want, f"I{k + 1}"
    assert any(r[2] == "-1" for r in rows)  # I2 = -1 -> bucket -1


def test_per_field_transforms_in_a_schema(tmp_path: Path) -> None:
    rows = user_rows()
    data = write_user_csv(tmp_path / "clicks.csv", rows)
    schema = dict(USER_SCHEMA)
    schema["dense"] = [{"column": "price", "transform": "standardize"}, {"column": "qty", "transform": "bucketize"}]
    (tmp_path / "s.json").write_text(json.dumps(schema))
    c = run(data, tmp_path / "c", format="schema", schema=str(tmp_path / "s.json"), ratios=(0.5, 0.25, 0.25))
    assert c.dense_fields == ["price"]
    assert c.sparse_fields == ["city", "dev", "ad_id", "qty_bucket"]
    price = np.array([float(present(r["price"])) if present(r["price"]) else np.nan for r in rows])
    train = price[: len(rows) // 2]
    mean, std = float(np.nanmean(train)), float(np.nanstd(train))
    np.testing.assert_allclose(c.dense[:, 0], np.where(np.isnan(price), 0, (price - mean) / std), rtol=1e-5, atol=1e-6)
    qty = [bucket(present(r["qty"]) or "") for r in rows]
    assert c.sparse[:, 3].tolist() == [0 if v is None else hash_index(v, 1024) for v in qty]


# -- vocabulary encoding -----------------------------------------------------------------------------
def vocab_csv(path: Path) -> tuple[Path, list[str | None]]:
    """20 rows, train = the first 12 (sequential 0.6/0.2/0.2): a x5, b x3, c x1, e x2, missing x1 in train;
    d appears only in val/test; c again in test."""
    train = ["a", "b", "a", None, "c", "a", "b", "e", "a", "b", "e", "a"]
    rest = ["a", "d", "c", "b", "d", "a", "c", None]
    values = train + rest
    lines = ["y,x,cat,num"] + [
        f"{i % 2},{i},{v or ''},{'' if v is None else 100 + ord(v)}" for i, v in enumerate(values)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path, values


VOCAB_SCHEMA = "label: y\ndense: [x]\nsparse: [cat, {column: num, kind: int}]\n"


def _vocab_run(tmp_path: Path, name: str, **kw: Any) -> tuple[Cache, list[str | None]]:
    data, values = vocab_csv(tmp_path / "v.csv")
    (tmp_path / "s.yaml").write_text(VOCAB_SCHEMA)
    c = run(
        data,
        tmp_path / name,
        format="schema",
        schema=str(tmp_path / "s.yaml"),
        encoding="vocab",
        ratios=(0.6, 0.2, 0.2),
        **kw,
    )
    assert np.array(c.split_index("train")).tolist() == list(range(12))
    return c, values


def test_vocab_fitted_on_train_with_min_count(tmp_path: Path) -> None:
    c, values = _vocab_run(tmp_path, "m1", min_count=1)
    for j in range(2):  # the string column and the integer column encode alike
        ids = dict(zip(values, c.sparse[:, j].tolist(), strict=True))
        assert ids[None] == 0
        assert ids["d"] == 1  # only in val/test: out of vocabulary
        assert sorted(ids[v] for v in "abce") == [2, 3, 4, 5]
        assert ids["a"] == 2  # the most frequent comes first
        assert c.table_sizes[j] == 6
        assert [c.sparse[i, j] for i, v in enumerate(values) if v == "c"] == [ids["c"]] * 3
    c2, values = _vocab_run(tmp_path, "m2", min_count=2)
    ids = dict(zip(values, c2.sparse[:, 0].tolist(), strict=True))
    assert (ids[None], ids["c"], ids["d"]) == (0, 1, 1)  # c: seen once in train, below min_count
    assert sorted((ids["a"], ids["b"], ids["e"])) == [2, 3, 4]
    assert c2.table_sizes[0] == 5
    c3, values = _vocab_run(tmp_path, "m4", min_count=4)
    ids = dict(zip(values, c3.sparse[:, 0].tolist(), strict=True))
    assert {v: ids[v] for v in ["a", "b", "c", "d", "e", None]} == {"a": 2, "b": 1, "c": 1, "d": 1, "e": 1, None: 0}
    assert c3.table_sizes[0] == 3


def test_vocab_max_table_size_keeps_the_most_frequent(tmp_path: Path) -> None:
    c, values = _vocab_run(tmp_path, "cap", max_table_size=4)
    ids = dict(zip(values, c.sparse[:, 0].tolist(), strict=True))
    assert c.table_sizes == [4, 4]
    assert (ids["a"], ids["b"]) in ((2, 3), (3, 2))  # a x5, b x3 kept; e x2, c x1 dropped
    assert (ids["c"], ids["d"], ids["e"], ids[None]) == (1, 1, 1, 0)


def test_vocab_encoder_state_round_trips(tmp_path: Path) -> None:
    c, values = _vocab_run(tmp_path, "rt", min_count=2)
    state = EncoderState.from_dict(c.meta["encoder"], c.path)
    assert state.to_dict() == c.meta["encoder"]
    assert state.mode == "vocab"
    assert state.table_sizes(c.sparse_fields) == c.table_sizes
    raw_str = stable_hash64(pl.Series(values, dtype=pl.String))
    raw_str[[v is None for v in values]] = MISSING_ID
    raw_int = np.array([MISSING_ID if v is None else 100 + ord(v) for v in values], dtype=np.int64)
    for j, raw in enumerate([raw_str, raw_int]):
        enc = state.sparse[c.sparse_fields[j]]
        assert isinstance(enc, VocabEncoder)
        np.testing.assert_array_equal(enc.transform(raw), c.sparse[:, j])


@pytest.mark.slow
def test_vocab_via_cli(tmp_path: Path) -> None:
    data, _ = vocab_csv(tmp_path / "v.csv")
    (tmp_path / "s.yaml").write_text(VOCAB_SCHEMA)
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "-m",
        "nasrec.cli",
        "prepare",
        "--format",
        "schema",
        "--schema",
        str(tmp_path / "s.yaml"),
        "--input",
        str(data),
        "--out",
        str(out),
        "--vocab",
        "--min-count",
        "2",
        "--split",
        "sequential",
        "--ratios",
        "0.6",
        "0.2",
        "0.2",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    api, _ = _vocab_run(tmp_path, "api", min_count=2)
    assert_same_arrays(open_cache(out), api)


# -- table-size cap in hash mode ---------------------------------------------------------------------
@pytest.mark.parametrize("cap", [1000, 20])
def test_max_table_size_caps_hash_tables(tmp_path: Path, cap: int) -> None:
    rows = criteo_rows(50, seed=3)
    inp = write_criteo(tmp_path / "d.tsv", rows)
    c = run(inp, tmp_path / "c", max_table_size=cap)
    sizes = [min(n, cap) for n in CRITEO_TABLE_SIZES]
    assert c.table_sizes == sizes
    assert c.meta["encoder"]["max_table_size"] == cap
    for j in range(26):
        want = [0 if r[14 + j] == "" else hash_index(int(r[14 + j], 16), sizes[j]) for r in rows]
        assert c.sparse[:, j].tolist() == want, f"C{j + 1}"
    assert (c.sparse < np.array(sizes)).all()


@pytest.mark.slow
def test_max_table_size_cli_matches_api(tmp_path: Path) -> None:
    inp = write_criteo(tmp_path / "d.tsv", criteo_rows(30, seed=4))
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "-m",
        "nasrec.cli",
        "prepare",
        "--format",
        "criteo",
        "--input",
        str(inp),
        "--out",
        str(out),
        "--max-table-size",
        "500",
        "--split",
        "sequential",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert open_cache(out).table_sizes == [min(n, 500) for n in CRITEO_TABLE_SIZES]
    assert_same_arrays(open_cache(out), run(inp, tmp_path / "api", max_table_size=500))


def test_package_exports_are_the_functions_even_after_their_submodule_is_imported() -> None:
    import nasrec.data.prepare  # noqa: F401  (binds the name "prepare" on the package, as any import of it does)
    from nasrec import PrepareConfig, generate_synthetic, prepare
    from nasrec.data import prepare as prepare_again

    assert callable(prepare) and prepare is prepare_again and prepare.__module__ == "nasrec.data.prepare"
    assert isinstance(PrepareConfig, type) and callable(generate_synthetic)
