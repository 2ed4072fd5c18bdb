"""Planted-signal synthetic data in the Criteo TSV format, with its ground truth.

``write_synthetic(rows, "data.tsv", seed)`` writes ``rows`` lines of 40 tab-separated fields, no header::

    label  I1 .. I13                      C1 .. C26
    0/1    integer counts, "" = missing   8 lowercase hex chars, "" = missing

    1	0	3	12		2741	31	2	9	71	0	1		4	a1b2c3d4	0f9e8d7c	...	(26 C fields)

and saves the generating truth (a ``Truth``) next to it as ``data.tsv.truth.json``.

How a row is made:

* Categorical field ``Cf`` draws a 0-based *rank* from a truncated power law over ``cardinality`` ranks
  (exponent 1.05..1.2, inverse CDF of the continuous law, so rank 0 is the most frequent value) and is
  missing with its own rate. Rank ``r`` is written as ``%08x`` of ``fmix32(r ^ salt_f)``, a bijection on
  32 bits, so distinct ranks of one field never collide and the same rank always gives the same string.
* Dense field ``Ij`` is the floor of a log-logistic draw (heavy tailed, closed-form inverse CDF) with its
  own missing rate; ``I2`` is ``-1`` in 5% of rows, like Criteo.
* ``logit = bias + sum_f w_f[rank_f] + sum_j c_j * log1p(I_j) + sum_(a,b) v_ab[hash(rank_a, rank_b)]``.
  Missing values contribute 0. The effect table ``w_f`` of an informative categorical field covers its
  ``EFFECT_HEAD`` most frequent ranks (the tail contributes 0); rank ``r`` draws a normal scaled by
  ``(1 + r / EFFECT_DECAY) ** -0.5`` and the table is standardised so that, weighted by rank frequency,
  it has mean 0 and std ``_CATEGORICAL[f].effect``. So most of the signal sits on values seen thousands
  of times in 200k rows (learnable), even for a field of 1e6 values. An interaction ``v_ab`` is a table
  of ``INTERACTION_TABLE`` normal effects indexed by a hash of both ranks, non-zero only when both values
  are present and among their field's ``INTERACTION_HEAD`` most frequent (at most 100 learnable cells).
  ``bias`` is solved on a pilot sample so that the CTR is about ``TARGET_CTR`` (0.25).
* ``label ~ Bernoulli(sigmoid(logit))``.

Randomness: the effect tables come from ``SeedSequence(seed, spawn_key=(0,))``, the bias pilot from
``(1, stream)`` and the rows from ``(2, stream)``, one PCG64 stream per field, addressed by row index
(``PCG64.advance``). So the file does not depend on ``chunk_rows`` (which only bounds memory), and the first
``k`` lines are the same for any ``rows >= k``. The truth's statistics (``bayes_auc``, ``ctr``, ...) are
over all ``rows``.

Example:
    >>> truth = write_synthetic(100_000, "data.tsv", seed=0)  # doctest: +SKIP
    >>> truth.ctr, truth.bayes_auc, truth.noise_fields[:3]  # doctest: +SKIP
    (0.25..., 0.79..., ('I2', 'I4', 'I5'))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from features.spec import InputError

__all__ = [
    "EFFECT_DECAY",
    "EFFECT_HEAD",
    "FORMAT",
    "INTERACTION_HEAD",
    "INTERACTION_TABLE",
    "TARGET_CTR",
    "Truth",
    "write_synthetic",
]

FORMAT = "criteo-tsv"
EFFECT_HEAD = 500
EFFECT_DECAY = 5.0
INTERACTION_TABLE = 4096
INTERACTION_HEAD = 10
TARGET_CTR = 0.25
_PILOT_ROWS = 1 << 16
_I2_NEGATIVE_RATE = 0.05
_DENSE_MAX = 1e9

_Ints = npt.NDArray[np.int64]
_Floats = npt.NDArray[np.float64]
_Bools = npt.NDArray[np.bool_]
_U32 = npt.NDArray[np.uint32]


class _Cat(NamedTuple):
    cardinality: int
    missing: float
    exponent: float
    effect: float  # frequency-weighted std of the main-effect table; 0 = noise field


class _Dense(NamedTuple):
    median: float
    shape: float  # log-logistic shape: smaller is heavier tailed
    missing: float
    coef: float  # logit effect per unit of log1p(value); 0 = noise field


# Cardinalities follow Criteo's (the 1e6+ ones capped at 1e6). 12 informative, 14 pure-noise fields.
_CATEGORICAL: dict[str, _Cat] = {
    "C1": _Cat(1460, 0.00, 1.10, 0.35),
    "C2": _Cat(583, 0.00, 1.10, 0.0),
    "C3": _Cat(1_000_000, 0.03, 1.10, 0.45),
    "C4": _Cat(500_000, 0.03, 1.10, 0.0),
    "C5": _Cat(305, 0.00, 1.15, 0.10),
    "C6": _Cat(24, 0.12, 1.05, 0.40),
    "C7": _Cat(12_517, 0.00, 1.10, 0.0),
    "C8": _Cat(633, 0.00, 1.10, 0.20),
    "C9": _Cat(3, 0.00, 1.05, 0.50),
    "C10": _Cat(93_145, 0.00, 1.10, 0.30),
    "C11": _Cat(5683, 0.00, 1.10, 0.30),
    "C12": _Cat(800_000, 0.03, 1.15, 0.0),
    "C13": _Cat(3194, 0.00, 1.10, 0.15),
    "C14": _Cat(27, 0.00, 1.05, 0.25),
    "C15": _Cat(14_992, 0.00, 1.10, 0.0),
    "C16": _Cat(600_000, 0.03, 1.15, 0.0),
    "C17": _Cat(10, 0.00, 1.05, 0.35),
    "C18": _Cat(5652, 0.00, 1.10, 0.0),
    "C19": _Cat(2173, 0.40, 1.10, 0.0),
    "C20": _Cat(4, 0.40, 1.05, 0.0),
    "C21": _Cat(700_000, 0.03, 1.15, 0.0),
    "C22": _Cat(18, 0.40, 1.05, 0.0),
    "C23": _Cat(15, 0.00, 1.05, 0.10),
    "C24": _Cat(286_181, 0.03, 1.10, 0.0),
    "C25": _Cat(105, 0.40, 1.10, 0.0),
    "C26": _Cat(142_572, 0.40, 1.10, 0.0),
}

_DENSE: dict[str, _Dense] = {
    "I1": _Dense(1.0, 1.3, 0.40, 0.30),
    "I2": _Dense(3.0, 0.9, 0.00, 0.0),
    "I3": _Dense(8.0, 1.2, 0.20, -0.20),
    "I4": _Dense(5.0, 1.5, 0.20, 0.0),
    "I5": _Dense(2500.0, 1.0, 0.03, 0.0),
    "I6": _Dense(30.0, 1.1, 0.22, 0.15),
    "I7": _Dense(5.0, 1.1, 0.04, 0.0),
    "I8": _Dense(10.0, 1.8, 0.01, 0.0),
    "I9": _Dense(60.0, 1.2, 0.04, 0.0),
    "I10": _Dense(0.8, 2.0, 0.40, 0.0),
    "I11": _Dense(2.0, 1.3, 0.04, 0.35),
    "I12": _Dense(0.3, 1.0, 0.35, 0.0),
    "I13": _Dense(5.0, 1.4, 0.22, 0.0),
}

# Pairs of low/medium-cardinality fields whose joint value carries an effect (std of the table).
_INTERACTIONS: dict[tuple[str, str], float] = {
    ("C6", "C17"): 0.45,
    ("C9", "C14"): 0.35,
    ("C5", "C23"): 0.40,
}

_CAT_NAMES = tuple(_CATEGORICAL)
_DENSE_NAMES = tuple(_DENSE)
_STREAM_LABEL = len(_CAT_NAMES) + len(_DENSE_NAMES)
_PARAMS, _PILOT, _ROWS = 0, 1, 2
_HEX_PAIRS = np.array(
    [ord(f"{b:02x}"[0]) | (ord(f"{b:02x}"[1]) << 8) for b in range(256)], dtype="<u2"
)  # byte -> its two hex digits, as little-endian uint16 so the first digit comes first in memory


@dataclass(frozen=True)
class Truth:
    """What generated a synthetic file, saved as ``<file>.truth.json``.

    ``informative_fields`` and ``noise_fields`` partition the 39 input fields (a field that only appears
    in an interaction is informative). ``effect_std`` is the realised standard deviation over all rows
    of each informative field's main-effect contribution to the logit (missing rows count as 0);
    ``interaction_std`` the same for each interaction, keyed ``"Ca*Cb"``. ``effect_scale`` holds the
    configured parameters: table std for categorical fields, the log1p coefficient for dense ones.
    ``bayes_auc`` is the ROC AUC of the true probabilities against the drawn labels (exact, ties
    counted half; computed on the float32 logits, which order rows as the probabilities do);
    ``expected_bayes_auc`` its expectation over the label draw. Both are ``None`` when the labels hold
    one class only.
    """

    format: str
    rows: int
    seed: int
    ctr: float
    bias: float
    logit_std: float
    bayes_auc: float | None
    expected_bayes_auc: float | None
    informative_fields: tuple[str, ...]
    noise_fields: tuple[str, ...]
    interactions: tuple[tuple[str, str], ...]
    cardinalities: dict[str, int]
    missing_rates: dict[str, float]
    effect_std: dict[str, float]
    interaction_std: dict[str, float]
    effect_scale: dict[str, float]
    effect_head: int
    effect_decay: float
    interaction_head: int
    interaction_table: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> Truth:
        raw: dict[str, Any] = json.loads(Path(path).read_text())
        names = {f.name for f in fields(cls)}
        unknown, absent = sorted(set(raw) - names), sorted(names - set(raw))
        if unknown or absent:
            raise ValueError(f"{path}: unknown truth keys {unknown}, missing keys {absent}")
        raw["informative_fields"] = tuple(raw["informative_fields"])
        raw["noise_fields"] = tuple(raw["noise_fields"])
        raw["interactions"] = tuple((a, b) for a, b in raw["interactions"])
        return cls(**raw)


@dataclass(frozen=True)
class _Params:
    """Effect tables drawn once from the seed."""

    seed: int
    bias: float
    tables: dict[str, _Floats]  # informative categorical field -> effect per head rank
    pair_tables: dict[tuple[str, str], _Floats]  # interaction -> INTERACTION_TABLE effects


class _Latent(NamedTuple):
    """A block of rows before formatting: ranks (-1 = missing), dense values and logit parts."""

    ranks: dict[str, _Ints]
    dense: dict[str, _Ints]
    dense_valid: dict[str, _Bools]
    parts: dict[str, _Floats]  # field or "Ca*Cb" -> contribution to the logit (without bias)


def write_synthetic(
    rows: int, out: str | Path, seed: int = 0, *, chunk_rows: int = 1_000_000, progress: bool = False
) -> Truth:
    """Write ``rows`` synthetic Criteo-format rows to ``out`` and the truth to ``f"{out}.truth.json"``.

    The file is a function of ``(rows, seed)`` only: ``chunk_rows`` bounds memory (about 1 KB per chunk
    row at peak, plus 5 bytes per row kept for the AUC) but does not change a byte.
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; --out names the TSV file to write")
    if out.exists() and not Path(f"{out}.truth.json").is_file():  # only a file that synth wrote is replaced
        raise InputError(f"{out}: exists and was not written by `ctr synth` (no {out.name}.truth.json beside it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    params = _draw_params(seed)
    logits = np.empty(rows, dtype=np.float32)
    labels = np.empty(rows, dtype=np.uint8)
    sums: dict[str, float] = {}
    squares: dict[str, float] = {}
    with out.open("wb") as fh, tqdm(total=rows, unit="row", disable=not progress, desc=out.name) as bar:
        for start in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - start)
            latent = _draw_latent(seed, _ROWS, start, n, params)
            logit = params.bias + _sum_parts(latent.parts, n)
            u = _uniforms(seed, _ROWS, _STREAM_LABEL, start, n, 1)[:, 0]
            label = (u < _sigmoid(logit)).astype(np.uint8)
            logits[start : start + n] = logit
            labels[start : start + n] = label
            for key, part in latent.parts.items():
                sums[key] = sums.get(key, 0.0) + float(part.sum())
                squares[key] = squares.get(key, 0.0) + float(np.dot(part, part))
            latent.parts.clear()
            del logit, u
            _frame(label, latent).write_csv(
                fh, separator="\t", include_header=False, quote_style="never", null_value=""
            )
            bar.update(n)
    truth = _truth(rows, seed, params, logits, labels, sums, squares)
    Path(f"{out}.truth.json").write_text(truth.to_json())
    return truth


