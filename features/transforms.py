"""Pure ``LazyFrame -> LazyFrame`` steps: validate, derive, split, transform.

Each step takes and returns a lazy frame, so ``prepare`` chains them with ``.pipe`` and Polars runs them
in one streaming pass. Parsed values live in columns named ``__v_<field>``; raw strings stay untouched
until encoding.

Example:
    >>> import polars as pl
    >>> df = pl.DataFrame({"v": [0.0, 2.0, 3.0, 100.0, None]})
    >>> df.select(dense_transform(pl.col("v"), "log_square")).to_series().to_list()
    [0.0, 2.0, 1.0, 21.0, None]
"""

from __future__ import annotations

import numpy as np
import polars as pl

from features.hashing import mix64
from features.spec import DatasetSpec, Transform

__all__ = [
    "SPLITS",
    "TimeCut",
    "assign_random_split",
    "assign_time_split",
    "dense_transform",
    "derive_time_parts",
    "parse_time",
    "reject_reason",
    "rejected_reasons",
    "time_columns",
    "validate",
]

SPLITS = ("train", "valid", "test")
_NULL_STR = pl.lit(None, dtype=pl.String)


def parsed(name: str) -> str:
    return f"__v_{name}"


def parse_time(col: pl.Expr, fmt: str | None) -> pl.Expr:
    """Raw time string to Datetime: strptime with ``fmt``, or unix seconds when ``fmt`` is None."""
    if fmt is None:
        return pl.from_epoch(col.str.strip_chars().cast(pl.Int64, strict=False), time_unit="s")
    value = col.str.strip_chars()
    if "%H" in fmt and "%M" not in fmt:  # Polars needs minutes with hours (e.g. Avazu's %y%m%d%H)
        value, fmt = value + "00", fmt + "%M"
    return value.str.strptime(pl.Datetime("us"), fmt, strict=False)


def validate(lf: pl.LazyFrame, spec: DatasetSpec, *, unlabelled: bool = False) -> pl.LazyFrame:
    """Parse the label, dense values and time, and put the first problem's code into ``__reject``.

    Codes are cheap literals (``label:<col>``, ``number:<col>``, ``range:<col>``, ``time:<col>``, or the
    source's ``columns`` / ``empty line`` / ``encoding``); ``reject_reason`` turns them into messages with the
    offending value, on the rejected rows only. Empty dense values are missing, not errors. A dense value beyond
    its field's ``max_abs`` is rejected (``range``), or clipped when the field says ``clip``; ``nan`` and
    ``inf`` are unparseable either way. ``unlabelled``: a null label (a file without the label column) is
    no problem: ``__label`` stays null.
    """
    label_raw = pl.col(spec.label.column)
    label_num = label_raw.cast(pl.Float64, strict=False)
    if spec.label.threshold is None:
        label_ok = label_num.is_in([0.0, 1.0])
        label_value = label_num
    else:
        label_ok = label_num.is_finite()
        label_value = (label_num >= spec.label.threshold).cast(pl.Float64)
    label_bad = label_ok.not_().fill_null(True)
    if unlabelled:
        label_bad = label_bad & label_raw.is_not_null()
    checks = [(label_bad, f"label:{spec.label.column}")]
    parsed_cols = [label_value.cast(pl.Float32).alias("__label")]
    for d in spec.dense:
        raw = pl.col(d.name)
        value = raw.cast(pl.Float64, strict=False)
        checks.append(((raw != "") & value.is_finite().not_().fill_null(True), f"number:{d.name}"))
        if d.clip:
            value = value.clip(-d.max_abs, d.max_abs)
        else:
            checks.append(((value.abs() > d.max_abs).fill_null(False), f"range:{d.name}"))
        parsed_cols.append(value.alias(parsed(d.name)))
    for column, fmt in time_columns(spec).items():
        value = parse_time(pl.col(column), fmt)
        checks.append((value.is_null(), f"time:{column}"))
        parsed_cols.append(value.alias(parsed(column)))
    reason: pl.Expr = _NULL_STR
    for bad, code in reversed(checks):
        reason = pl.when(bad).then(pl.lit(code)).otherwise(reason)
    reject = pl.coalesce([pl.col("__reject"), reason])
    return lf.with_columns(*parsed_cols).with_columns(reject.alias("__reject"))


