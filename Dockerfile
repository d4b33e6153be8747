# One image for every part of ScheduleZero: `schedulezero operator`,
# `schedulezero conductor` and `schedulezero handler ...` are its commands.
#   docker build -t schedulezero:0.1.0 .
# Vendors build handler images FROM it (examples/acme-processor-handler/Dockerfile).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/schedulezero
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator operator
COPY handler_runtime handler_runtime
COPY conductor conductor
COPY tools/image/packages.py /tmp/packages.py
RUN /opt/schedulezero/bin/pip install --no-cache-dir ".[operator,conductor]" \
    # Room for the handler chart's `packages`, installed at pod start into a volume.
    && /opt/schedulezero/bin/python /tmp/packages.py /opt/schedulezero/packages

FROM ${PYTHON_IMAGE}
# A fixed numeric user, so runAsNonRoot can check it without a passwd lookup.
RUN groupadd --gid 10001 schedulezero \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin schedulezero
COPY --from=build /opt/schedulezero /opt/schedulezero
ENV PATH=/opt/schedulezero/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
# handler ZeroMQ, conductor ZeroMQ, /healthz, operator and conductor /metrics
EXPOSE 5555 5556 8080 9464 9465
ENTRYPOINT ["schedulezero"]
CMD ["--help"]
