"""Int8 embedding tables for export and CPU inference, through TorchRec's quantised EBC on FBGEMM.

The recipe is TorchRec's own (``torchrec.inference.modules.quantize_embeddings``), applied per EBC:

1. :func:`quantize_embeddings` deep-copies the float :class:`~ctr.models.zoo.CTRModel` (the original is untouched).
2. Each float ``torchrec.EmbeddingBagCollection`` of the copy (``sparse_arch.ebc``; LR's ``linear_arch.ebc_linear``)
   gets ``qconfig = QuantConfig(activation=PlaceholderObserver(dtype=float32),
   weight=PlaceholderObserver(dtype=int8))`` -- the weight observer's dtype is the table storage type, the
   activation observer's dtype is the dtype of the pooled output -- and is swapped for
   ``torchrec.quant.embedding_modules.EmbeddingBagCollection.from_float(ebc)``. ``from_float`` quantises each
   table row-wise with ``torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf`` (per row: ``dim``
   uint8 codes plus an fp16 scale and an fp16 bias, ``x ~ scale * q + bias``) and hands the rows to one FBGEMM
   ``IntNBitTableBatchedEmbeddingBagsCodegen`` per pooling type, placed on ``EmbeddingLocation.HOST`` (the CPU
   int8 kernel ``int_nbit_split_embedding_codegen_lookup_function``) with ``output_dtype`` FP32, so the
   model's dense arches see float32 exactly as before. FM and DeepFM's rows end in their first-order columns
   (:mod:`ctr.tables.embedding`), which share the row's scale and bias.
3. The row alignment is set to :data:`ROW_ALIGNMENT` = 1 (via TorchRec's
   ``MODULE_ATTR_ROW_ALIGNMENT_INT`` hook). TorchRec's default of 16 bytes is the GPU kernel's requirement; on
   CPU FBGEMM itself defaults to 1, and 16 would pad an 8-dim row (8 + 4 = 12 bytes) to 16 and a first-order
   4-dim row (8 bytes) to 16 -- as large as the float row. Each table still starts on a 128-byte cache line.

The quantised EBCs keep the float EBCs' forward contract (``KeyedJaggedTensor -> KeyedTensor`` in table
order, float32), so ``CTRModel.forward`` runs unchanged. The int8 rows are exposed as ``uint8`` buffers
``<ebc>.embedding_bags.<table>.weight`` of shape ``[rows, 4 + dim]`` (scale/bias bytes first) that are views
of the TBE's ``weights_host``: the model's ``state_dict`` is plain tensors (``torch.load(weights_only=True)``
works), and ``load_state_dict`` writes straight into the kernel's storage.

:func:`embedding_bytes` measures what the tables hold: ``numel * element_size`` of a float EBC's tensors, the
size of a quantised EBC's TBE weight buffers (int8 codes + 4 bytes of scale/bias per row + at most 127 bytes of
cache-line padding per table). :func:`quantized_state_dict` / :func:`load_quantized` save and restore a
quantised model; loading rebuilds the int8 structure from a float model of the same config and checks every
key, shape and dtype before copying.

Caveats: the quantised model is for inference (no gradients reach the tables; it is returned in eval mode);
LR's first-order tables (dim 4) only halve (8 bytes/row vs 16), since scale/bias cost as much as the codes;
the float model must be a plain, materialised (not meta, not sharded) model.

Example:
    >>> from features.schema import CategoricalField, FeatureMap
    >>> from config.model import ModelConfig
    >>> from ctr.models.zoo import build_model
    >>> fm = FeatureMap(
    ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
    ...     categorical=(CategoricalField("a", "vocab", 100), CategoricalField("b", "vocab", 50)),
    ... )
    >>> model = build_model(fm, ModelConfig(name="fm", embedding_dim=8))
    >>> qmodel = quantize_embeddings(model)
    >>> [type(m).__name__ for m in model.embedding_modules()]  # FM: first-order columns in the same tables
    ['EmbeddingBagCollection']
    >>> [m._get_name() for m in qmodel.embedding_modules()]
    ['QuantizedEmbeddingBagCollection']
    >>> embedding_bytes(model), embedding_bytes(qmodel)  # 150 rows of 12 floats; of 12 codes + 4 bytes, padded
    (7200, 2560)
    >>> sorted(k for k in quantized_state_dict(qmodel) if k.startswith("sparse_arch"))
    ['sparse_arch.ebc.embedding_bags.t_a.weight', 'sparse_arch.ebc.embedding_bags.t_b.weight']
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import cast

import torch
from torch import nn
from torch.ao.quantization import PlaceholderObserver
from torchrec import EmbeddingBagCollection
from torchrec.modules.embedding_configs import QuantConfig
from torchrec.quant.embedding_modules import MODULE_ATTR_ROW_ALIGNMENT_INT
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection

from ctr.models.zoo import CTRModel

__all__ = [
    "OUTPUT_DTYPE",
    "ROW_ALIGNMENT",
    "WEIGHT_DTYPE",
    "embedding_bytes",
    "load_quantized",
    "quantize_embeddings",
    "quantized_state_dict",
]

#: Storage type of the quantised tables (TorchRec's ``DEFAULT_QUANTIZATION_DTYPE``).
WEIGHT_DTYPE: torch.dtype = torch.int8
#: Dtype of the pooled embeddings the quantised EBC returns (what the dense arches consume).
OUTPUT_DTYPE: torch.dtype = torch.float32
#: Bytes each table row is padded to. 1 = no padding (FBGEMM's CPU default; TorchRec's default 16 is for GPUs).
ROW_ALIGNMENT = 1

# (parent attribute on CTRModel, EBC attribute on that parent)
_EBC_SLOTS = (("sparse_arch", "ebc"), ("linear_arch", "ebc_linear"))
# The FBGEMM TBE tensors that hold table rows (one is used per placement: HOST on CPU).
_TBE_WEIGHTS = ("weights_host", "weights_dev", "weights_uvm")


def _qconfig() -> QuantConfig:
    """TorchRec's embedding qconfig: placeholder observers carrying the output and weight dtypes."""
    return QuantConfig(
        activation=PlaceholderObserver.with_args(dtype=OUTPUT_DTYPE),
        weight=PlaceholderObserver.with_args(dtype=WEIGHT_DTYPE),
    )