def _truth(
    rows: int,
    seed: int,
    params: _Params,
    logits: npt.NDArray[np.float32],
    labels: npt.NDArray[np.uint8],
    sums: dict[str, float],
    squares: dict[str, float],
) -> Truth:
    def std(key: str) -> float:
        mean = sums[key] / rows
        return float(np.sqrt(max(squares[key] / rows - mean * mean, 0.0)))

    informative = {f for f, c in _CATEGORICAL.items() if c.effect > 0}
    informative |= {f for f, d in _DENSE.items() if d.coef != 0}
    informative |= {f for pair in _INTERACTIONS for f in pair}
    order = _DENSE_NAMES + _CAT_NAMES
    scale = {f: _CATEGORICAL[f].effect for f in _CAT_NAMES if _CATEGORICAL[f].effect > 0}
    scale |= {f: _DENSE[f].coef for f in _DENSE_NAMES if _DENSE[f].coef != 0}
    missing = {f: c.missing for f, c in _CATEGORICAL.items()} | {f: d.missing for f, d in _DENSE.items()}
    two_classes = 0 < int(labels.sum()) < rows
    return Truth(
        format=FORMAT,
        rows=rows,
        seed=seed,
        ctr=float(labels.mean()),
        bias=params.bias,
        logit_std=float(logits.astype(np.float64).std()),
        bayes_auc=_roc_auc(logits, labels) if two_classes else None,
        expected_bayes_auc=_expected_auc(logits) if two_classes else None,
        informative_fields=tuple(f for f in order if f in informative),
        noise_fields=tuple(f for f in order if f not in informative),
        interactions=tuple(_INTERACTIONS),
        cardinalities={f: c.cardinality for f, c in _CATEGORICAL.items()},
        missing_rates=missing,
        effect_std={f: std(f) for f in order if f in scale},
        interaction_std={_pair_key(p): std(_pair_key(p)) for p in _INTERACTIONS},
        effect_scale=scale,
        effect_head=EFFECT_HEAD,
        effect_decay=EFFECT_DECAY,
        interaction_head=INTERACTION_HEAD,
        interaction_table=INTERACTION_TABLE,
    )


