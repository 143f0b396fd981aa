-- Operator data (not derived from events): tenants and their API tokens.
CREATE TABLE tenant (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_token (
    id           text PRIMARY KEY,
    tenant       text NOT NULL REFERENCES tenant (name),
    scope        text NOT NULL CHECK (scope IN ('scim', 'audit')),
    -- SHA-256 of the token's secret part; the secret itself is never stored.
    secret_hash  bytea NOT NULL,
    description  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_token_tenant ON api_token (tenant);

-- Every SCIM request, accepted or refused, as the SCIM API saw it (written by the SCIM API
-- only; bodies only when an operator opts in, and never secrets). Kept for a configurable period.
CREATE TABLE scim_request (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL,
    tenant       text,
    token_id     text,
    method       text NOT NULL,
    path         text NOT NULL,
    filter       text,
    status       integer NOT NULL,
    scim_type    text,
    detail       text,
    duration_ms  double precision NOT NULL,
    request_id   text NOT NULL,
    body         jsonb
);
CREATE INDEX scim_request_tenant_at ON scim_request (tenant, at);
CREATE INDEX scim_request_request_id ON scim_request (request_id);

-- Read models are derived from the event stream. They live in a schema of their own so that
-- `rollcall projector rebuild` can build a fresh copy from the stream and swap it in atomically.
-- Every connection resolves them through search_path.
CREATE FUNCTION rollcall_create_read_model(target text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE SCHEMA %I', target);
    EXECUTE format($ddl$
        CREATE TABLE %1$I.projection_checkpoint (
            name        text PRIMARY KEY,
            sequence    bigint NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE %1$I.scim_user (
            tenant             text NOT NULL,
            id                 uuid NOT NULL,
            user_name          text NOT NULL,
            user_name_lower    text NOT NULL,
            external_id        text,
            external_id_lower  text,
            active             boolean NOT NULL,
            attributes         jsonb NOT NULL,
            version            bigint NOT NULL,
            created_at         timestamptz NOT NULL,
            updated_at         timestamptz NOT NULL,
            PRIMARY KEY (tenant, id)
        );
        CREATE INDEX scim_user_user_name ON %1$I.scim_user (tenant, user_name_lower);
        CREATE INDEX scim_user_external_id ON %1$I.scim_user (tenant, external_id_lower);
        CREATE INDEX scim_user_created ON %1$I.scim_user (tenant, created_at, id);

        CREATE TABLE %1$I.scim_group (
            tenant              text NOT NULL,
            id                  uuid NOT NULL,
            display_name        text NOT NULL,
            display_name_lower  text NOT NULL,
            external_id         text,
            external_id_lower   text,
            attributes          jsonb NOT NULL,
            version             bigint NOT NULL,
            created_at          timestamptz NOT NULL,
            updated_at          timestamptz NOT NULL,
            PRIMARY KEY (tenant, id)
        );
        CREATE INDEX scim_group_display_name ON %1$I.scim_group (tenant, display_name_lower);
        CREATE INDEX scim_group_external_id ON %1$I.scim_group (tenant, external_id_lower);
        CREATE INDEX scim_group_created ON %1$I.scim_group (tenant, created_at, id);

        CREATE TABLE %1$I.group_member (
            tenant       text NOT NULL,
            group_id     uuid NOT NULL,
            member_key   text NOT NULL,
            member_id    text NOT NULL,
            member_type  text,
            member_display text,
            added_at     timestamptz NOT NULL,
            PRIMARY KEY (tenant, group_id, member_key)
        );
        CREATE INDEX group_member_member ON %1$I.group_member (tenant, member_key);

        CREATE TABLE %1$I.audit_event (
            sequence        bigint PRIMARY KEY,
            event_id        uuid NOT NULL UNIQUE,
            tenant          text NOT NULL,
            aggregate_type  text NOT NULL,
            aggregate_id    uuid NOT NULL,
            version         bigint NOT NULL,
            event_type      text NOT NULL,
            schema_version  integer NOT NULL,
            actor           jsonb NOT NULL,
            request_id      text,
            trace_id        text,
            traceparent     text,
            occurred_at     timestamptz NOT NULL,
            payload         jsonb NOT NULL,
            -- Tamper evidence: SHA-256(prev_hash || canonical bytes of the event), per tenant.
            prev_hash       bytea NOT NULL,
            hash            bytea NOT NULL
        );

        -- The head of each tenant's hash chain.
        CREATE TABLE %1$I.audit_chain (
            tenant    text PRIMARY KEY,
            sequence  bigint NOT NULL,
            hash      bytea NOT NULL
        );
        CREATE INDEX audit_event_aggregate ON %1$I.audit_event (tenant, aggregate_id, sequence);
        CREATE INDEX audit_event_time ON %1$I.audit_event (tenant, occurred_at);
        CREATE INDEX audit_event_type ON %1$I.audit_event (tenant, event_type, sequence);

        -- Session revocations: per user (sessions issued before not_before are void) or per
        -- session, each with its reason and the event that caused it.
        CREATE TABLE %1$I.revocation (
            sequence    bigint PRIMARY KEY,
            event_id    uuid NOT NULL,
            tenant      text NOT NULL,
            user_id     uuid NOT NULL,
            session_id  text,
            not_before  timestamptz,
            reason      text NOT NULL,
            created_at  timestamptz NOT NULL,
            CHECK ((session_id IS NULL) <> (not_before IS NULL))
        );
        CREATE INDEX revocation_user ON %1$I.revocation (tenant, user_id);

        -- Access state to publish to NATS, written in the projection transaction (an outbox):
        -- a crash between commit and publish loses nothing.
        CREATE TABLE %1$I.access_outbox (
            id          bigserial PRIMARY KEY,
            sequence    bigint NOT NULL,
            kind        text NOT NULL CHECK (kind IN ('user', 'group', 'revocation')),
            tenant      text NOT NULL,
            subject_id  uuid NOT NULL,
            payload     jsonb
        );
    $ddl$, target);
END
$fn$;

SELECT rollcall_create_read_model('read_model');
