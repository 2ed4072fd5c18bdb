"""``ctr serve``: an exported model behind an HTTP JSON API, as a Ray Serve deployment with dynamic batching.

Routes (the application's prefix is ``/``):

=====================  =======================================================================================
``POST /predict``      body: a JSON list of raw records (objects of the data set's raw columns, values as
                       strings or numbers, null for missing; the label may be left out); answer: the list of
                       click probabilities, in order. A bad record is a 400 ``{"error": "record 3: field 'I5':
                       ..."}`` naming the record's index and the field (missing field, wrong type, unknown
                       column, unparseable number, ...); nothing of that request is scored
``GET /health``        ``{"status": "ok"}`` once the replica has loaded the artifact
``GET /metadata``      the artifact's ``model.json`` (:class:`~ctr.artifact.export.ExportSpec`, without the file
                       hashes), the raw columns a record takes and the label column
=====================  =======================================================================================

Each replica (a Ray actor; ``--replicas N``) loads the artifact strictly (:func:`~ctr.artifact.export.load_exported`),
validates and encodes each request's records on arrival (:class:`features.stream.RecordEncoder`: the same
encoders as ``ctr predict``, so the same scores; in plain Python where :class:`features.records.RecordFastPath`
takes the records, else by the feature map's query), and scores them through :func:`ray.serve.batch`: the encoded
rows of the requests that arrived while the last forward pass ran (up to ``max_batch_size``) go through one.
Any failure of a request is its own answer (400 for bad input, 500 naming the exception otherwise); the replica
keeps serving.

The HTTP proxy binds to 127.0.0.1 unless ``--host`` says otherwise; ``--address`` deploys on an existing Ray
cluster (the artifact path must then be readable on its nodes).

Example:
    >>> run_serve(ServeOptions("runs/export"))  # doctest: +SKIP
    $ curl -s 127.0.0.1:8000/predict -d '[{"I1": "3", "C1": "68fd1e64", ...}]'
    [0.2381]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from ray import serve

from config.strict import ConfigError, to_dict
from features.spec import InputError

__all__ = ["APP_NAME", "ServeOptions", "app", "build_app", "run_serve", "serving"]

APP_NAME = "ctr"
BATCH_WAIT_S = 0.0  # no wait: a batch takes the requests that queued while the last forward pass ran (a fixed
# wait of 2 ms added about 3 ms to every request at low load: docs/benchmarks.md)


@dataclass(frozen=True)
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    address: str | None = None
    max_batch_size: int = 256  # requests per forward pass

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.max_batch_size < 1 or not 0 < self.port < 65536:
            raise ConfigError(f"--replicas, --max-batch-size >= 1 and a port in 1..65535, got {self}")


def _json(body: Any, status: int = 200) -> Any:
    from starlette.responses import Response

    return Response(json.dumps(body), status_code=status, media_type="application/json")


class Scorer:
    """The deployment's class (wrapped by :func:`build_app`): one loaded artifact per replica."""

    def __init__(self, model: str, max_batch_size: int) -> None:
        from ctr.artifact.export import load_exported
        from features.stream import Encoder, RecordEncoder

        self.exported = load_exported(model)
        self.encoder = Encoder.load(Path(model), self.exported.feature_map)
        self.records = RecordEncoder(self.encoder)
        spec = {k: v for k, v in to_dict(self.exported.spec).items() if k != "files"}
        label = self.encoder.spec.label.column
        self.metadata = {"model": spec, "columns": list(self.encoder.columns), "label": label, "path": model}
        self._scoring = False  # a lone request's forward pass is running (see _scored)
        self.score.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]

    def _records(self, body: bytes) -> list[dict[str, str | None]]:
        from features.stream import check_records

        try:
            records = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"body is not JSON ({e})") from None
        return check_records(records, self.encoder.columns, self.encoder.spec.label.column)

    def _query(self, rows: list[dict[str, str | None]]) -> pl.DataFrame:
        chunk = self.records.encode_query(rows)
        if chunk.rejects.height:
            first = chunk.rejects.row(0, named=True)
            raise InputError(f"record {first['line']}: {first['reason']}")
        return chunk.rows

    async def _encode(self, body: bytes) -> pl.DataFrame:
        """The request's records encoded: in plain Python on the event loop where the fast path takes them all
        (:class:`features.records.RecordFastPath`, well under a millisecond a record), else by the feature map's
        query in a thread (Polars releases the GIL)."""
        rows = self._records(body)
        fast = self.records.fast.encode(rows)
        return fast if fast is not None else await asyncio.to_thread(self._query, rows)

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=BATCH_WAIT_S)
    async def score(self, frames: list[pl.DataFrame]) -> list[list[float]]:
        """Probabilities of each request's rows: every request of the batch in one forward pass."""
        return await self._forward(frames)

    async def _forward(self, frames: list[pl.DataFrame]) -> list[list[float]]:
        from ctr.artifact.predict import split_of_frame

        rows = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
        split = split_of_frame(self.exported.feature_map, rows)
        # in a thread (torch releases the GIL): the event loop goes on receiving and encoding requests meanwhile
        p = await asyncio.to_thread(self.exported.predict, split, max(rows.height, 1))
        bounds = np.cumsum([f.height for f in frames])[:-1]
        return [part.astype(float).tolist() for part in np.split(p, bounds)]

    async def _scored(self, frame: pl.DataFrame) -> list[float]:
        """``frame``'s probabilities: straight to a forward pass when no other request is being scored (a lone
        request has nothing to be batched with: the batch queue's hand-overs would only add latency), else
        through :meth:`score`'s batches."""
        if self._scoring:
            return await self.score(frame)
        self._scoring = True
        try:
            return (await self._forward([frame]))[0]
        finally:
            self._scoring = False

    async def __call__(self, request: Any) -> Any:
        path = request.url.path.rstrip("/") or "/"
        try:
            if request.method == "GET" and path == "/health":
                return _json({"status": "ok"})
            if request.method == "GET" and path == "/metadata":
                return _json(self.metadata)
            if request.method == "POST" and path in ("/predict", "/"):
                frame = await self._encode(await request.body())
                return _json(await self._scored(frame) if frame.height else [])
            return _json({"error": f"{request.method} {path}: not found (POST /predict, GET /health, /metadata)"}, 404)
        except (InputError, ConfigError) as e:
            return _json({"error": str(e)}, 400)
        except Exception as e:  # a request's failure is its own answer; the replica keeps serving
            return _json({"error": f"{type(e).__name__}: {e}"}, 500)


