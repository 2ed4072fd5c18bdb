"""Frozen, strictly loaded configs for the training core.

Every config is a frozen dataclass that checks itself in ``__post_init__`` and is loaded from YAML/JSON
data with :func:`config.strict.from_dict`, which rejects unknown keys and checks each value's type.

Example:
    >>> from config.strict import from_dict
    >>> cfg = from_dict(ModelConfig, {"name": "deepfm", "embedding_dim": 8, "field_dims": {"C1": 4}})
    >>> cfg.mlp, cfg.dim("C1"), cfg.dim("C2")
    ((400, 400, 400), 4, 8)
    >>> from_dict(ModelConfig, {"name": "fm", "embedding_dim": 0})
    Traceback (most recent call last):
    ...
    config.strict.ConfigError: ModelConfig.embedding_dim: 0 is not a positive dim
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from config.strict import ConfigError

__all__ = ["MODEL_NAMES", "ModelConfig", "ModelName"]

ModelName = Literal["lr", "fm", "deepfm", "fnn", "ipnn", "dcn", "dcnv2", "dlrm"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
_POOLINGS = ("sum", "mean")
_TABLE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ModelConfig:
    """Which CTR model to build, and its sizes.

    * ``embedding_dim``: the default embedding dim of every categorical field; ``field_dims`` overrides it
      per field (field name -> dim). Any positive dim: FBGEMM's TBE kernels need a multiple of 4, so a table of
      dim ``d`` is stored ``ceil(d / 4) * 4`` wide and its extra columns are zero and sliced off after the lookup
      (:class:`ctr.tables.embedding.SparseArch`); parameters are counted at ``d``. The OptEmbed supernet and the table
      methods (``tables``) need multiples of 4. Fields with different dims are zero-padded to the largest one
      before any interaction.
    * ``mlp``: hidden sizes of the deep part (DeepFM, FNN, IPNN, DCN, DCNv2) or of DLRM's top MLP.
      ``dropout`` and ``batch_norm`` apply to every layer of it.
    * ``cross_layers``: number of cross layers (DCN, DCNv2); ``low_rank``: rank of DCNv2's ``W = U V``
      factorisation (``None``: full-rank ``W``).
    * ``dense_mlp``: hidden sizes of DLRM's bottom MLP; a last layer of size ``embedding_dim`` is appended so
      that the dense vector meets the sparse embeddings (DLRM needs every field at ``embedding_dim``).
    * ``pooling``: how a multi-valued field's embeddings are pooled (``"sum"`` or ``"mean"``).
    * ``pad_to``: pad the field vectors to at least this width (a retrained OptEmbed table keeps the
      supernet's width, so its dense layers have the supernet's shapes); ``None``: the largest field dim.
    * ``init_std``: the tables' initial weights: normal with this standard deviation (FuxiCTR's
      ``embedding_initializer``, std 1e-4), or uniform in +-sqrt(1/rows), TorchRec's default, when ``None``.
      With a small scale every model starts as its bias alone and its pairwise and deep terms grow only as the
      data asks (docs/defaults.md). Pair it with ``batch_norm: false``: batch norm would rescale the tiny first
      activations to unit variance.
    * ``table_dtype``: how the embedding tables are stored (FBGEMM's ``weights_precision``): ``float32``, or
      ``float16``, half the table memory. FBGEMM pools and computes every update in float32 and rounds the new
      row to float16 (to nearest, on CPU), so an update smaller than ~1/2000 of a weight is lost: a concern
      only for rows updated hundreds of thousands of times. On CPU its row-wise Adagrad backward is also about
      twice as fast for float16 rows (docs/benchmarks.md). ``ctr train`` only: the OptEmbed supernet,
      dimension search, retraining and int8 export need float32 tables.
    """

    name: ModelName
    embedding_dim: int = 16
    field_dims: dict[str, int] = field(default_factory=dict)
    mlp: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.0
    batch_norm: bool = True
    cross_layers: int = 3
    low_rank: int | None = None
    dense_mlp: tuple[int, ...] = (64,)
    pooling: Literal["sum", "mean"] = "sum"
    pad_to: int | None = None
    init_std: float | None = None
    table_dtype: Literal["float32", "float16"] = "float32"

    def __post_init__(self) -> None:
        where = type(self).__name__
        if self.name not in MODEL_NAMES:
            raise ConfigError(f"{where}.name: {self.name!r} is not one of {', '.join(MODEL_NAMES)}")
        if self.pooling not in _POOLINGS:
            raise ConfigError(f"{where}.pooling: {self.pooling!r} is not one of {', '.join(_POOLINGS)}")
        if self.table_dtype not in _TABLE_DTYPES:
            raise ConfigError(f"{where}.table_dtype: {self.table_dtype!r} is not one of {', '.join(_TABLE_DTYPES)}")
        _check_dim(f"{where}.embedding_dim", self.embedding_dim)
        for name, dim in self.field_dims.items():
            _check_dim(f"{where}.field_dims[{name!r}]", dim)
        if self.pad_to is not None:
            _check_dim(f"{where}.pad_to", self.pad_to)
        for key in ("mlp", "dense_mlp"):
            sizes: tuple[int, ...] = getattr(self, key)
            for i, size in enumerate(sizes):
                if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                    raise ConfigError(f"{where}.{key}[{i}]: {size!r} is not a positive layer size")
        if self.init_std is not None and not (math.isfinite(self.init_std) and self.init_std > 0):
            raise ConfigError(f"{where}.init_std: {self.init_std!r} is not a positive scale (or null for uniform)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}.dropout: {self.dropout!r} is not in [0, 1)")
        if self.cross_layers < 1:
            raise ConfigError(f"{where}.cross_layers: {self.cross_layers!r} is not a positive layer count")
        if self.low_rank is not None and self.low_rank < 1:
            raise ConfigError(f"{where}.low_rank: {self.low_rank!r} is not a positive rank (or null for full rank)")

    def require_float32_tables(self, stage: str) -> None:
        """Refuse ``stage`` (e.g. "the OptEmbed supernet") for float16 tables (see ``table_dtype``)."""
        if self.table_dtype != "float32":
            raise ConfigError(f"model.table_dtype: {self.table_dtype!r} is for ctr train; {stage} needs float32 tables")

    def require_multiples_of_4(self, stage: str) -> None:
        """Refuse ``stage`` (e.g. "the OptEmbed supernet") for a dim FBGEMM would need padded."""
        dims = {"embedding_dim": self.embedding_dim} | {f"field_dims[{k!r}]": v for k, v in self.field_dims.items()}
        bad = {k: v for k, v in dims.items() if v % 4}
        if bad:
            key, value = next(iter(bad.items()))
            raise ConfigError(f"model.{key}: {value} is not a multiple of 4, which {stage} needs")

    def dim(self, field_name: str) -> int:
        """The embedding dim of categorical field ``field_name``: its override, else ``embedding_dim``."""
        return self.field_dims.get(field_name, self.embedding_dim)


def _check_dim(where: str, dim: object) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise ConfigError(f"{where}: {dim!r} is not a positive dim")
