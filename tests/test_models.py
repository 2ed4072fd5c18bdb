"""config/model.py (ModelConfig), ctr/models/layers.py, ctr/tables/embedding.py, ctr/models/zoo.py: shapes,
exact maths, training, meta-device builds and a single-process DMP shard."""

from __future__ import annotations

import copy
import doctest
import inspect
import math
import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch

import config.model
import ctr.models.layers
import ctr.models.zoo
import ctr.tables.embedding
from config.model import MODEL_NAMES, ModelConfig
from config.strict import ConfigError, from_dict
from ctr.artifact.quantize import quantize_embeddings
from ctr.models.layers import MLP, CrossNet, CrossNetV2, DotInteraction, FMInteraction, InnerProduct
from ctr.models.zoo import MODELS, CTRModel, build_model
from ctr.tables.embedding import LINEAR_DIM, DenseEmbedding, LinearArch, SparseArch, _FieldRows, embedding_params
from features.schema import CategoricalField, DenseField, FeatureMap

# Field order c0 (single), m (multi-valued), c1 (single), then two dense fields.
CARD = {"c0": 5, "m": 12, "c1": 20}
FM = FeatureMap(
    dataset="toy",
    label="label",
    dense=(DenseField("d0", "none", 0.0, 0.0, 1.0), DenseField("d1", "none", 0.0, 0.0, 1.0)),
    categorical=(
        CategoricalField("c0", "vocab", CARD["c0"]),
        CategoricalField("m", "vocab", CARD["m"], multi_valued=True),
        CategoricalField("c1", "hash", CARD["c1"]),
    ),
    splits={},
    source_spec={},
    seed=0,
    split_method="random",
)
# Three rows; row 1 has an empty multi-valued list.
ROWS: list[tuple[int, list[int], int]] = [(2, [3, 4], 7), (0, [], 19), (4, [11], 1)]
DENSE = torch.tensor([[0.5, -1.0], [1.5, 0.0], [-0.5, 2.0]])


def _kjt(rows: list[tuple[int, list[int], int]]) -> KeyedJaggedTensor:
    """Key-major KJT over (c0, m, c1), as ctr/data/ builds it."""
    per_key: list[list[list[int]]] = [[[r[0]] for r in rows], [r[1] for r in rows], [[r[2]] for r in rows]]
    values = [v for key in per_key for row in key for v in row]
    lengths = [len(row) for key in per_key for row in key]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(FM.sparse_names),
        values=torch.tensor(values, dtype=torch.int64),
        lengths=torch.tensor(lengths, dtype=torch.int32),
    )


