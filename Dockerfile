# `bitnet serve` in a container: docker build -t bitnet-rust . && docker run -p 8080:8080 bitnet-rust
# answers on http://localhost:8080 with the bundled demo model (it is inside the binary). Another
# model: mount it, or name it with hf: and keep the Hugging Face cache on a volume:
#   docker run -p 8080:8080 -v bitnet-models:/models bitnet-rust -m hf:OWNER/REPO
# Arguments after the image name go to `bitnet serve`. docs/deploy.md has the rest.

# The base images (arguments only so that a machine without a registry can name local copies).
ARG BUILD_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# Build stage: the toolchain and the sources; only the binary leaves it.
FROM ${BUILD_IMAGE} AS build
# release for the image; test builds faster (checks of this file).
ARG PROFILE=release
WORKDIR /src
COPY . .
# deploy/build.sh is the whole build (CI runs the same script outside a container).
RUN PROFILE=$PROFILE deploy/build.sh /bitnet && strip /bitnet

# Runtime stage: Debian slim, CA certificates for hf: downloads, an unprivileged user.
FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/bitnet bitnet \
    && mkdir /models && chown bitnet:bitnet /models
COPY --from=build /bitnet /usr/local/bin/bitnet
USER 10001:10001
# hf: models are downloaded into /models/hub: mount a volume there to keep them.
ENV HF_HOME=/models
VOLUME /models
EXPOSE 8080
# 0.0.0.0: reachable through the published port (the default, 127.0.0.1, is not).
ENTRYPOINT ["bitnet", "serve", "--host", "0.0.0.0", "--port", "8080"]
CMD []
