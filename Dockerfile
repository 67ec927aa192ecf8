# One image for every service; compose.yaml picks the service with its command
# (python -m ak_store | ak_dispatcher | ak_runner | ak_ingress).
#
#   docker build -t autokitteh-nats .
#   docker build --build-arg BASE_IMAGE=autokitteh-base:trixie -t autokitteh-nats .
#
# BASE_IMAGE is any Debian-like image with Python 3.11 or newer and its venv module: the
# official python image by default; scripts/compose-test passes one made by debootstrap where
# no registry can be reached (docs/deploy.md). No secret goes into the image: the secrets key,
# passwords and tokens come from the environment or secret files when a container starts.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/autokitteh
# The dependencies first, in a layer of their own: a change to the code alone rebuilds less.
COPY pyproject.toml /src/
RUN /opt/autokitteh/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/autokitteh/bin/pip install -q -r /tmp/requirements.txt
COPY README.md /src/
COPY libs /src/libs
COPY services /src/services
COPY cli /src/cli
RUN /opt/autokitteh/bin/pip install -q --no-deps /src

# The final image: the base and the venv, nothing used only to build.
FROM ${BASE_IMAGE}
COPY --from=build /opt/autokitteh /opt/autokitteh
# The services run as `ak`; compose runs the runner as root (with few capabilities) so that
# it can run each handler's worker as a user of its own (docs/deploy.md, the worker sandbox).
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home ak \
 && mkdir -p /data && chown ak:ak /data
ENV PATH=/opt/autokitteh/bin:$PATH XDG_DATA_HOME=/data PYTHONUNBUFFERED=1
USER ak
WORKDIR /data
EXPOSE 9980
# Which service runs here is read from its command line (python -m akcore.healthcheck --help).
HEALTHCHECK --interval=5s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-m", "akcore.healthcheck"]
CMD ["python", "-m", "ak_ingress"]