def _batch(rows: list[tuple[int, list[int], int]] = ROWS, dense: torch.Tensor = DENSE) -> Batch:
    return Batch(dense_features=dense, sparse_features=_kjt(rows), labels=torch.zeros(len(rows)))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tensors are tiny: intra-op threads only add overhead (and thrash on a shared 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(name: str, **kw: object) -> ModelConfig:
    base: dict[str, object] = {"name": name, "embedding_dim": 8, "mlp": (16, 8), "dense_mlp": (8,), "cross_layers": 2}
    return from_dict(ModelConfig, base | kw)


# ---------------------------------------------------------------------------------------------- config


def test_config_defaults_and_strict_loading() -> None:
    cfg = from_dict(ModelConfig, {"name": "dcnv2", "field_dims": {"c0": 4}, "mlp": [32, 16], "low_rank": 8})
    assert cfg.mlp == (32, 16) and cfg.low_rank == 8 and cfg.dim("c0") == 4 and cfg.dim("m") == 16
    assert ModelConfig(name="fm").dense_mlp == (64,) and ModelConfig(name="fm").pooling == "sum"
    with pytest.raises(ConfigError, match=r"unknown key 'embeding_dim'.*'embedding_dim'"):
        from_dict(ModelConfig, {"name": "fm", "embeding_dim": 8})
    with pytest.raises(ConfigError, match="'xgboost' is not one of"):
        from_dict(ModelConfig, {"name": "xgboost"})
    with pytest.raises(ConfigError, match="pooling"):
        from_dict(ModelConfig, {"name": "fm", "pooling": "max"})


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"embedding_dim": -4}, r"ModelConfig\.embedding_dim: -4 is not a positive dim"),
        ({"embedding_dim": 0}, r"embedding_dim: 0 "),
        ({"field_dims": {"c1": 0}}, r"ModelConfig\.field_dims\['c1'\]: 0 is not a positive dim"),
        ({"mlp": (16, 0)}, r"ModelConfig\.mlp\[1\]: 0 "),
        ({"dropout": 1.0}, r"dropout: 1\.0 "),
        ({"cross_layers": 0}, r"cross_layers: 0 "),
        ({"low_rank": 0}, r"low_rank: 0 "),
        ({"table_dtype": "bfloat16"}, r"table_dtype: 'bfloat16' is not one of '?float32'?, '?float16"),
        ({"init_std": 0.0}, r"ModelConfig\.init_std: 0\.0 is not a positive scale"),
        ({"init_std": float("nan")}, r"ModelConfig\.init_std: nan is not a positive scale"),
    ],
)
def test_config_rejects_bad_values(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelConfig(name="fm", **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=match):
        from_dict(ModelConfig, {"name": "fm", **kw})


def test_model_constructors_reject_inconsistent_configs() -> None:
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['nope'\]"):
        SparseArch(FM, ModelConfig(name="fnn", field_dims={"nope": 8}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['nope'\]"):
        embedding_params(FM, ModelConfig(name="fnn", field_dims={"nope": 8}))
    with pytest.raises(ValueError, match=r"DLRM needs every categorical dim equal to embedding_dim=8.*'m': 4"):
        build_model(FM, _cfg("dlrm", field_dims={"m": 4}))
    with pytest.raises(ValueError, match=r"FM is model 'fm', but config\.name is 'fnn'"):
        ctr.models.zoo.FM(FM, _cfg("fnn"))


def test_dlrm_without_numeric_fields_dots_each_field_with_a_learned_vector() -> None:
    """On data without dense fields DLRM's bottom vector is one learned vector ``u``: the top MLP's input is
    ``[u, u.e_c0, u.e_m, u.e_c1, e_c0.e_m, e_c0.e_c1, e_m.e_c1]``, computed here by hand from the tables."""
    no_dense = FeatureMap(**{**FM.__dict__, "dense": ()})
    model = build_model(no_dense, _cfg("dlrm"))
    assert model.num_fields == 4  # 3 categorical + the learned vector
    batch = _batch(dense=torch.zeros(3, 0))
    fields = model.fields(batch)
    u = model.dense_arch.weight  # type: ignore[union-attr]
    assert torch.equal(fields[:, -1], u.expand(3, -1))
    seen: list[torch.Tensor] = []
    model.top.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    logits = model(batch)
    e = fields[:, :3]
    pairs = ((0, 1), (0, 2), (1, 2))
    dots = [(u * e[:, i]).sum(-1) for i in range(3)] + [(e[:, i] * e[:, j]).sum(-1) for i, j in pairs]
    expected = torch.cat([u.expand(3, -1), torch.stack(dots, dim=1)], dim=1)
    assert logits.shape == (3,)
    torch.testing.assert_close(seen[0], expected)
    logits.sum().backward()
    assert u.grad is not None and bool(u.grad.abs().sum() > 0)  # the vector learns


# ---------------------------------------------------------------------------------------------- layers


def test_fm_interaction_exact() -> None:
    e = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, -1.0], [2.0, 0.5]]])
    # 1*3 + 2*4; 1*2 - 1*0.5 (the sum of squares is a squared norm: exact up to float32 rounding)
    torch.testing.assert_close(FMInteraction()(e), torch.tensor([11.0, 1.5]))
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    brute = sum((x[:, i] * x[:, j]).sum(1) for i in range(5) for j in range(i + 1, 5))
    torch.testing.assert_close(FMInteraction()(x), brute)


def test_fm_interaction_gradient() -> None:
    """The hand-written backward (``sum_g e_g - e_f`` per field) against autograd of the pairwise sum."""
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(FMInteraction(), (x,))
    weights = torch.randn(3, dtype=torch.float64)
    (FMInteraction()(x) * weights).sum().backward()
    y = x.detach().clone().requires_grad_(True)
    brute = sum((y[:, i] * y[:, j]).sum(1) for i in range(5) for j in range(i + 1, 5))
    (brute * weights).sum().backward()
    torch.testing.assert_close(x.grad, y.grad)


