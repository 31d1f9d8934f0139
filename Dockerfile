# deltazoo API and worker image: python:3.11-slim, torch first (CPU or CUDA by build argument),
# then the project with the [server] extra (add gpu for the Triton kernels: EXTRAS=server,gpu).
#
#   docker build -t deltazoo .                                                      # CPU
#   docker build -t deltazoo:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#       --build-arg EXTRAS=server,gpu .                                             # NVIDIA GPU
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=server

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DELTAZOO_HOME=/var/lib/deltazoo

# torch first, from the index that has the wanted build; the project's torch>=2.4 then keeps it.
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}"

WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY deltazoo ./deltazoo
COPY registry ./registry
COPY services ./services
COPY compression ./compression
COPY api ./api
COPY workers ./workers
COPY migrations ./migrations
RUN pip install ".[${EXTRAS}]" \
    && python -c "import torch, sys; sys.exit(not torch.__version__.startswith('${TORCH_VERSION}'))"

RUN useradd --create-home --uid 10001 deltazoo \
    && mkdir -p /var/lib/deltazoo && chown deltazoo /var/lib/deltazoo
USER deltazoo
WORKDIR /var/lib/deltazoo
EXPOSE 8000
CMD ["deltazoo", "serve", "--host", "0.0.0.0", "--port", "8000"]