def _ebc_slots(model: CTRModel) -> Iterator[tuple[str, nn.Module, str, nn.Module]]:
    """``(path, parent, attribute, ebc)`` for every embedding collection of ``model``."""
    for parent_name, attr in _EBC_SLOTS:
        parent = getattr(model, parent_name)
        ebc = getattr(parent, attr) if parent is not None else None
        if ebc is not None:  # LR has no sparse_arch; FM and DeepFM have no ebc_linear
            yield f"{parent_name}.{attr}", parent, attr, ebc


def _quantize_ebc(ebc: EmbeddingBagCollection, where: str) -> QuantEmbeddingBagCollection:
    """The int8 FBGEMM twin of a plain float EBC (``ebc`` gets ``qconfig`` and the row-alignment attribute)."""
    if type(ebc) is not EmbeddingBagCollection:
        raise TypeError(
            f"{where}: expected a plain torchrec EmbeddingBagCollection, got {type(ebc).__module__}."
            f"{type(ebc).__qualname__} (quantise the unsharded float model, before DistributedModelParallel)"
        )
    meta = [name for name, t in ebc.state_dict().items() if t.is_meta]
    if meta:
        raise ValueError(f"{where}: tables {meta} are on the meta device; build or load the float model on CPU")
    ebc.qconfig = _qconfig()
    setattr(ebc, MODULE_ATTR_ROW_ALIGNMENT_INT, ROW_ALIGNMENT)
    return QuantEmbeddingBagCollection.from_float(ebc)


def quantize_embeddings(model: CTRModel) -> CTRModel:
    """A deep copy of ``model`` whose EBCs are TorchRec int8 ``QuantEmbeddingBagCollection``\\ s, in eval mode.

    ``model`` is not modified. The dense arches stay float32; only ``sparse_arch.ebc`` and (LR)
    ``linear_arch.ebc_linear`` are swapped (see the module docstring for the recipe).
    """
    model.config.require_float32_tables("int8 quantisation")
    for where, _, _, ebc in _ebc_slots(model):
        if isinstance(ebc, QuantEmbeddingBagCollection):
            raise ValueError(f"{where} is already quantised")
    qmodel = copy.deepcopy(model)
    for where, parent, attr, ebc in _ebc_slots(qmodel):
        # setattr: the attributes are typed as float EBCs; the quantised EBC has the same forward contract.
        setattr(parent, attr, _quantize_ebc(cast(EmbeddingBagCollection, ebc), where))
    return qmodel.eval()


