# The ctr platform image: the `ctr` CLI with the CPU stack of README.md (torch 2.13.0, fbgemm-gpu-cpu 1.8.0,
# torchrec 1.8.0, Lightning, Ray, Optuna, optuna-dashboard), used by every pod in k8s/ (docs/kubernetes.md).
#   docker build -t ctr-platform:0.1.0 .
#   docker run --rm ctr-platform:0.1.0 --help
# WITH_DEV=1 installs requirements-cpu.txt exactly as `make install` does, dev tools (pytest, ruff, mypy, ...)
# included; the default leaves out the `[dev]` extra and nothing else.
FROM python:3.11-slim

ARG WITH_DEV=0
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

# wget: KubeRay's Ray health probes and its job submitter call it; bash: KubeRay starts Ray through `bash -lc`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --user-group ctr

WORKDIR /app

# torch first, from the PyTorch CPU index: the README's machines find torch-2.13.0+cpu in a local wheel
# directory that the image does not have, and PyPI's torch is a CUDA build (several GB of NVIDIA wheels).
# 2.13.0+cpu satisfies pyproject.toml's torch==2.13.0, so the next step keeps it.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY . /app

# requirements-cpu.txt is `./shims/fbgemm-gpu` (the alias that makes torchrec's fbgemm-gpu requirement resolve to
# fbgemm-gpu-cpu) and `-e .[dev]`; everything else is pinned in pyproject.toml, psycopg2-binary included (the
# driver of the postgresql+psycopg2:// Optuna storage that k8s/ uses).
RUN if [ "$WITH_DEV" = "1" ]; then \
        pip install -r requirements-cpu.txt; \
    else \
        pip install ./shims/fbgemm-gpu -e .; \
    fi \
    && pip check \
    && ctr --help > /dev/null

USER 1000:1000
ENTRYPOINT ["ctr"]
CMD ["--help"]
