"""The whole training run as one frozen config: data, model, optimisers, trainer.

Loaded strictly from YAML plus ``--set key=value`` overrides (dotted keys, YAML values); an unknown key is an
error that names it and suggests the nearest valid one.

Example:
    >>> cfg = parse_run_config(None, ["trainer.max_epochs=2", "model.embedding_dim=8"], data="prepared", model="fm")
    >>> cfg.trainer.max_epochs, cfg.model.embedding_dim, cfg.model.name, cfg.data.path
    (2, 8, 'fm', 'prepared')
    >>> parse_run_config(None, ["trainer.max_epoch=2"], data="prepared", model="fm")
    Traceback (most recent call last):
    ...
    config.strict.ConfigError: RunConfig.trainer: unknown key 'max_epoch' (did you mean 'max_epochs'?)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

import yaml

from config.data import DataConfig
from config.evolution import EvolutionConfig
from config.model import ModelConfig
from config.strict import ConfigError, from_dict, load_yaml, to_dict
from config.tables import TablesConfig

__all__ = [
    "ConfigSources",
    "OptimConfig",
    "RetrainConfig",
    "RunConfig",
    "SearchConfig",
    "SupernetConfig",
    "TrainerConfig",
    "parse_run_config",
    "with_values",
]

Sharding = Literal["table_wise", "column_wise", "row_wise", "table_row_wise"]

_RULES: dict[str, Callable[[float], bool]] = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "in [0, 2**32)": lambda v: 0 <= v < 2**32,  # seeds: Lightning and NumPy take 32-bit unsigned ones
}


def _check(config: object, **rules: str) -> None:
    """Each named numeric field of ``config`` is finite and obeys its rule (``None`` passes: unset).

    >>> _check(OptimConfig(), lr="> 0")
    >>> OptimConfig(lr=float("nan"))
    Traceback (most recent call last):
    ...
    config.strict.ConfigError: OptimConfig.lr: must be finite and > 0, got nan
    """
    for name, rule in rules.items():
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and _RULES[rule](value)):
            finite = "finite and " if isinstance(value, float) else ""
            raise ConfigError(f"{type(config).__name__}.{name}: must be {finite}{rule}, got {value!r}")


@dataclass(frozen=True)
class OptimConfig:
    """Dense weights: Adam/AdamW with ``lr``. Embedding tables: a fused FBGEMM optimiser applied in backward.

    ``sparse``: the tables' optimiser (:mod:`ctr.tables.optimizers`): ``rowwise_adagrad``, ``adagrad`` or ``sgd``, the
    three FBGEMM 1.8.0 runs on CPU (its Adam, partial row-wise Adam and LAMB kernels are CUDA-only).
    ``embedding_l2``: FuxiCTR's ``embedding_regularizer``, ``embedding_l2 / 2 * ||w_r||^2`` for each table row
    ``r`` a batch looks up (once per distinct row), added to the loss: each looked-up row's gradient gains
    ``embedding_l2 * w_r`` (:mod:`ctr.training.row_l2`). ``sparse_weight_decay`` with
    ``sparse_weight_decay_mode`` (``l2`` or ``decoupled``): FBGEMM's own weight decay, honoured by its CUDA
    row-wise Adagrad only (its CPU kernels ignore it, so a CPU run refuses it: use ``embedding_l2``).
    ``scheduler``: ``none``, ``step`` (lr x ``gamma`` every epoch), ``cosine`` (to 0 over ``max_epochs``), both
    for the dense optimiser only (the tables keep ``sparse_lr``), or ``plateau`` (FuxiCTR's
    ``reduce_lr_on_plateau``, :mod:`ctr.training.plateau`): after every epoch whose validation AUC is not a
    new best, the dense and the table learning rates are multiplied by ``plateau_factor``, down to ``min_lr``;
    with ``plateau_restore`` the model's weights also go back to the best epoch's (``checkpoints/best.ckpt``)
    before training goes on, so the epochs after a bad one fine-tune the best model at the lower rates instead of
    the over-fitted one (the optimisers' states are kept).
    """

    dense: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    sparse: Literal["rowwise_adagrad", "adagrad", "sgd"] = "rowwise_adagrad"
    sparse_lr: float = 0.01
    embedding_l2: float = 0.0
    sparse_weight_decay: float = 0.0
    sparse_weight_decay_mode: Literal["l2", "decoupled"] = "l2"
    scheduler: Literal["none", "step", "cosine", "plateau"] = "none"
    gamma: float = 0.5
    plateau_factor: float = 0.1
    min_lr: float = 1e-6
    plateau_restore: bool = False

    def __post_init__(self) -> None:
        _check(
            self,
            lr="> 0",
            sparse_lr="> 0",
            weight_decay=">= 0",
            gamma="in (0, 1]",
            embedding_l2=">= 0",
            sparse_weight_decay=">= 0",
            plateau_factor="in (0, 1]",
            min_lr=">= 0",
        )
        if self.sparse_weight_decay > 0 and self.sparse != "rowwise_adagrad":
            raise ConfigError(
                f"OptimConfig.sparse_weight_decay: FBGEMM's {self.sparse} ignores weight decay (only rowwise_adagrad, "
                f"on CUDA, honours it); use optim.embedding_l2, got {self.sparse_weight_decay}"
            )


@dataclass(frozen=True)
class TrainerConfig:
    """Epochs, early stopping on validation AUC, clipping of dense gradients, seeds, sharding, checkpoints.

    ``threads``: torch threads per process (default: cores / processes). On a loaded machine 1 avoids
    OpenMP threads spinning against other processes, which can cost 10x.
    ``progress_bar``: a bar over each epoch's batches, drawn only when standard output is a terminal (the epoch's
    one-line summary is printed either way).
    ``precision``: ``32-true``, or ``bf16-mixed``: the dense layers run under bfloat16 autocast (fast on CPUs with
    AVX512-BF16/AMX and on GPUs); weights, optimiser states and the loss stay float32 (tables: ``model.table_dtype``).
    ``keep_freed_memory``: glibc keeps the buffers a step frees for the next step instead of returning them
    to the system (:mod:`ctr.training.memory`; a tenth of the page faults and a third of the kernel time per epoch).
    ``column_shard_dim``: under ``column_wise`` sharding, the narrowest column block the planner may cut (TorchRec's
    ``min_partition``; a multiple of 4). Unset, the planner keeps narrow tables whole (one block per table).
    """

    max_epochs: int = 5
    patience: int = 1
    gradient_clip: float | None = None
    seed: int = 0
    sharding: Sharding = "table_wise"
    checkpoint_every_n_steps: int | None = None
    limit_train_batches: int | None = None
    group_field: str | None = None
    log_every_n_steps: int = 50
    progress_bar: bool = True
    threads: int | None = None
    column_shard_dim: int | None = None
    precision: Literal["32-true", "bf16-mixed"] = "32-true"
    keep_freed_memory: bool = True

    def __post_init__(self) -> None:
        if self.column_shard_dim is not None and (self.column_shard_dim < 4 or self.column_shard_dim % 4):
            raise ConfigError(f"TrainerConfig.column_shard_dim: must be a multiple of 4, got {self.column_shard_dim}")
        _check(
            self,
            max_epochs=">= 1",
            patience=">= 0",
            gradient_clip="> 0",
            seed="in [0, 2**32)",
            checkpoint_every_n_steps=">= 1",
            limit_train_batches=">= 1",
            log_every_n_steps=">= 1",
            threads=">= 1",
        )


RELATIVE_DEFAULTS = (1e-3, 3000.0)  # (alpha, threshold_lr per epoch) of the relative form: docs/optembed.md
PAPER_DEFAULTS = (1e-4, 1e-2)  # (alpha, threshold_lr per step) of the paper's form: starting points, not tuned


@dataclass(frozen=True)
class SupernetConfig:
    """OptEmbed supernet: thresholds' regulariser ``alpha``, their own SGD learning rate, dim candidates.

    ``relative`` (default): each field's threshold is in units of the running mean L1 norm of its looked-up
    rows, and ``threshold_lr`` is the thresholds' step per epoch (divided by the steps of an epoch), so that
    ``alpha`` and ``threshold_lr`` mean the same at any number of rows, batch size, table initialisation or
    table learning rate (docs/optembed.md: the derivation and the measurements behind the defaults).
    ``relative: false`` is the paper's form (thresholds in the table's own units, ``threshold_lr`` per step):
    scale-dependent, see ../shared/ref/optembed.md, section 2. ``alpha`` and ``threshold_lr`` left unset take
    the form's default (:data:`RELATIVE_DEFAULTS` or :data:`PAPER_DEFAULTS`).
    ``hold_auc``: a tolerance in AUC, which switches on :mod:`ctr.optembed.threshold_control` (``alpha`` doubled after a
    validation epoch within ``hold_auc`` of ``reference_auc``, else divided by 4 and the thresholds halved);
    ``reference_auc`` unset: the supernet's best validation AUC so far (``ctr optembed`` sets its baseline's).
    ``candidates`` defaults to the multiples of 4 up to the embedding dim.
    ``pressure``: ``uniform`` (the paper's ``alpha * sum_f exp(-t_f)``) or ``by_rows``: field ``f``'s term is
    weighted by ``min(1, rows_f / mean rows per field)``, so that a field smaller than the average presses its
    threshold less in proportion (cutting a field of 4 rows saves 4 rows' parameters; docs/optembed.md).
    ``small_field_rows``: a field whose table has at most this many rows is not row-pruned (all its rows are
    kept; its dim is still searched). Its rows are all frequent and of about one norm, so one threshold step
    cuts the field whole, and what that saves is a few rows; measured on MovieLens and planted data
    (docs/optembed.md, "Small fields"). 0 prunes every field, as the paper does.
    ``prune_rows`` and ``sample_dims`` switch the two halves of the supernet (see :mod:`ctr.optembed.variants`).

    Example:
        >>> SupernetConfig().effective_alpha, SupernetConfig(relative=False).effective_threshold_lr
        (0.001, 0.01)
    """

    alpha: float | None = None
    threshold_lr: float | None = None
    candidates: tuple[int, ...] | None = None
    sample_dims: bool = True
    prune_rows: bool = True
    relative: bool = True
    hold_auc: float | None = None
    reference_auc: float | None = None
    pressure: Literal["uniform", "by_rows"] = "uniform"
    small_field_rows: int = 100

    @property
    def effective_alpha(self) -> float:
        return self.alpha if self.alpha is not None else self._defaults[0]

    @property
    def effective_threshold_lr(self) -> float:
        return self.threshold_lr if self.threshold_lr is not None else self._defaults[1]

    @property
    def _defaults(self) -> tuple[float, float]:
        return RELATIVE_DEFAULTS if self.relative else PAPER_DEFAULTS

    def __post_init__(self) -> None:
        _check(
            self, alpha=">= 0", threshold_lr="> 0", hold_auc=">= 0", reference_auc="in (0, 1]", small_field_rows=">= 0"
        )
        bad = self.candidates is not None and (
            not self.candidates or max(self.candidates) == 0 or any(c < 0 or c % 4 for c in self.candidates)
        )
        if bad:
            raise ConfigError(
                f"SupernetConfig.candidates: need multiples of 4 >= 0, not all 0 (FBGEMM tables; 0 drops a field), "
                f"got {list(self.candidates or ())}"
            )


@dataclass(frozen=True)
class SearchConfig(EvolutionConfig):
    """OptEmbed's evolutionary search over per-field dims (defaults as in the paper: 20, 10, 10, 0.1, 30, 15).

    ``multi_objective``: maximise validation AUC and minimise embedding parameters (Pareto front).
    ``budget``: keep only candidates whose embedding parameters are at most this fraction of the full,
    unpruned table's (the baseline's embedding parameters). ``val_rows``: score on a seeded sample of that
    many validation rows (``None``: all of them).
    ``workers``: Ray evaluator actors (0: score in the driver process, without Ray).
    ``pick_tolerance``: retrain the smallest candidate whose validation AUC is within this of the best one
    (0: the best one itself). ``shrink`` (an extension, not in the paper): then step each field, largest
    table first, down to its smallest dim wherever the validation AUC stays within ``pick_tolerance`` +
    ``auc_noise`` of the best -- fields the AUC does not depend on end at the smallest dim even when their table
    is too small for the evolution to notice. The best is the largest of many noisy scores, so a step within one
    noise unit of it is not measurably worse (:meth:`shrink_floor`; docs/optembed.md, "Small fields").
    ``auc_noise``: when ``val_rows`` is unset, score on a sample just large enough that the standard error of an
    AUC difference between two candidates (DeLong, between the largest and the smallest candidate) is about
    this (:mod:`search.sample_size`); ``None``: every validation row. ``head_dtype``: the scoring head's
    dtype (``bfloat16`` is faster where the CPU has it, but moves AUCs by about 1e-4).
    """

    seed: int = 0
    workers: int = 1
    multi_objective: bool = False
    budget: float | None = None
    val_rows: int | None = None
    auc_noise: float | None = 0.001
    head_dtype: Literal["float32", "bfloat16"] = "float32"
    eval_batch_size: int = 8192
    pick_tolerance: float = 0.0
    shrink: bool = True

    def __post_init__(self) -> None:
        _check(
            self,
            population=">= 1",
            n_mutation=">= 0",
            n_crossover=">= 0",
            mutation_prob="in [0, 1]",
            generations=">= 1",
            top_k=">= 1",
            seed="in [0, 2**32)",
            workers=">= 0",
            budget="in (0, 1]",  # a fraction of the full table's parameters
            val_rows=">= 1",
            auc_noise="> 0",
            eval_batch_size=">= 1",
            pick_tolerance=">= 0",
        )
        super().__post_init__()  # n_mutation + n_crossover <= population, the crossover: before any stage trains

    def shrink_floor(self, best_auc: float) -> float:
        """The validation AUC a shrink step must keep: ``best_auc - pick_tolerance - auc_noise`` (0 when unset).

        >>> round(SearchConfig().shrink_floor(0.8), 6), round(SearchConfig(auc_noise=None).shrink_floor(0.8), 6)
        (0.799, 0.8)
        """
        return best_auc - self.pick_tolerance - (self.auc_noise or 0.0)

    def evolution(self) -> EvolutionConfig:
        """The evolutionary search's own settings alone (``population``, ``n_mutation``, ...)."""
        return EvolutionConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EvolutionConfig)})


