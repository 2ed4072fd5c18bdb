"""ctr/artifact/quantize.py: int8 TorchRec/FBGEMM embedding tables on CPU -- accuracy, size, isolation, save/load."""

from __future__ import annotations

import doctest
import io

import pytest
import torch
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor
from torchrec.datasets.utils import Batch
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection

import ctr.artifact.quantize
from config.model import ModelConfig
from ctr.artifact.quantize import embedding_bytes, load_quantized, quantize_embeddings, quantized_state_dict
from ctr.models.zoo import CTRModel, build_model
from ctr.tables.embedding import LINEAR_DIM
from features.schema import CategoricalField, DenseField, FeatureMap

# Fields a (dim 16), m (multi-valued, dim 8), c (dim 16, odd cardinality); one dense field.
CARD = {"a": 1000, "m": 1000, "c": 999}
FMAP = FeatureMap(
    dataset="toy",
    label="y",
    splits={},
    source_spec={},
    seed=0,
    split_method="random",
    dense=(DenseField("x", "none", 0.0, 0.0, 1.0),),
    categorical=(
        CategoricalField("a", "vocab", CARD["a"]),
        CategoricalField("m", "vocab", CARD["m"], multi_valued=True),
        CategoricalField("c", "vocab", CARD["c"]),
    ),
)
CONFIG = ModelConfig(name="deepfm", embedding_dim=16, field_dims={"m": 8}, mlp=(32, 16))
WEIGHT_RANGE = 0.1  # embedding weights ~ U(-0.1, 0.1)
MAX_BAG = 5  # longest multi-valued list in BATCH

# int8 row-wise quantisation: scale = (max - min) / 255 <= 2 * WEIGHT_RANGE / 255, rounding to the nearest code
# errs by <= scale / 2 ~ 3.9e-4; fp16 storage of scale and bias adds <= ~1e-4 (relative 2^-11 of |bias| <= 0.1,
# and 255 * the scale's rounding). So each looked-up element is off by <= 5e-4, a pooled bag of L ids by L * that.
PER_ID_TOL = WEIGHT_RANGE / 255 + 1e-4


def _model(name: str = "deepfm", config: ModelConfig = CONFIG, seed: int = 0) -> CTRModel:
    torch.manual_seed(seed)
    model = build_model(FMAP, ModelConfig(**{**config.__dict__, "name": name}))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for ebc in model.embedding_modules():
            for p in ebc.parameters():
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * WEIGHT_RANGE)
    return model.eval()


def _batch(size: int = 64, seed: int = 2) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    lengths = {
        "a": torch.ones(size, dtype=torch.long),
        "m": torch.randint(0, MAX_BAG + 1, (size,), generator=gen),  # includes empty lists
        "c": torch.ones(size, dtype=torch.long),
    }
    values = [torch.randint(0, CARD[k], (int(lengths[k].sum()),), generator=gen) for k in lengths]
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(lengths), values=torch.cat(values), lengths=torch.cat(list(lengths.values()))
    )
    return Batch(dense_features=torch.rand(size, 1, generator=gen), sparse_features=kjt, labels=torch.zeros(size))


@pytest.fixture(scope="module")
def model() -> CTRModel:
    return _model()


@pytest.fixture(scope="module")
def qmodel(model: CTRModel) -> CTRModel:
    return quantize_embeddings(model)


BATCH = _batch()