def test_inner_product_exact() -> None:
    e = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]], [[1.0, 1.0], [1.0, 1.0], [-1.0, 2.0]]])
    assert InnerProduct(3)(e).tolist() == [[2.0, 0.0, 3.0], [2.0, 1.0, 1.0]]
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    brute = torch.stack([(x[:, i] * x[:, j]).sum(1) for i in range(4) for j in range(i + 1, 4)], dim=1)
    torch.testing.assert_close(InnerProduct(4)(x), brute)
    assert InnerProduct(4).out_dim == 6
    with pytest.raises(ValueError, match="at least 2 fields, got 1"):
        InnerProduct(1)


def test_cross_net_one_layer_exact() -> None:
    net = CrossNet(2, num_layers=1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 2.0]]))
        net.bias.copy_(torch.tensor([[0.5, -1.0]]))
    # x0 . w = 1 + 6 = 7; x1 = x0 * 7 + b + x0 = [7, 21] + [0.5, -1] + [1, 3]
    assert net(torch.tensor([[1.0, 3.0]])).tolist() == [[8.5, 23.0]]


def test_cross_net_v2_one_layer_exact() -> None:
    full = CrossNetV2(2, num_layers=1)
    assert full.weight_up is None and full.weight.shape == (1, 2, 2)
    with torch.no_grad():
        full.weight.copy_(torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]))
        full.bias.copy_(torch.tensor([[0.0, 1.0]]))
    # W x0 + b = [1, 3] + [0, 1] = [1, 4]; x1 = x0 * [1, 4] + x0 = [1, 8] + [1, 2]
    assert full(torch.tensor([[1.0, 2.0]])).tolist() == [[2.0, 10.0]]
    low = CrossNetV2(2, num_layers=1, low_rank=1)
    assert low.weight_up is not None
    with torch.no_grad():
        low.weight.copy_(torch.tensor([[[1.0, 1.0]]]))  # V: [1, 2]
        low.weight_up.copy_(torch.tensor([[[1.0], [2.0]]]))  # U: [2, 1]; W = U V = [[1, 1], [2, 2]]
    # W x0 = [3, 6]; x1 = x0 * [3, 6] + x0 = [3, 12] + [1, 2]
    assert low(torch.tensor([[1.0, 2.0]])).tolist() == [[4.0, 14.0]]


def test_dot_interaction_exact() -> None:
    dense = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    sparse = torch.tensor([[[1.0, 1.0], [0.0, 2.0]], [[1.0, 0.0], [1.0, 1.0]]])
    out = DotInteraction(2)(dense, sparse)  # [dense | (d,s0), (d,s1), (s0,s1)]
    assert out.tolist() == [[1.0, 0.0, 1.0, 0.0, 2.0], [2.0, 1.0, 2.0, 3.0, 1.0]]
    assert DotInteraction(2).out_dim(2) == out.shape[1] == 5