@dataclass(frozen=True)
class RetrainConfig:
    """Retraining the physically pruned, mixed-dimension table of an OptEmbed plan.

    ``init``: ``rewind`` to the supernet's initial weights (lottery-ticket style, as the official code),
    ``fresh`` (a new initialisation, seeded by ``trainer.seed``) or ``inherit`` the trained supernet's weights.
    ``supernet``: the supernet's run directory; ``plan``: the directory holding ``plan.json`` and ``masks.npz``.
    """

    init: Literal["rewind", "fresh", "inherit"] = "rewind"
    supernet: str | None = None
    plan: str | None = None


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    supernet: SupernetConfig | None = None
    search: SearchConfig | None = None
    retrain: RetrainConfig | None = None
    tables: TablesConfig | None = None  # a table method (hashing, QR, MDE, Unified Embedding); None: full

    def __post_init__(self) -> None:  # across sections: what would otherwise fail only when a stage starts
        candidates = self.supernet.candidates if self.supernet is not None else None
        if candidates is not None and max(candidates) > self.model.embedding_dim:
            raise ConfigError(
                f"SupernetConfig.candidates: {list(candidates)} exceed model.embedding_dim={self.model.embedding_dim}"
            )


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if node.get(key) is None:  # absent, or an empty section (``supernet: null`` in a resolved config)
            node[key] = {}
        child = node[key]
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def _parse_value(raw: str) -> Any:
    """A YAML value; also ``1e30``, which YAML 1.1 reads as a string."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


class ConfigSources(TypedDict, total=False):
    """What a command adds to a config file: ``--data``, ``--model`` and the optional sections it needs."""

    data: str | None
    model: str | None
    sections: Sequence[str]


def parse_run_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    fill: Callable[[dict[str, Any]], None] | None = None,
    **sources: Unpack[ConfigSources],
) -> RunConfig:
    """YAML file (optional) + ``key=value`` overrides + the CLI's ``--data``/``--model``, strictly.

    ``sections`` are optional sections to create with their defaults when absent (``ctr supernet``).
    ``fill`` may add keys to the raw tree before it is checked (the data-aware defaults of
    :func:`ctr.training.defaults.load_run_config`, which is what the commands call).
    """
    tree: dict[str, Any] = {}
    if path is not None:
        loaded = load_yaml(path)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        tree = loaded
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), _parse_value(raw))
    for section in sources.get("sections", ()):
        if tree.get(section) is None:
            tree[section] = {}
    if (data := sources.get("data")) is not None:
        _set(tree, "data.path", data)
    if (model := sources.get("model")) is not None:
        _set(tree, "model.name", model)
    if fill is not None:
        fill(tree)
    return from_dict(RunConfig, tree)


def with_values(config: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """``config`` with dotted keys set to new values, checked as strictly as ``--set`` overrides.

    >>> base = parse_run_config(None, data="prepared", model="fm")
    >>> with_values(base, {"optim.sparse_lr": 0.1, "model.mlp": [64]}).optim.sparse_lr
    0.1
    >>> with_values(base, {"optim.sparse_lrr": 0.1})
    Traceback (most recent call last):
    ...
    config.strict.ConfigError: RunConfig.optim: unknown key 'sparse_lrr' (did you mean 'sparse_lr'?)
    """
    tree = to_dict(config)
    for key, value in values.items():
        _set(tree, key, value)
    return from_dict(RunConfig, tree)