def time_columns(spec: DatasetSpec) -> dict[str, str | None]:
    """Every column parsed as a time (derive sources and the split column), with its format."""
    times = {p.column: p.format for p in spec.derive}
    if spec.time is not None:
        times[spec.time.column] = spec.time.format
    return times


def reject_reason(spec: DatasetSpec) -> pl.Expr:
    """The readable reason for a rejected row's code, with the offending value (rejected rows only)."""
    code = pl.col("__reject")
    reason = pl.format("{}", code)
    for name in _quoted(spec):
        value = pl.col(name)
        reason = (
            pl.when(code == f"label:{name}")
            .then(pl.format("label {} is not {}: '{}'", pl.lit(name), pl.lit(_label_rule(spec)), value))
            .when(code == f"number:{name}")
            .then(pl.format("unparseable number in {}: '{}'", pl.lit(name), value))
            .when(code == f"time:{name}")
            .then(pl.format("unparseable time in {}: '{}'", pl.lit(name), value))
            .otherwise(reason)
        )
    for d in spec.dense:
        limit = pl.lit(f"{d.max_abs:g}")
        reason = (
            pl.when(code == f"range:{d.name}")
            .then(pl.format("number out of range in {}: '{}' (max_abs {})", pl.lit(d.name), pl.col(d.name), limit))
            .otherwise(reason)
        )
    n_fields = pl.col("__raw").str.split(pl.col("__sep")).list.len()
    columns = pl.format("expected {} columns, got {}", pl.col("__ncols"), n_fields)
    encoding = pl.lit("invalid UTF-8 (raw shows the bytes as \\xNN)")
    return pl.when(code == "columns").then(columns).when(code == "encoding").then(encoding).otherwise(reason)


def rejected_reasons(spec: DatasetSpec) -> pl.Expr:
    """``reject_reason`` on the rejected rows and null on the others: each batch formats the messages of its
    rejected rows alone (an expression would format one for every row, valid or not)."""
    message = reject_reason(spec)
    inputs = dict.fromkeys(["__reject", "__raw", "__sep", "__ncols", *_quoted(spec)])

    def on_batch(s: pl.Series) -> pl.Series:
        out = pl.repeat(None, len(s), dtype=pl.String, eager=True).alias(s.name)
        bad = s.struct.unnest().with_row_index("__i").filter(pl.col("__reject").is_not_null())
        if bad.height:
            found = bad.select("__i", message.alias("reason"))
            out.scatter(found["__i"], found["reason"])
        return out

    return pl.struct(list(inputs)).map_batches(on_batch, return_dtype=pl.String, is_elementwise=True)


def _quoted(spec: DatasetSpec) -> list[str]:
    return [spec.label.column, *(d.name for d in spec.dense), *time_columns(spec)]


def _label_rule(spec: DatasetSpec) -> str:
    return "0 or 1" if spec.label.threshold is None else "a number"


def derive_time_parts(lf: pl.LazyFrame, spec: DatasetSpec) -> pl.LazyFrame:
    """Categorical fields from a time column (as strings, so they share the vocabulary path)."""
    exprs = []
    for p in spec.derive:
        t = pl.col(parsed(p.column))
        part_expr = {
            "hour_of_day": t.dt.hour(),
            "weekday": t.dt.weekday(),
            "is_weekend": (t.dt.weekday() >= 6).cast(pl.Int8),
            "month": t.dt.month(),
            "year": t.dt.year(),
        }
        exprs += [part_expr[part].cast(pl.String).alias(p.prefix + part) for part in p.parts]
    return lf.with_columns(exprs) if exprs else lf