def test_mlp_layers_and_identity() -> None:
    mlp = MLP(6, (8, 4), dropout=0.5, batch_norm=True)
    kinds = [type(m).__name__ for m in mlp.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2 and mlp.out_dim == 4
    assert [type(m).__name__ for m in MLP(6, (8,), batch_norm=False).layers] == ["Linear", "ReLU"]
    x = torch.randn(2, 6)
    assert MLP(6, ()).out_dim == 6 and torch.equal(MLP(6, ())(x), x)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_mlp_in_place_relu_gives_the_same_values_and_gradients(batch_norm: bool) -> None:
    torch.manual_seed(0)
    mlp = MLP(6, (8, 4), batch_norm=batch_norm)
    assert all(m.inplace for m in mlp.layers if isinstance(m, nn.ReLU))
    plain = copy.deepcopy(mlp)
    for i, m in enumerate(plain.layers):
        if isinstance(m, nn.ReLU):
            plain.layers[i] = nn.ReLU()
    x = torch.randn(5, 6, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_(True)
    out, out_plain = mlp(x), plain(x_plain)
    weights = torch.randn(5, 4)
    (out * weights).sum().backward()
    (out_plain * weights).sum().backward()
    assert torch.equal(out, out_plain) and torch.equal(x.grad, x_plain.grad)  # type: ignore[arg-type]
    for p, q in zip(mlp.parameters(), plain.parameters(), strict=True):
        assert p.grad is not None and torch.equal(p.grad, q.grad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- embeddings


def _fill_tables(arch: SparseArch) -> dict[str, torch.Tensor]:
    """Deterministic table weights: row r of table t_<f> is (r + 1) * [1, 2, ..., width] + 100 * field index."""
    weights = {}
    with torch.no_grad():
        for i, name in enumerate(FM.sparse_names):
            table = arch.ebc.embedding_bags[f"t_{name}"].weight
            w = torch.arange(1, CARD[name] + 1.0)[:, None] * torch.arange(1, table.shape[1] + 1.0) + 100 * i
            table.copy_(w)
            weights[name] = w
    return weights


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_sparse_arch_pads_mixed_dims_with_exact_zeros(pooling: str) -> None:
    cfg = from_dict(ModelConfig, {"name": "fnn", "embedding_dim": 4, "field_dims": {"m": 8}, "pooling": pooling})
    arch = SparseArch(FM, cfg)
    assert arch.dims == (4, 8, 4) and arch.embedding_dim == 8 and arch.num_fields == 3
    assert [t.name for t in arch.ebc.embedding_bag_configs()] == ["t_c0", "t_m", "t_c1"]
    w = _fill_tables(arch)
    out, first = arch(_kjt(ROWS))
    assert out.shape == (3, 3, 8) and first is None
    assert torch.equal(out[:, [0, 2], 4:], torch.zeros(3, 2, 4))  # padded columns are exactly zero
    for b, (c0, m, c1) in enumerate(ROWS):
        torch.testing.assert_close(out[b, 0, :4], w["c0"][c0])
        torch.testing.assert_close(out[b, 2, :4], w["c1"][c1])
        rows = w["m"][m]
        pooled = (rows.sum(0) if pooling == "sum" else rows.mean(0)) if m else torch.zeros(8)
        torch.testing.assert_close(out[b, 1], pooled)  # an empty list pools to zeros


def test_sparse_arch_uniform_dims_is_a_view_of_the_ebc_output() -> None:
    arch = SparseArch(FM, ModelConfig(name="fnn", embedding_dim=4))
    kjt = _kjt(ROWS)
    torch.testing.assert_close(arch(kjt)[0], arch.ebc(kjt).values().view(3, 3, 4))


@pytest.mark.parametrize("field_dims", [{}, {"m": 8}], ids=["uniform", "mixed"])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_sparse_arch_first_order_columns_exact(field_dims: dict[str, int], pooling: str) -> None:
    """FM/DeepFM's tables: each row is the embedding, then LINEAR_DIM first-order columns (weight = their mean)."""
    cfg = from_dict(ModelConfig, {"name": "deepfm", "embedding_dim": 4, "field_dims": field_dims, "pooling": pooling})
    arch = SparseArch(FM, cfg, first_order=True)
    dims = {name: field_dims.get(name, 4) for name in FM.sparse_names}
    widths = [c.embedding_dim for c in arch.ebc.embedding_bag_configs()]
    assert widths == [dims[name] + LINEAR_DIM for name in FM.sparse_names]
    w = _fill_tables(arch)
    out, first = arch(_kjt(ROWS))
    assert out.shape == (3, 3, arch.embedding_dim) and first is not None and first.shape == (3,)
    for b, row in enumerate(ROWS):
        expected_first = 0.0
        for f, (name, ids) in enumerate(zip(FM.sparse_names, row, strict=True)):
            rows = w[name][torch.tensor(ids, dtype=torch.long).view(-1)]  # a single id: a bag of one
            pooled = (rows.sum(0) if pooling == "sum" else rows.mean(0)) if len(rows) else torch.zeros(rows.shape[1])
            d = dims[name]
            torch.testing.assert_close(out[b, f, :d], pooled[:d])
            assert bool((out[b, f, d:] == 0).all())
            expected_first += pooled[d:].mean().item()
        torch.testing.assert_close(first[b], torch.tensor(expected_first))


@pytest.mark.parametrize("append", [0, 2], ids=["no-dense", "dense"])
@pytest.mark.parametrize("width", [4, 4 + LINEAR_DIM], ids=["plain", "first-order"])
def test_field_rows_match_autograd_of_slices(width: int, append: int) -> None:
    """The uniform tables' hand-written assembly (fields, appended dense fields, first-order sum) and its backward
    against the plain slices + cat + mean it replaces, values and gradients, and ``gradcheck``."""
    values = torch.randn(5, 3 * width, dtype=torch.float64, requires_grad=True)
    extra = torch.randn(5, append, 4, dtype=torch.float64, requires_grad=True) if append else None
    fields, first = _FieldRows.apply(values, extra, 3, 4)
    rows = values.view(5, 3, width)
    expected = rows[:, :, :4] if extra is None else torch.cat([rows[:, :, :4], extra], dim=1)
    torch.testing.assert_close(fields, expected, rtol=0, atol=0)
    torch.testing.assert_close(first, rows[:, :, 4:].sum((1, 2)) / LINEAR_DIM, rtol=0, atol=0)
    assert fields.is_contiguous() and fields.shape == (5, 3 + append, 4)
    g_fields, g_first = torch.randn_like(fields), torch.randn_like(first)
    inputs = (values,) if extra is None else (values, extra)
    got = torch.autograd.grad((fields, first), inputs, (g_fields, g_first))
    want = torch.autograd.grad((expected, rows[:, :, 4:].sum((1, 2)) / LINEAR_DIM), inputs, (g_fields, g_first))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(lambda v, e: _FieldRows.apply(v, e, 3, 4), (values, extra))


def test_sparse_arch_appends_dense_fields_after_the_categorical_ones() -> None:
    arch = SparseArch(FM, ModelConfig(name="deepfm", embedding_dim=4), first_order=True)
    kjt, extra = _kjt(ROWS), torch.randn(3, 2, 4)
    alone, first = arch(kjt)
    out, first_again = arch(kjt, extra)
    assert first is not None and first_again is not None
    assert out.shape == (3, 5, 4) and torch.equal(out[:, :3], alone) and torch.equal(out[:, 3:], extra)
    assert torch.equal(first, first_again)


def test_float16_tables_store_float16_and_pool_to_float32() -> None:
    """``table_dtype=float16``: every EBC table (LR's too) holds float16 rows; the fields come out float32."""
    fp16 = ModelConfig(name="deepfm", embedding_dim=4, table_dtype="float16")
    model = build_model(FM, fp16)
    assert {p.dtype for m in model.embedding_modules() for p in m.parameters()} == {torch.float16}
    lr = build_model(FM, ModelConfig(name="lr", table_dtype="float16"))
    assert {p.dtype for m in lr.embedding_modules() for p in m.parameters()} == {torch.float16}
    arch = model.sparse_arch
    assert arch is not None
    fields, first = arch(_kjt(ROWS))
    assert fields.dtype == torch.float32 and first is not None and first.dtype == torch.float32
    # The same rows held in float32 give the same fields (single ids: pooling a float16 row is exact).
    ref = SparseArch(FM, ModelConfig(name="deepfm", embedding_dim=4), first_order=True)
    with torch.no_grad():
        for name, bag in arch.ebc.embedding_bags.items():
            ref.ebc.embedding_bags[name].weight.copy_(bag.weight.float())
    single = [(c0, [], c1) for c0, _, c1 in ROWS]
    torch.testing.assert_close(arch(_kjt(single))[0], ref(_kjt(single))[0], rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"model\.table_dtype: 'float16' is for ctr train; int8 quantisation needs"):
        quantize_embeddings(model)


def test_dense_embedding_and_linear_arch_exact() -> None:
    emb = DenseEmbedding(2, 4)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 0.0]]))
    out = emb(DENSE)
    assert out.shape == (3, 2, 4) and out[0].tolist() == [[0.5, 1.0, 1.5, 2.0], [1.0, 0.0, -1.0, 0.0]]

    lin = LinearArch(FM, ModelConfig(name="lr"))
    assert lin.bias.item() == 0.0 and lin.dense is not None and lin.ebc_linear is not None
    with torch.no_grad():
        for name in FM.sparse_names:  # id i of every field has 4 columns equal to i: weight mean = i
            lin.ebc_linear.embedding_bags[f"lin_{name}"].weight.copy_(
                torch.arange(CARD[name] + 0.0)[:, None].repeat(1, 4)
            )
        lin.dense.weight.copy_(torch.tensor([[1.0, 10.0]]))
        lin.bias.fill_(0.25)
    expected = [
        (c0 + sum(m) + c1) + d[0] + 10 * d[1] + 0.25 for (c0, m, c1), d in zip(ROWS, DENSE.tolist(), strict=True)
    ]
    torch.testing.assert_close(lin(_kjt(ROWS), DENSE), torch.tensor(expected))
    with pytest.raises(ValueError, match="id_weights exactly when"):
        lin(_kjt(ROWS), DENSE, torch.zeros(3))

    folded = LinearArch(FM, ModelConfig(name="deepfm"), own_tables=False)  # the ids' weights come from SparseArch
    assert folded.ebc_linear is None and folded.dense is not None
    with torch.no_grad():
        folded.dense.weight.copy_(torch.tensor([[1.0, 10.0]]))
        folded.bias.fill_(0.25)
    ids = torch.tensor([1.0, -2.0, 0.5])
    expected = [w + d[0] + 10 * d[1] + 0.25 for w, d in zip(ids.tolist(), DENSE.tolist(), strict=True)]
    torch.testing.assert_close(folded(_kjt(ROWS), DENSE, ids), torch.tensor(expected))
    with pytest.raises(ValueError, match="id_weights exactly when"):
        folded(_kjt(ROWS), DENSE)