def _pair_key(pair: tuple[str, str]) -> str:
    return f"{pair[0]}*{pair[1]}"


def _draw_params(seed: int) -> _Params:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PARAMS,)))
    tables: dict[str, _Floats] = {}
    for name, cat in _CATEGORICAL.items():
        if cat.effect <= 0:
            continue
        head = min(cat.cardinality, EFFECT_HEAD)
        z = rng.standard_normal(head) * (1.0 + np.arange(head) / EFFECT_DECAY) ** -0.5
        mass = _rank_mass(cat, head)
        mass = mass / mass.sum()
        mean = float(mass @ z)
        sd = float(np.sqrt(mass @ (z - mean) ** 2))
        tables[name] = cat.effect * (z - mean) / sd
    pair_tables: dict[tuple[str, str], _Floats] = {}
    for pair, effect in _INTERACTIONS.items():
        z = rng.standard_normal(INTERACTION_TABLE)
        pair_tables[pair] = effect * (z - z.mean()) / z.std()
    unbiased = _Params(seed=seed, bias=0.0, tables=tables, pair_tables=pair_tables)
    pilot = _draw_latent(seed, _PILOT, 0, _PILOT_ROWS, unbiased)
    bias = _solve_bias(_sum_parts(pilot.parts, _PILOT_ROWS), TARGET_CTR)
    return _Params(seed=seed, bias=bias, tables=tables, pair_tables=pair_tables)


