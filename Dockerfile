# The one agentfleet image: `agentfleet operator` (the default command) and `agentfleet guard`
# (the sidecar the operator injects into agent pods). charts/agentfleet runs it as uid 65532
# with a read-only root filesystem.
#
#   docker build -t ghcr.io/agentfleet/agentfleet:0.1.0 .

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# pip byte-compiles what it installs, so nothing needs writing at run time.
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /install /usr/local
USER 65532:65532
ENTRYPOINT ["agentfleet"]
CMD ["operator"]