def test_embedding_params_exact() -> None:
    mixed = {"embedding_dim": 4, "field_dims": {"m": 8}}
    main = 5 * 4 + 12 * 8 + 20 * 4  # 196
    linear = 4 * (5 + 12 + 20)  # 148
    expected = {"lr": linear, "fm": main + linear, "deepfm": main + linear, "fnn": main, "ipnn": main, "dcn": main}
    for name, count in expected.items():
        assert embedding_params(FM, _cfg(name, **mixed)) == count, name
    assert embedding_params(FM, _cfg("dlrm")) == 8 * (5 + 12 + 20)
    for name in MODEL_NAMES:
        cfg = _cfg(name) if name == "dlrm" else _cfg(name, **mixed)
        model = build_model(FM, cfg)
        tables = sum(p.numel() for m in model.embedding_modules() for p in m.parameters())
        assert tables == embedding_params(FM, cfg), name
        dense = model.dense_parameters()
        assert sum(p.numel() for p in dense) + tables == sum(p.numel() for p in model.parameters()), name


# ---------------------------------------------------------------------------------------------- models


def test_registry_covers_every_config_name() -> None:
    assert set(MODELS) == set(MODEL_NAMES)
    assert all(MODELS[n].name == n and issubclass(MODELS[n], CTRModel) for n in MODEL_NAMES)


