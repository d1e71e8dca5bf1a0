# Builds pyproxy from source and runs it. The image's default command serves
# configs/default.yaml; mount your own Envoy bootstrap and pass `-c /etc/pyproxy/envoy.yaml`.
#
#   docker build -t pyproxy .
#   docker run --rm -p 10000:10000 -p 9901:9901 -v $PWD/envoy.yaml:/etc/pyproxy/envoy.yaml \
#       pyproxy -c /etc/pyproxy/envoy.yaml
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends curl build-essential ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH="/root/.cargo/bin:${PATH}"
RUN pip install --no-cache-dir maturin
WORKDIR /src
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY core core
COPY native native
COPY pyproxy pyproxy
RUN maturin build --release --out /wheels

FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY configs /etc/pyproxy/configs
EXPOSE 10000 9901
ENTRYPOINT ["pyproxy"]
CMD ["-c", "/etc/pyproxy/configs/default.yaml"]
