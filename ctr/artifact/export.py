"""Export any finished run as one artifact that loads strictly for inference.

Runs of ``ctr train`` (every model, every table layout of ``tables:``, float16 tables), ``ctr retrain`` (an
OptEmbed plan) and the runs of ``ctr compress-bench`` (``runs/<method>@<budget>``; an OptEmbed method's folder
exports its ``retrain/`` run) all export to the same format. An artifact directory holds everything serving
needs, and nothing it must guess:

==================  =====================================================================================
``feature_map.json`` the fitted feature map (with ``vocab/``): encodes raw logs (``ctr predict``, ``ctr serve``)
``plan.json``        a retrained plan only: per-field dims and kept rows; ``masks.npz`` the kept rows (id remap)
``model.json``       :class:`ExportSpec`: the run's command, model config, table strategy (``tables``), both
                     feature-map hashes, rows per model input, int8 or not, and the SHA-256 of every other file
                     of the artifact (``files``)
``weights.pt``       the state dict (plain tensors; int8 tables as uint8 rows through TorchRec/FBGEMM)
==================  =====================================================================================

:func:`load_exported` checks the spec strictly (unknown keys, format version), then that the directory holds
exactly the files ``model.json`` lists with the same SHA-256 (vocabularies included: a swapped id would
silently re-encode rows), the feature map's content hash, the plan against ``model.json`` and the feature map
field by field, the model's input feature map (pruned rows, table layout) against ``table_hash``, and every
state-dict key before it returns an :class:`ExportedModel`; weights load with ``weights_only=True``. A corrupt
file is refused in one line naming it (:class:`~config.strict.ConfigError`).

Format 3 exports every kind of run (``command``, ``tables``); format 2 (retrained OptEmbed models only) and
format 1 (only the weights hashed) are refused: export the run again.

Example:
    >>> info = export_run("runs/optembed/retrain", "runs/optembed/export", int8=True)  # doctest: +SKIP
    >>> model = load_exported("runs/optembed/export")  # doctest: +SKIP
    >>> model.predict(load_split("new_data", model.feature_map, "test"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from config.model import ModelConfig
from config.strict import ConfigError, first_line, from_dict, load_json, to_dict
from config.tables import TablesConfig
from ctr.artifact.inputs import ModelInputs
from ctr.artifact.manifest import manifest, verify
from ctr.artifact.quantize import embedding_bytes, load_quantized, quantize_embeddings, quantized_state_dict
from ctr.data.columnar import ColumnarSplit
from ctr.models.zoo import CTRModel
from ctr.optembed.pruned import MASKS_FILE, PLAN_FILE, PrunedTables
from ctr.runs import load_run
from ctr.training.restore import read_run_config
from features.outputs import replaced_dir
from features.schema import FeatureMap

__all__ = [
    "EXPORT_FORMAT",
    "FORWARD_BATCH",
    "ExportSpec",
    "ExportedModel",
    "export_run",
    "load_exported",
    "resolve_run",
]

EXPORT_FORMAT = 3  # 3: any run (command, tables); 2: retrained plans only, every file hashed; 1: weights only
SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
#: Rows per forward pass of :meth:`ExportedModel.predict`. On one thread 2048 rows took 14.3 µs of CPU a row against
#: 16.7 at 8192 (the activations stay in the caches), but with two OpenMP threads on a loaded machine the four times
#: more parallel regions cost far more than that (docs/benchmarks.md): 8192 until an idle machine decides.
FORWARD_BATCH = 8192


@dataclass(frozen=True)
class ExportSpec:
    format: int
    command: str  # the run's: "ctr train" or "ctr retrain"
    model: ModelConfig  # the model the weights fit (a retrain's per-field dims and padded width)
    tables: TablesConfig | None  # the table strategy of the run's ``tables:`` (None: one table per field)
    feature_map_hash: str  # the fitted feature map's
    table_hash: str  # the model's input feature map's (kept rows of a plan, virtual features of a layout)
    int8: bool
    table_rows: dict[str, int]  # per model input (field or virtual feature): rows of its table
    embedding_params: int
    embedding_bytes: int
    files: dict[str, str]  # every other file of the artifact (relative path, ``/``-separated) -> its SHA-256


@dataclass(frozen=True)
class ExportedModel:
    spec: ExportSpec
    feature_map: FeatureMap
    inputs: ModelInputs
    model: CTRModel  # eval mode, CPU

    @property
    def tables(self) -> PrunedTables | None:
        """The retrained plan's pruned tables (None for a run without a plan)."""
        return self.inputs.pruned

    def check_encoding(self, split: ColumnarSplit) -> None:
        """Refuse a split not encoded with this artifact's feature map."""
        theirs = [(f.name, f.cardinality) for f in split.feature_map.categorical]
        ours = [(f.name, f.cardinality) for f in self.feature_map.categorical]
        if theirs != ours or split.feature_map.dense_names != self.feature_map.dense_names:
            raise ConfigError("the data was not encoded with this artifact's feature map (fields differ)")

    def predict(self, split: ColumnarSplit, batch_size: int = FORWARD_BATCH) -> npt.NDArray[np.float32]:
        """Click probabilities for every row of ``split`` (encoded with this artifact's feature map).

        ``batch_size``: rows per forward pass. Under ``torch.inference_mode``, by :meth:`CTRModel.score` (the model's
        logits with fewer operations; within about 1e-7 of ``forward``'s); each batch's probabilities are written
        straight into the returned array."""
        self.check_encoding(split)
        data = self.inputs.transform(split)
        n = len(data)
        out = np.empty(n, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                logits = self.model.score(data.batch(np.arange(start, stop)))
                torch.sigmoid(logits, out=torch.from_numpy(out[start:stop]))
        return out


def resolve_run(run: str | Path) -> Path:
    """The run directory to export: ``run`` itself, or the ``retrain/`` run of an OptEmbed folder (``ctr optembed``,
    a ``ctr compress-bench`` method ``optembed@<budget>`` or ``optembed-unified@<budget>``)."""
    root = Path(run)
    if not (root / "config.yaml").is_file() and (root / "retrain" / "config.yaml").is_file():
        return root / "retrain"
    return root


def export_run(run: str | Path, out: str | Path, *, int8: bool = False, overwrite: bool = False) -> dict[str, object]:
    """Export the best checkpoint of run ``run`` into the artifact directory ``out``.

    The artifact is built beside ``out`` and renamed into place (:func:`features.outputs.replaced_dir`): an
    existing ``out`` is replaced only with ``overwrite`` and only if ``ctr export`` made it."""
    run = resolve_run(run)
    data = Path(read_run_config(run).data.path)
    with replaced_dir(Path(out), "ctr export", overwrite=overwrite, inputs=(Path(run), data)) as work:
        info = _export(run, work, int8=int8)
    return {**info, "path": str(out), "artifact_bytes": _size(Path(out))}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _export(run: str | Path, out: Path, *, int8: bool) -> dict[str, object]:
    config = read_run_config(run)
    fm = FeatureMap.load(config.data.path)
    try:
        inputs = ModelInputs.of_run(config, fm)  # refuses a supernet run by name
    except ConfigError as e:
        raise ConfigError(f"{run}: {e}") from None
    if int8:
        inputs.model_config.require_float32_tables("int8 export")
    trained = load_run(run)  # builds the run's model (reduced tables, layout) and loads it strictly
    model = quantize_embeddings(trained.model) if int8 else trained.model
    out = Path(out)
    fm.save(out / "feature_map.json")
    vocab = Path(config.data.path) / "vocab"
    if vocab.is_dir():
        shutil.copytree(vocab, out / "vocab")
    if inputs.pruned is not None:
        inputs.pruned.save(out)
    state = quantized_state_dict(model) if int8 else {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, out / WEIGHTS_FILE)
    model_fm = inputs.input_feature_map
    spec = ExportSpec(
        format=EXPORT_FORMAT,
        command="ctr retrain" if inputs.pruned is not None else "ctr train",
        model=inputs.model_config,
        tables=config.tables,
        feature_map_hash=fm.content_hash,
        table_hash=model_fm.content_hash,
        int8=int8,
        table_rows={f.name: f.cardinality for f in model_fm.categorical},
        embedding_params=inputs.embedding_params,
        embedding_bytes=embedding_bytes(model),
        files=manifest(out, exclude=SPEC_FILE),
    )
    (out / SPEC_FILE).write_text(json.dumps(to_dict(spec), indent=2) + "\n")
    return {
        "path": str(out),
        "command": spec.command,
        "model": spec.model.name,
        "tables": spec.tables.method if spec.tables is not None else "full",
        "int8": int8,
        "embedding_params": spec.embedding_params,
        "embedding_bytes": spec.embedding_bytes,
        "weights_bytes": (out / WEIGHTS_FILE).stat().st_size,
        "artifact_bytes": _size(out),
    }


def load_exported(path: str | Path) -> ExportedModel:
    """Load an artifact strictly: its files, spec, feature map, plan and weights must all agree."""
    root = Path(path)
    spec_path = root / SPEC_FILE
    raw = load_json(spec_path, "model spec", missing="missing (not an exported model)")
    version = raw.get("format") if isinstance(raw, dict) else None
    if version != EXPORT_FORMAT:
        raise ConfigError(
            f"{spec_path}: export format {version!r}, this version reads {EXPORT_FORMAT} only "
            "(format 1 did not hash every file, format 2 held retrained plans only): "
            "export the run again with `ctr export`"
        )
    spec = from_dict(ExportSpec, raw, where=str(spec_path))
    verify(root, spec.files, exclude=SPEC_FILE)
    fm = FeatureMap.load(root)
    if fm.content_hash != spec.feature_map_hash:
        raise ConfigError(
            f"{root}: feature map {fm.content_hash[:12]} is not the exported {spec.feature_map_hash[:12]}"
        )
    has_plan = (root / PLAN_FILE).is_file()
    if has_plan != (spec.command == "ctr retrain"):
        raise ConfigError(f"{root}: {PLAN_FILE} {'present' if has_plan else 'missing'} for a run of {spec.command}")
    tables = PrunedTables.load(root, fm.content_hash) if has_plan else None
    if tables is not None:
        _check_plan(root / PLAN_FILE, spec, tables, fm)
    try:
        inputs = ModelInputs.of_parts(fm, spec.model, spec.tables, tables)
    except ConfigError as e:
        raise ConfigError(f"{spec_path}: {e}") from e
    if inputs.input_feature_map.content_hash != spec.table_hash:
        raise ConfigError(f"{root}: the feature map, plan and `tables` do not give the exported tables (table_hash)")
    weights = root / WEIGHTS_FILE
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or truncated file: any decoder error
        raise ConfigError(f"{weights}: corrupt weights ({first_line(e)})") from e
    skeleton = inputs.build()
    try:
        if spec.int8:
            model = load_quantized(skeleton, state)
        else:
            skeleton.load_state_dict(state, strict=True)
            model = skeleton
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"{weights}: does not fit the model of {SPEC_FILE} ({first_line(e)})") from e
    return ExportedModel(spec, fm, inputs, model.eval())