MIXED: dict[str, object] = {"field_dims": {"m": 4}, "pooling": "mean"}
VARIANTS: list[tuple[str, dict[str, object]]] = [
    *[(n, {}) for n in MODEL_NAMES],
    *[(n, MIXED) for n in MODEL_NAMES if n != "dlrm"],  # DLRM needs equal dims
    ("dcnv2", {"low_rank": 4}),
    ("deepfm", {"mlp": (), "batch_norm": False}),
    ("fnn", {"dropout": 0.2}),
]


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_every_model_returns_logits_of_shape_b(name: str, kw: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = build_model(FM, _cfg(name, **kw))
    batch = _batch()
    for training in (True, False):
        model.train(training)
        logits = model(batch)
        assert logits.shape == (3,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    expected_modules = {"lr": ["ebc_linear"]}  # FM and DeepFM's first-order weights are in the main tables
    names = [n for n, m in model.named_modules() if m in model.embedding_modules()]
    assert [n.split(".")[-1] for n in names] == expected_modules.get(name, ["ebc"])
    if model.sparse_arch is not None:
        num_fields = 4 if name == "dlrm" else 5  # 3 categorical + 2 dense (DLRM: + 1 bottom-MLP vector)
        assert model.num_fields == num_fields and model.fields(batch).shape == (3, num_fields, 8)


SCORED = [*VARIANTS, ("deepfm", {"batch_norm": True}), ("fnn", {"batch_norm": True, "mlp": (16,)})]


@pytest.mark.parametrize(("name", "kw"), SCORED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCORED)])
def test_score_gives_the_forward_logits(name: str, kw: dict[str, object]) -> None:
    """``ctr predict`` scores with ``CTRModel.score`` under ``torch.inference_mode``: the fields equal the autograd
    path's bit for bit, and the logits equal ``forward``'s to 1e-6 (DeepFM and FNN fold the dense fields into their
    first layer). Weights of order 1, so that a wrong fold would show."""
    torch.manual_seed(0)
    model = build_model(FM, _cfg(name, **kw))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    batch = _planted(64)
    expected, fields = model(batch).detach(), model.fields(batch).detach() if model.sparse_arch else None
    with torch.inference_mode():
        if fields is not None:
            assert torch.equal(model.fields(batch), fields)
        scored = model.score(batch)
    assert expected.abs().max() > 0.1  # not a trivially small logit
    torch.testing.assert_close(scored, expected, atol=1e-6, rtol=1e-6)