def _solve_bias(logit: _Floats, ctr: float) -> float:
    """The ``b`` with ``mean(sigmoid(b + logit)) == ctr`` (bisection; the mean is increasing in b)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(_sigmoid(mid + logit).mean()) < ctr:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 12)


def _draw_latent(seed: int, group: int, start: int, n: int, params: _Params) -> _Latent:
    ranks: dict[str, _Ints] = {}
    parts: dict[str, _Floats] = {}
    for stream, (name, cat) in enumerate(_CATEGORICAL.items()):
        u = _uniforms(seed, group, stream, start, n, 2)
        rank = _zipf_rank(u[:, 0], cat)
        rank[u[:, 1] < cat.missing] = -1
        ranks[name] = rank
        if name in params.tables:
            table = params.tables[name]
            hit = (rank >= 0) & (rank < table.size)
            parts[name] = np.where(hit, table[np.clip(rank, 0, table.size - 1)], 0.0)
    dense: dict[str, _Ints] = {}
    dense_valid: dict[str, _Bools] = {}
    for j, (name, spec) in enumerate(_DENSE.items()):
        u = _uniforms(seed, group, len(_CAT_NAMES) + j, start, n, 3)
        q = np.clip(u[:, 0], 1e-12, 1 - 1e-12)
        value = np.floor(np.minimum(spec.median * (q / (1 - q)) ** (1 / spec.shape), _DENSE_MAX))
        ints = value.astype(np.int64)
        if name == "I2":
            ints[u[:, 2] < _I2_NEGATIVE_RATE] = -1
        valid = u[:, 1] >= spec.missing
        dense[name] = ints
        dense_valid[name] = valid
        if spec.coef != 0:
            parts[name] = np.where(valid, spec.coef * np.log1p(np.maximum(ints, 0)), 0.0)
    for pair, table in params.pair_tables.items():
        a, b = ranks[pair[0]], ranks[pair[1]]
        idx = _fmix32(a.astype(np.uint32) * np.uint32(0x9E3779B1) ^ b.astype(np.uint32)) % table.size
        both = (a >= 0) & (b >= 0) & (a < INTERACTION_HEAD) & (b < INTERACTION_HEAD)
        parts[_pair_key(pair)] = np.where(both, table[idx], 0.0)
    return _Latent(ranks=ranks, dense=dense, dense_valid=dense_valid, parts=parts)


def _sum_parts(parts: dict[str, _Floats], n: int) -> _Floats:
    total = np.zeros(n, dtype=np.float64)
    for part in parts.values():
        total += part
    return total


def _uniforms(seed: int, group: int, stream: int, start: int, n: int, per_row: int) -> _Floats:
    """Rows ``start .. start+n`` of a stream of ``per_row`` uniforms per row, independent of chunking."""
    bits = np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(group, stream)))
    bits.advance(start * per_row)  # a float64 draw consumes exactly one 64-bit output
    return np.random.Generator(bits).random(n * per_row).reshape(n, per_row)


def _zipf_rank(u: _Floats, cat: _Cat) -> _Ints:
    """Inverse CDF of the continuous power law ``x^-s`` on ``[1, K+1)``, floored to a 0-based rank."""
    a = 1.0 - cat.exponent
    x = (1.0 + u * ((cat.cardinality + 1.0) ** a - 1.0)) ** (1.0 / a)
    rank: _Ints = np.clip(np.floor(x).astype(np.int64) - 1, 0, cat.cardinality - 1)
    return rank


def _rank_mass(cat: _Cat, head: int) -> _Floats:
    """Probability of ranks ``0 .. head-1`` under ``_zipf_rank``."""
    a = 1.0 - cat.exponent
    edges = np.arange(1, head + 2, dtype=np.float64) ** a
    mass: _Floats = (edges[:-1] - edges[1:]) / (1.0 - (cat.cardinality + 1.0) ** a)
    return mass


def _sigmoid(x: _Floats | float) -> _Floats:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64))), dtype=np.float64)


def _fmix32(h: _U32) -> _U32:
    """MurmurHash3's finaliser: a bijection on uint32."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _hex_column(rank: _Ints, salt: int) -> pa.StringArray:
    """``%08x`` of ``fmix32(rank ^ salt)``, null where ``rank < 0``, built as Arrow buffers directly."""
    n = rank.size
    value = _fmix32(rank.astype(np.uint32) ^ np.uint32(salt))
    chars = _HEX_PAIRS[value.astype(">u4").view(np.uint8)].view(np.uint8)  # n*4 bytes -> n*8 chars
    offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
    validity = np.packbits(rank >= 0, bitorder="little")
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars), pa.py_buffer(validity))