def _mix64(z: pl.Expr) -> pl.Expr:
    """``features.hashing.mix64`` (SplitMix64's finaliser) as a native expression: UInt64 arithmetic wraps,
    and ``// 2**k`` is the right shift."""
    z = z + pl.lit(0x9E3779B97F4A7C15, dtype=pl.UInt64)
    z = z.xor(z // (1 << 30)) * pl.lit(0xBF58476D1CE4E5B9, dtype=pl.UInt64)
    z = z.xor(z // (1 << 27)) * pl.lit(0x94D049BB133111EB, dtype=pl.UInt64)
    return z.xor(z // (1 << 31))


def _uniform(seed: int) -> pl.Expr:
    """A deterministic U[0, 1) per row from (file index, line, seed): independent of chunking.

    ``mix64(key ^ mix64(seed)) >> 11`` scaled by 2**-53, in native expressions (no Python call per batch);
    the same numbers as ``features.hashing.mix64`` on numpy arrays."""
    salt = int(mix64(np.array([seed], dtype=np.uint64))[0])
    key = (pl.col("__file_idx") * (1 << 40) + pl.col("__line")).cast(pl.UInt64)
    h = _mix64(key.xor(pl.lit(salt, dtype=pl.UInt64)))
    return (h // (1 << 11)).cast(pl.Float64) * 2.0**-53


def _by_cut(x: pl.Expr, cut1: pl.Expr | float, cut2: pl.Expr | float) -> pl.Expr:
    return pl.when(x < cut1).then(pl.lit("train")).when(x < cut2).then(pl.lit("valid")).otherwise(pl.lit("test"))


def assign_random_split(lf: pl.LazyFrame, seed: int, ratios: tuple[float, float, float]) -> pl.LazyFrame:
    """``__split`` by a seeded hash of each row's position: reproducible, no shuffle needed."""
    total = sum(ratios)
    c1, c2 = ratios[0] / total, (ratios[0] + ratios[1]) / total
    return lf.with_columns(_by_cut(_uniform(seed), c1, c2).alias("__split"))


TimeCut = tuple[int, int, int] | None
"""A position in the ``(time in epoch microseconds, __file_idx, __line)`` order of rows: the first row of the
later split; None when the earlier split takes every row."""


def _before(column: str, cut: TimeCut) -> pl.Expr:
    """Whether a row comes before ``cut`` in the ``(time, file, line)`` order."""
    if cut is None:
        return pl.lit(True)
    t, f, line = pl.col(parsed(column)).dt.epoch("us"), pl.col("__file_idx"), pl.col("__line")
    time, file, first = cut
    return (t < time) | ((t == time) & ((f < file) | ((f == file) & (line < first))))


def assign_time_split(lf: pl.LazyFrame, column: str, cut1: TimeCut, cut2: TimeCut) -> pl.LazyFrame:
    """``__split`` by time: rows before ``cut1`` train, before ``cut2`` valid, the rest test.

    Rows are ordered by ``(time, __file_idx, __line)``, a total order, so cuts at row positions give exact
    split sizes; rows sharing a timestamp at a cut go to the earlier split first by file and line.

    Example:
        Two rows at time 5: the first (line 1) goes to train, the second (line 3) to valid.

        >>> import polars as pl
        >>> lf = pl.LazyFrame({"__v_t": [5, 1, 5, 9], "__file_idx": [0] * 4, "__line": [1, 2, 3, 4]})
        >>> lf = lf.with_columns(pl.col("__v_t").cast(pl.Datetime("us")))
        >>> assign_time_split(lf, "t", (5, 0, 3), (9, 0, 4)).collect()["__split"].to_list()
        ['train', 'train', 'valid', 'test']
    """
    split = (
        pl.when(_before(column, cut1))
        .then(pl.lit("train"))
        .when(_before(column, cut2))
        .then(pl.lit("valid"))
        .otherwise(pl.lit("test"))
    )
    return lf.with_columns(split.alias("__split"))


def dense_transform(value: pl.Expr, transform: Transform) -> pl.Expr:
    """The numeric transforms of DenseSpec (nulls stay null)."""
    if transform == "log1p":
        return value.clip(lower_bound=0.0).log1p()
    if transform == "log_square":
        return pl.when(value > 2).then(value.log().pow(2).floor()).otherwise(value)
    return value