def _is_quantized(model: CTRModel) -> bool:
    kinds = {isinstance(ebc, QuantEmbeddingBagCollection) for _, _, _, ebc in _ebc_slots(model)}
    if len(kinds) != 1:
        raise ValueError("model mixes float and quantised embedding collections")
    return kinds.pop()


def _tbe_weight_buffers(ebc: QuantEmbeddingBagCollection) -> list[torch.Tensor]:
    """The storage FBGEMM's kernels read: each TBE's ``weights_host`` / ``weights_dev`` / ``weights_uvm``."""
    buffers: list[torch.Tensor] = []
    for tbe in ebc._emb_modules:
        buffers.extend(cast(torch.Tensor, getattr(tbe, name)) for name in _TBE_WEIGHTS)
    return buffers


def _quant_ebc_bytes(ebc: QuantEmbeddingBagCollection, where: str) -> int:
    buffers = _tbe_weight_buffers(ebc)
    storages = {t.untyped_storage().data_ptr() for t in buffers if t.numel() > 0}
    # Every exported table must be a view of the TBE buffers, or the count below would miss storage.
    for name, t in ebc.state_dict().items():
        if t.numel() > 0 and t.untyped_storage().data_ptr() not in storages:
            raise RuntimeError(f"{where}.{name} is not stored in the FBGEMM weight buffers")
    return sum(t.numel() * t.element_size() for t in buffers)


def embedding_bytes(model: CTRModel) -> int:
    """Bytes held by the embedding tables of ``model``, float or quantised, measured from its tensors.

    Float EBC: ``numel * element_size`` of its weights (4 bytes a parameter). Quantised EBC: the size of the
    FBGEMM weight buffers behind its tables (per row ``dim`` int8 codes + 4 bytes fp16 scale/bias, each table
    padded to a 128-byte cache line).
    """
    total = 0
    for where, _, _, ebc in _ebc_slots(model):
        if isinstance(ebc, QuantEmbeddingBagCollection):
            total += _quant_ebc_bytes(ebc, where)
        else:
            total += sum(t.numel() * t.element_size() for t in ebc.state_dict().values())
    return total


def quantized_state_dict(qmodel: CTRModel) -> dict[str, torch.Tensor]:
    """The full state of a quantised model as independent plain tensors (``torch.load(weights_only=True)``-safe).

    The int8 tables are ``uint8`` ``[rows, 4 + dim]`` (scale/bias then codes); everything else is the dense
    state. Tensors are cloned, so they neither alias the live model nor drag the TBE's padding into a save.
    """
    if not _is_quantized(qmodel):
        raise ValueError("quantized_state_dict needs a quantised model; call quantize_embeddings first")
    return {name: t.detach().clone() for name, t in qmodel.state_dict().items()}


def load_quantized(model_float_skeleton: CTRModel, state: dict[str, torch.Tensor]) -> CTRModel:
    """A quantised model built from ``model_float_skeleton`` (same config; its weights are irrelevant) with ``state``.

    The skeleton is not modified. Loading is strict: a missing or unexpected key, or a tensor whose shape or
    dtype differs from the quantised structure's (e.g. a float state dict), raises ``ValueError`` naming it.
    """
    if _is_quantized(model_float_skeleton):
        raise ValueError("load_quantized needs the float model as skeleton, got a quantised one")
    qmodel = quantize_embeddings(model_float_skeleton)
    expected = qmodel.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"quantised state does not match the model: missing keys {missing}, unexpected keys {unexpected}"
        )
    for name, target in expected.items():
        given = state[name]
        if given.shape != target.shape or given.dtype != target.dtype:
            raise ValueError(
                f"quantised state {name!r}: got {given.dtype} {tuple(given.shape)}, "
                f"expected {target.dtype} {tuple(target.shape)}"
            )
    # Copies in place, i.e. into the TBE buffers the state dict's table tensors are views of.
    qmodel.load_state_dict(state, strict=True)
    return qmodel
