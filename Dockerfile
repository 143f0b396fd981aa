# Rollcall in a container: `docker compose up` (see docker-compose.yml) runs it with NATS and
# PostgreSQL. Migrations are embedded in the binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rollcall

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates wget \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home rollcall
COPY --from=build /src/target/release/rollcall /usr/local/bin/rollcall
USER rollcall
ENV ROLLCALL_SCIM_ADDR=0.0.0.0:8080 \
    ROLLCALL_ACCESS_ADDR=0.0.0.0:8081 \
    ROLLCALL_AUDIT_ADDR=0.0.0.0:8082
# SCIM API, access (forward-auth and sign-in), audit API
EXPOSE 8080 8081 8082 9464
ENTRYPOINT ["rollcall"]
CMD ["serve"]
