# The `kubewsgi` image: operator and front proxy, built without Python (no libpython inside).
#   docker build -f docker/kubewsgi.Dockerfile -t kubewsgi/kubewsgi:0.1.0 .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features \
    && cp target/release/kubewsgi /kubewsgi

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /kubewsgi /usr/local/bin/kubewsgi
USER 65532:65532
ENTRYPOINT ["kubewsgi"]
CMD ["controller"]