def _check_plan(plan_path: Path, spec: ExportSpec, tables: PrunedTables, fm: FeatureMap) -> None:
    """Refuse a plan that contradicts ``model.json`` or the feature map, naming the first field that does."""
    try:
        tables.check(fm)
        tables.model_config(spec.model)  # full_dim against model.embedding_dim
    except ConfigError as e:
        raise ConfigError(f"{plan_path}: {e}") from e
    if spec.model.pad_to != tables.plan.full_dim:
        raise ConfigError(f"{plan_path}: full_dim {tables.plan.full_dim}, {SPEC_FILE} pads to {spec.model.pad_to}")
    dims = {f.name: f.dim for f in tables.plan.fields}
    for name in sorted(set(dims) | set(spec.model.field_dims)):
        if dims.get(name) != spec.model.field_dims.get(name):
            raise ConfigError(
                f"{plan_path}: field {name!r} has dim {dims.get(name)}, "
                f"{SPEC_FILE} says {spec.model.field_dims.get(name)}"
            )
    if spec.tables is not None and spec.tables.method != "full":
        return  # the tables are the layout's: ``table_hash`` checks them
    rows = {f.name: int(tables.kept_ids(f.name).shape[0]) for f in tables.plan.fields}
    for name in sorted(set(rows) | set(spec.table_rows)):
        if rows.get(name) != spec.table_rows.get(name):
            raise ConfigError(
                f"{plan_path}: field {name!r} keeps {rows.get(name)} rows (with {MASKS_FILE}), "
                f"{SPEC_FILE} says {spec.table_rows.get(name)}"
            )