def test_module_example() -> None:
    result = doctest.testmod(ctr.artifact.quantize, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_swaps_ebcs_for_fbgemm_int8(qmodel: CTRModel) -> None:
    assert qmodel.sparse_arch is not None and qmodel.linear_arch is not None
    assert qmodel.linear_arch.ebc_linear is None  # DeepFM: first-order columns in the main tables
    ebc = qmodel.sparse_arch.ebc
    assert isinstance(ebc, QuantEmbeddingBagCollection)
    assert ebc.output_dtype() == torch.float32
    (tbe,) = ebc._emb_modules
    assert type(tbe).__name__ == "IntNBitTableBatchedEmbeddingBagsCodegen"
    assert tbe.row_alignment == 1
    assert tbe.weights_host.numel() > 0 and tbe.weights_dev.numel() == 0  # CPU (HOST) placement
    tables = qmodel.sparse_arch.ebc.state_dict()
    assert {k: (v.dtype, tuple(v.shape)) for k, v in tables.items()} == {
        "embedding_bags.t_a.weight": (torch.uint8, (1000, 16 + LINEAR_DIM + 4)),  # + fp16 scale and bias
        "embedding_bags.t_m.weight": (torch.uint8, (1000, 8 + LINEAR_DIM + 4)),
        "embedding_bags.t_c.weight": (torch.uint8, (999, 16 + LINEAR_DIM + 4)),
    }
    assert not qmodel.training


def test_pooled_embeddings_within_quantisation_error(model: CTRModel, qmodel: CTRModel) -> None:
    kjt = BATCH.sparse_features
    bag = kjt.lengths().view(len(CARD), -1).clamp(min=1).float()  # ids per (field in key order, sample)
    for float_ebc, q_ebc in zip(model.embedding_modules(), qmodel.embedding_modules(), strict=True):
        ref, got = float_ebc(kjt), q_ebc(kjt)
        assert got.keys() == ref.keys() and got.values().dtype == torch.float32
        for i, key in enumerate(ref.keys()):
            err = (got[key] - ref[key]).abs().amax(dim=1)
            assert (err <= bag[i] * PER_ID_TOL).all(), key


def test_logits_close_to_float(model: CTRModel, qmodel: CTRModel) -> None:
    with torch.no_grad():
        ref, got = model(BATCH), qmodel(BATCH)
    # Every embedding element errs by <= 5e-4 (<= 2.5e-3 in a bag of 5); through the FM term (gradient
    # sum of the other fields, |.| <~ 0.3 per element) and the MLP that stays under 5e-3; seeds 0-2 measure
    # 4e-4..6e-4 on logits up to ~0.5.
    assert got.dtype == torch.float32 and got.shape == ref.shape
    diff = (got - ref).abs().max().item()
    assert diff < 5e-3, diff
    assert diff > 0  # really int8, not a float copy


def test_embedding_bytes(model: CTRModel, qmodel: CTRModel) -> None:
    float_params = sum(p.numel() for ebc in model.embedding_modules() for p in ebc.parameters())
    assert embedding_bytes(model) == 4 * float_params
    q = embedding_bytes(qmodel)
    assert q < 0.4 * embedding_bytes(model)
    # Equal to the FBGEMM weight buffers actually allocated ...
    tbe_bytes = sum(
        t.numel() * t.element_size()
        for ebc in qmodel.embedding_modules()
        for tbe in ebc._emb_modules
        for t in (tbe.weights_host, tbe.weights_dev, tbe.weights_uvm)
    )
    assert q == tbe_bytes
    # ... which are the tables' int8 codes + 4 scale/bias bytes per row, each table padded to 128 bytes.
    tables = [t for ebc in qmodel.embedding_modules() for t in ebc.state_dict().values()]
    exported = sum(t.numel() * t.element_size() for t in tables)
    dims = {"a": 16, "m": 8, "c": 16}
    assert exported == sum(CARD[f] * (dims[f] + LINEAR_DIM + 4) for f in CARD)  # embedding + first-order + scale
    assert exported <= q < exported + 128 * len(tables)
    assert all(
        t.untyped_storage().data_ptr() == tbe.weights_host.untyped_storage().data_ptr()
        for ebc in qmodel.embedding_modules()
        for tbe in ebc._emb_modules
        for t in ebc.state_dict().values()
    )


def test_float_model_untouched() -> None:
    model = _model(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(BATCH)
    quantize_embeddings(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(type(m) is EmbeddingBagCollection for m in model.embedding_modules())
    assert all(not hasattr(m, "qconfig") for m in model.embedding_modules())
    with torch.no_grad():
        assert torch.equal(model(BATCH), logits)


def test_save_load_roundtrip(qmodel: CTRModel) -> None:
    state = quantized_state_dict(qmodel)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded_state = torch.load(buf, weights_only=True)
    # A skeleton with different (random) weights: everything must come from the state.
    skeleton = _model(seed=7)
    loaded = load_quantized(skeleton, loaded_state)
    with torch.no_grad():
        assert torch.equal(loaded(BATCH), qmodel(BATCH))
        assert not torch.equal(quantize_embeddings(skeleton)(BATCH), qmodel(BATCH))
    assert all(type(m) is EmbeddingBagCollection for m in skeleton.embedding_modules())


def test_load_rejects_missing_unexpected_and_mismatched(model: CTRModel, qmodel: CTRModel) -> None:
    state = quantized_state_dict(qmodel)
    key = "sparse_arch.ebc.embedding_bags.t_m.weight"
    with pytest.raises(ValueError, match=r"missing keys \['sparse_arch\.ebc\.embedding_bags\.t_m\.weight'\]"):
        load_quantized(model, {k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        load_quantized(model, {**state, "extra": torch.zeros(1)})
    # A float state dict has the same table keys but float [rows, dim] tensors.
    # t_a: 16 embedding + 4 first-order columns; as int8, 4 more bytes of scale and bias per row.
    mismatch = r"'sparse_arch\.ebc\.embedding_bags\.t_a\.weight': got torch\.float32 \(1000, 20\), "
    mismatch += r"expected torch\.uint8 \(1000, 24\)"
    with pytest.raises(ValueError, match=mismatch):
        load_quantized(model, model.state_dict())
    with pytest.raises(ValueError, match="float model as skeleton"):
        load_quantized(qmodel, state)
    with pytest.raises(ValueError, match="needs a quantised model"):
        quantized_state_dict(model)
    with pytest.raises(ValueError, match="already quantised"):
        quantize_embeddings(qmodel)


@pytest.mark.parametrize("name", ["lr", "fnn"])
def test_other_models_and_mean_pooling(name: str) -> None:
    model = _model(name, ModelConfig(**{**CONFIG.__dict__, "pooling": "mean"}))
    qmodel = quantize_embeddings(model)
    with torch.no_grad():
        diff = (qmodel(BATCH) - model(BATCH)).abs().max().item()
    assert 0 < diff < 5e-3, diff
    assert len(qmodel.embedding_modules()) == 1


def test_meta_model_rejected() -> None:
    meta = build_model(FMAP, CONFIG, device=torch.device("meta"))
    with pytest.raises(ValueError, match="meta device"):
        quantize_embeddings(meta)
