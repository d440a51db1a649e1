# muxrec serving image: the same set-up a user runs (`make venv`), then `muxrec serve`.
# Build: docker compose build   (see docker-compose.yml; models are mounted from ./artifacts)
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends make gcc g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml constraints.txt Makefile README.md ./
COPY scripts ./scripts
COPY muxrec ./muxrec
COPY models ./models
COPY pipelines ./pipelines
COPY services ./services
COPY benchmarks ./benchmarks
COPY configs ./configs
COPY deploy ./deploy

# The CPU build of torch comes from PyTorch's index outside this project's CI machines.
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN make venv
ENV PATH=/app/.venv/bin:$PATH \
    RAY_USAGE_STATS_ENABLED=0

# Run as an unprivileged user (docker-compose.yml sets the same uid); Ray writes under /tmp and $HOME.
RUN useradd --uid 10001 --create-home muxrec
USER 10001:10001

EXPOSE 8000
CMD ["muxrec", "serve", "--config", "deploy/serve.yaml", "--host", "0.0.0.0"]