def _planted(n: int = 96, seed: int = 0) -> Batch:
    """Label = (c0 in {2, 3}); m, c1 and the dense values are noise."""
    g = torch.Generator().manual_seed(seed)
    c0 = torch.randint(0, CARD["c0"], (n,), generator=g)
    lens = torch.randint(0, 4, (n,), generator=g)
    rows = [
        (
            int(c0[i]),
            torch.randint(0, CARD["m"], (int(lens[i]),), generator=g).tolist(),
            int(torch.randint(0, 20, (1,), generator=g)),
        )
        for i in range(n)
    ]
    batch = _batch(rows, torch.randn(n, 2, generator=g))
    return Batch(batch.dense_features, batch.sparse_features, ((c0 == 2) | (c0 == 3)).float())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_learns_a_planted_field(name: str) -> None:
    torch.manual_seed(0)
    data, held_out = _planted(), _planted(seed=1)  # scored on rows it did not train on
    model = build_model(FM, _cfg(name))
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    loss_fn = nn.BCEWithLogitsLoss()

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model(held_out), held_out.labels))

    before = eval_loss()
    for _ in range(30):
        model.train()
        opt.zero_grad()
        loss_fn(model(data), data.labels).backward()
        opt.step()
    after = eval_loss()
    rate = float(held_out.labels.mean())  # the trivial baseline: the base rate for every row
    constant = float(loss_fn(torch.full_like(held_out.labels, math.log(rate / (1 - rate))), held_out.labels))
    assert after < 0.75 * min(before, constant), (before, constant, after)  # LR, the slowest: 0.70