def build_app(model: str | Path, *, replicas: int = 1, max_batch_size: int = 256) -> Any:
    """The Ray Serve application of the artifact ``model`` (checked here first, so a bad artifact fails at once)."""
    from ctr.artifact.export import load_exported

    path = str(Path(model).resolve())
    load_exported(path)
    deployment = serve.deployment(
        name="CTRScorer",
        num_replicas=replicas,
        max_ongoing_requests=max(2 * max_batch_size, 8),
        ray_actor_options={"num_cpus": 1},
    )(Scorer)
    return deployment.bind(path, max_batch_size)


def app(args: dict[str, Any]) -> Any:
    """The application builder of a Serve config file (``import_path: pipelines.serve:app``, as KubeRay's RayService
    deploys it): ``args`` are ``model`` (the artifact's path on every node) and optionally ``max_batch_size``; the
    config's ``deployments`` section sets ``num_replicas`` of the deployment ``CTRScorer``."""
    allowed = {"model", "max_batch_size"}
    unknown = sorted(set(args) - allowed)
    if unknown or "model" not in args:
        raise ConfigError(f"pipelines.serve:app args: expected model (and max_batch_size), got {sorted(args)}")
    return build_app(str(args["model"]), max_batch_size=int(args.get("max_batch_size", 256)))


@contextlib.contextmanager
def serving(options: ServeOptions) -> Iterator[str]:
    """The artifact deployed on Ray Serve, its HTTP proxy on ``host:port``, for the duration of the block; yields
    the base URL. Ray is the cluster at ``options.address`` (else ``RAY_ADDRESS``) or a new local Ray bound to
    127.0.0.1 (:func:`search.ray_session.ray_session`), shut down at the end if this block started it."""
    from search.ray_session import ray_session

    app = build_app(options.model, replicas=options.replicas, max_batch_size=options.max_batch_size)
    with ray_session(options.address, num_cpus=options.replicas):
        serve.start(http_options={"host": options.host, "port": options.port})
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
            yield f"http://{options.host}:{options.port}"
        finally:
            serve.delete(APP_NAME)  # only this application: others on a shared cluster keep running


def run_serve(options: ServeOptions) -> None:
    """:func:`serving` until interrupted (Ctrl-C)."""
    with serving(options) as url:
        print(json.dumps({"predict": f"{url}/predict", "health": f"{url}/health", "replicas": options.replicas}))
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