def _frame(label: npt.NDArray[np.uint8], latent: _Latent) -> pl.DataFrame:
    """The chunk as the file's 40 columns. Empties ``latent``'s dicts as it goes, to bound peak memory."""
    columns = [pl.Series("label", label)]
    for name in _DENSE_NAMES:
        values, valid = latent.dense.pop(name), latent.dense_valid.pop(name)
        columns.append(_series(name, pa.array(values, mask=~valid)))
    for f, name in enumerate(_CAT_NAMES):
        salt = int(_fmix32(np.array([f + 1], dtype=np.uint32))[0])
        columns.append(_series(name, _hex_column(latent.ranks.pop(name), salt)))
    return pl.DataFrame(columns)


def _series(name: str, array: pa.Array) -> pl.Series:
    series = pl.from_arrow(array)
    assert isinstance(series, pl.Series)
    return series.alias(name)


def _auc_from_sorted(scores: npt.NDArray[Any], pos: _Floats, neg: _Floats) -> tuple[float, float]:
    """Sum over score-tie groups of ``pos_g * (neg below g) + pos_g * neg_g / 2`` and ``sum(pos)*sum(neg)``.

    ``scores`` is sorted ascending, ``pos``/``neg`` are each row's positive/negative weight in that order.
    """
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
    pos_g = np.add.reduceat(pos, starts)
    neg_g = np.add.reduceat(neg, starts)
    below = np.cumsum(neg_g) - neg_g
    return float(pos_g @ below + 0.5 * (pos_g @ neg_g)), float(pos.sum() * neg.sum())


def _roc_auc(scores: npt.NDArray[Any], labels: npt.NDArray[Any]) -> float:
    """Exact ROC AUC (Mann-Whitney U with ties counted half); needs both classes present."""
    order = np.argsort(scores, kind="stable")
    y = np.asarray(labels)[order].astype(np.int64)
    s = np.asarray(scores)[order]
    if y.sum() in (0, y.size):
        raise ValueError("ROC AUC needs both classes in labels")
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_g = np.add.reduceat(y, starts)
    neg_g = np.diff(np.r_[starts, y.size]) - pos_g
    below = np.cumsum(neg_g) - neg_g
    twice = int(pos_g @ (2 * below + neg_g))  # integer, exact
    return twice / (2 * int(pos_g.sum()) * int(neg_g.sum()))


def _expected_auc(logits: npt.NDArray[Any]) -> float:
    """AUC expected over ``label ~ Bernoulli(sigmoid(logit))``, as a ratio of expected pair counts."""
    s = np.sort(np.asarray(logits))
    p = _sigmoid(s)
    num, den = _auc_from_sorted(s, p, 1.0 - p)
    self_pairs = float(p @ (1.0 - p))  # a row is never paired with itself
    return (num - 0.5 * self_pairs) / (den - self_pairs)
