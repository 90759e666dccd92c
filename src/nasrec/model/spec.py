"""A model described as plain data (what a run directory stores), and building it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from nasrec.errors import NasrecError
from nasrec.space.arch import Architecture

MODEL_KINDS = ("nasrec", "zoo", "supernet")
# A supernet's `hparams["semantics"]`: nasrec's sliced weights, or the reference's masks (for measurements)
SUPERNET_SEMANTICS = ("slice", "mask")

# The baseline zoo is the layer above this one (its models are built from `FieldEmbedding`): rather than being
# imported from here, it registers how its models are built and costed when `nasrec.zoo` is imported.
_ZOO: dict[str, Callable[..., Any]] = {}


def register_zoo(build: Callable[..., nn.Module], cost: Callable[..., Any]) -> None:
    """Make kind "zoo" buildable: `build` and `cost` take (name, num_dense, table_sizes, **hparams)."""
    _ZOO.update(build=build, cost=cost)


def zoo_model_cost(name: str, num_dense: int, table_sizes: Sequence[int], hparams: dict[str, Any]) -> Any:
    """A zoo model's analytic cost (`nasrec.zoo.ZooCost`: mflops, params, dense_params) through the registration."""
    return _zoo("cost")(name, num_dense, table_sizes, **hparams)


def _zoo(what: str) -> Callable[..., Any]:
    """The zoo's registered `build` or `cost`."""
    if what not in _ZOO:
        raise NasrecError("a zoo model's spec needs the zoo registered: import nasrec.zoo first")
    return _ZOO[what]


@dataclass(frozen=True)
class ModelSpec:
    """Which model: a nasrec architecture, a zoo baseline, or a supernet over a space; and its input shape."""

    kind: str
    num_dense: int
    table_sizes: tuple[int, ...]
    arch: dict[str, Any] | None = None  # kind "nasrec": the canonical architecture JSON
    zoo: str | None = None  # kind "zoo": model name
    hparams: dict[str, Any] = field(default_factory=dict)  # zoo: hyper-parameters; supernet: `semantics`
    space: dict[str, Any] | None = None  # kind "supernet": the search space
    layernorm: bool = False
    dropout: float = 0.0  # kind "nasrec": dropout on every block's dense output (`Subnet`); 0: none
    max_embedding_std: float | None = None  # nasrec and supernet: the tables' initial std capped at this (None: xavier)
    batchnorm: bool = False  # kind "nasrec": batch norms in place of the dense outputs' layer norms (`Subnet`)
    head_centre: bool = True  # kind "nasrec" with layernorm: the head centres its inputs (`HeadLinear`)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise NasrecError(f"model kind must be one of {', '.join(MODEL_KINDS)}, not {self.kind!r}")
        semantics = self.hparams.get("semantics", "slice") if self.kind == "supernet" else "slice"
        if semantics not in SUPERNET_SEMANTICS:
            raise NasrecError(f"supernet semantics must be one of {', '.join(SUPERNET_SEMANTICS)}, not {semantics!r}")
        object.__setattr__(self, "table_sizes", tuple(int(n) for n in self.table_sizes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        d = asdict(self)
        d["table_sizes"] = list(self.table_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Rebuild from `to_dict` output."""
        return cls(**d)

    def architecture(self) -> Architecture:
        """The architecture of a nasrec model."""
        if self.arch is None:
            raise NasrecError("this model has no architecture")
        return Architecture.from_dict(self.arch)

    def build(self) -> nn.Module:
        """A freshly initialised model (call under a seeded torch RNG for reproducible weights)."""
        if self.kind == "nasrec":
            from nasrec.model.subnet import Subnet

            return Subnet(
                self.architecture(),
                self.num_dense,
                self.table_sizes,
                layernorm=self.layernorm,
                dropout=self.dropout,
                max_embedding_std=self.max_embedding_std,
                batchnorm=self.batchnorm,
                head_centre=self.head_centre,
            )
        if self.kind == "zoo":
            return _zoo("build")(self.zoo, self.num_dense, self.table_sizes, **self.hparams)
        from nasrec.model.supernet import Supernet
        from nasrec.space.space import SearchSpace

        return Supernet(
            SearchSpace.from_dict(self.space),
            self.num_dense,
            self.table_sizes,
            layernorm=True,
            masking=self.hparams.get("semantics") == "mask",
            max_embedding_std=self.max_embedding_std,
        )

    def cost(self) -> dict[str, float | None]:
        """MFLOPs per example and parameter counts (a supernet reports parameters only: its MFLOPs are None)."""
        if self.kind == "nasrec":
            from nasrec.model.cost import ServedCost

            c = ServedCost(self.num_dense, self.table_sizes, self.layernorm).of(self.architecture())
            return {"mflops": c.mflops, "params": c.params, "dense_params": c.dense_params}
        if self.kind == "zoo":
            c = zoo_model_cost(self.zoo, self.num_dense, self.table_sizes, self.hparams)
            return {"mflops": c.mflops, "params": c.params, "dense_params": c.dense_params}
        model = self.build()
        n = sum(p.numel() for p in model.parameters())
        emb = sum(self.table_sizes) * 16
        # None, not NaN: metrics.json stays strict JSON, and a supernet has no single cost per example.
        return {"mflops": None, "params": n, "dense_params": n - emb}
