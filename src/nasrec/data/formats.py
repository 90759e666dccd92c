"""Built-in schemas for the public CTR benchmarks (NASRec's table sizes and id rewriting)."""

from __future__ import annotations

from nasrec.data.schema import DenseField, Schema, SparseField
from nasrec.errors import NasrecError

# Hash-table sizes of the NASRec reference (embedding dimension 16 everywhere).
CRITEO_TABLE_SIZES = (
    1461,
    584,
    10131227,
    2202609,
    306,
    25,
    12518,
    634,
    4,
    93146,
    5684,
    8351593,
    3195,
    28,
    14993,
    5461307,
    11,
    5653,
    2174,
    5,
    7046548,
    19,
    16,
    286182,
    106,
    142573,
)
AVAZU_TABLE_SIZES = (
    10000,
    241,
    8,
    8,
    4738,
    7746,
    27,
    8553,
    560,
    37,
    2686409,
    6729487,
    8252,
    6,
    5,
    2627,
    9,
    10,
    436,
    5,
    69,
    173,
    61,
)
KDD12_TABLE_SIZES = (26274, 641708, 14848, 22122011, 1188090, 3735797, 2934102, 20004011, 4, 8)

AVAZU_COLUMNS = (
    "id",
    "click",
    "hour",
    "C1",
    "banner_pos",
    "site_id",
    "site_domain",
    "site_category",
    "app_id",
    "app_domain",
    "app_category",
    "device_id",
    "device_ip",
    "device_model",
    "device_type",
    "device_conn_type",
    "C14",
    "C15",
    "C16",
    "C17",
    "C18",
    "C19",
    "C20",
    "C21",
)
KDD12_COLUMNS = (
    "Click",
    "Impression",
    "DisplayURL",
    "AdID",
    "AdvertiserID",
    "Depth",
    "Position",
    "QueryID",
    "KeywordID",
    "TitleID",
    "DescriptionID",
    "UserID",
)
KDD12_PROFILE_COLUMNS = ("UserID", "Gender", "Age")
NASREC_ID_MODULUS = 2147483647
FORMATS = ("criteo", "avazu", "kdd12")


def criteo_schema(dense_transform: str = "log") -> Schema:
    """Criteo Kaggle / 1TB raw TSV: label, I1..I13, C1..C26 (8-hex), no header."""
    dense = tuple(DenseField(f"I{i}", f"I{i}", dense_transform) for i in range(1, 14))
    sparse = tuple(SparseField(f"C{i}", f"C{i}", "hex", CRITEO_TABLE_SIZES[i - 1]) for i in range(1, 27))
    columns = ("label", *(f.column for f in dense), *(f.column for f in sparse))
    return Schema(
        name="criteo",
        label="label",
        dense=dense,
        sparse=sparse,
        separator="\t",
        header=False,
        columns=columns,
        quote=None,
    )


def avazu_schema(dense_transform: str = "log", drop_id: bool = False, time_features: bool = False) -> Schema:
    """Avazu raw CSV (header optional per file); one constant-zero dense column as in NASRec."""
    cats = [c for c in AVAZU_COLUMNS if c != "click"]
    sparse = [
        SparseField(c, c, "auto", size, NASREC_ID_MODULUS)
        for c, size in zip(cats, AVAZU_TABLE_SIZES, strict=True)
        if not (drop_id and c == "id")
    ]
    if time_features:
        sparse += [
            SparseField("hour_of_day", "hour", "int", 25, derive="hour_of_day"),
            SparseField("weekday", "hour", "int", 8, derive="weekday"),
        ]
    return Schema(
        name="avazu",
        label="click",
        dense=(DenseField("dense0", None, dense_transform),),
        sparse=tuple(sparse),
        separator=",",
        header="auto",
        columns=AVAZU_COLUMNS,
        quote=None,
    )


def kdd12_schema(dense_transform: str = "log") -> Schema:
    """KDD Cup 2012 track 2 training.txt joined with userid_profile.txt; label = clicks > 0."""
    dense = tuple(DenseField(c, c, dense_transform) for c in ("Impression", "Depth", "Position"))
    ids = ("DisplayURL", "AdID", "AdvertiserID", "QueryID", "KeywordID", "TitleID", "DescriptionID", "UserID")
    sparse = tuple(
        SparseField(c, c, "int", size, NASREC_ID_MODULUS)
        for c, size in zip((*ids, "Gender", "Age"), KDD12_TABLE_SIZES, strict=True)
    )
    return Schema(
        name="kdd12",
        label="Click",
        dense=dense,
        sparse=sparse,
        separator="\t",
        header=False,
        columns=(*KDD12_COLUMNS, "Gender", "Age"),
        quote=None,
        label_rule="positive",
    )


def builtin_schema(fmt: str, **options: object) -> Schema:
    """Schema of a built-in format by name."""
    makers = {"criteo": criteo_schema, "avazu": avazu_schema, "kdd12": kdd12_schema}
    if fmt not in makers:
        raise NasrecError(f"unknown format {fmt!r} (expected one of: {', '.join(FORMATS)}, schema)")
    try:
        return makers[fmt](**options)
    except TypeError as e:
        raise NasrecError(f"format {fmt}: {e}") from None