# ---------------------------------------------------------------------------------------------- meta / DMP


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_meta_build_puts_everything_on_meta(name: str) -> None:
    model = build_model(FM, _cfg(name, field_dims={} if name == "dlrm" else {"m": 4}), torch.device("meta"))
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.device.type == "meta" for t in tensors)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_meta_model_materialises_like_dmp(name: str) -> None:
    """DMP allocates each meta parameter with ``empty_like`` and calls the owning module's reset_parameters()."""
    from torchrec.distributed import DistributedModelParallel

    model = build_model(FM, _cfg(name, low_rank=4), torch.device("meta"))
    owners = [m for m in model.modules() if any(p is not None for p in m._parameters.values())]
    assert owners and all(callable(getattr(m, "reset_parameters", None)) for m in owners), [
        type(m).__name__ for m in owners if not hasattr(m, "reset_parameters")
    ]
    # The exact routine DMP runs on the unsharded (dense) part; here it also materialises the EBCs.
    DistributedModelParallel._init_parameters(SimpleNamespace(device=torch.device("cpu")), model)
    assert all(t.device.type == "cpu" and torch.isfinite(t).all() for t in [*model.parameters(), *model.buffers()])
    logits = model.eval()(_batch())
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_dmp_shards_a_meta_model_in_one_process_without_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.nn.parallel import DistributedDataParallel
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    from ctr.training.sharding import shard

    owned = not dist.is_initialized()  # an earlier in-process Lightning fit may have left its world-1 group
    if owned:
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(_free_port()))
        dist.init_process_group("gloo", rank=0, world_size=1)
    assert dist.get_world_size() == 1

    def meta_deepfm() -> CTRModel:
        model = build_model(FM, _cfg("deepfm", field_dims={"m": 4}), torch.device("meta"))
        params = [p for m in model.embedding_modules() for p in m.parameters()]
        apply_optimizer_in_backward(RowWiseAdagrad, params, {"lr": 0.1})
        return model

    try:
        torch.manual_seed(0)
        model = meta_deepfm()
        tables = [c.name for m in model.embedding_modules() for c in m.embedding_bag_configs()]
        assert tables == ["t_c0", "t_m", "t_c1"]  # first-order columns included
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=1, compute_device="cpu"),
            constraints={t: ParameterConstraints(sharding_types=["table_wise"]) for t in tables},
        )
        sharders = [EmbeddingBagCollectionSharder()]
        plan = planner.collective_plan(model, sharders, dist.group.WORLD)
        assert set(plan.plan) == {"sparse_arch.ebc"}
        dmp = shard(model, torch.device("cpu"), plan, sharders, world_size=1)
        assert not isinstance(dmp._dmp_wrapped_module, DistributedDataParallel)  # one process: no DDP
        # TorchRec's default wraps the dense modules in DDP even for one process; the keys must not differ.
        twin = DistributedModelParallel(meta_deepfm(), device=torch.device("cpu"), plan=plan, sharders=sharders)
        assert isinstance(twin._dmp_wrapped_module, DistributedDataParallel)
        keys = sorted(dmp.state_dict(prefix="model."))
        assert keys == sorted(twin.state_dict(prefix="model."))
        assert "model.sparse_arch.ebc.embedding_bags.t_m.weight" in keys and not any("model.model." in k for k in keys)
        dmp.load_state_dict(twin.state_dict())  # the same weights and buffers: the same logits, with or without DDP
        dmp.eval(), twin.eval()
        assert torch.equal(dmp(_batch()), twin(_batch()))
        dmp.train()

        inner = dmp.module
        assert isinstance(inner, CTRModel) and inner.sparse_arch is not None and inner.linear_arch is not None
        assert inner.sparse_arch.ebc(_kjt(ROWS)).keys() == list(FM.sparse_names)  # field order survives sharding
        # Dense modules were materialised on CPU and initialised by their own reset_parameters().
        dense = inner.dense_parameters()
        assert dense and all(p.device.type == "cpu" and torch.isfinite(p).all() for p in dense)
        assert inner.linear_arch.bias.item() == 0.0
        bns = [m for m in inner.modules() if isinstance(m, nn.BatchNorm1d)]
        assert bns and all(m.running_var is not None and bool((m.running_var == 1).all()) for m in bns)
        assert isinstance(inner.dense_arch, DenseEmbedding) and inner.dense_arch.weight.abs().max() <= 8**-0.5

        logits = dmp(_batch())
        assert logits.shape == (3,) and torch.isfinite(logits).all()
        logits.sum().backward()  # the fused RowWiseAdagrad updates the embedding shards inside backward
        after = dmp(_batch())
        assert torch.isfinite(after).all() and not torch.equal(after, logits)
    finally:
        if owned:
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- style


MODULES = [config.model, ctr.models.layers, ctr.tables.embedding, ctr.models.zoo]


def _module_classes() -> list[type[nn.Module]]:
    return [
        cls
        for mod in MODULES[1:]
        for _, cls in inspect.getmembers(mod, inspect.isclass)
        if issubclass(cls, nn.Module) and cls.__module__ == mod.__name__
    ]


def test_modules_have_at_most_5_constructor_args_and_an_example() -> None:
    classes = _module_classes()
    assert len(classes) >= 17
    for cls in classes:
        args = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        assert len(args) <= 5, f"{cls.__name__}.__init__ takes {len(args)} arguments: {args}"
        assert cls.__doc__ and "Example:" in cls.__doc__ and ">>>" in cls.__doc__, cls.__name__


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_doctests(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0
