-- The projector's quarantine: events it could not apply (a bug, a constraint nobody foresaw),
-- kept with the error so that one poison event stops only its own aggregate, never the stream.
-- Later events of a quarantined aggregate are held here too, in order, until an operator
-- resolves the quarantine (`rollcall projector quarantine retry|skip`, recorded as an event).
--
-- Read-model schemas are created by rollcall_create_read_model(target); each migration that
-- adds to them wraps the previous version, so that a rebuild's fresh schema gets everything.
ALTER FUNCTION rollcall_create_read_model(text) RENAME TO rollcall_create_read_model_0001;

CREATE FUNCTION rollcall_create_projection_quarantine(target text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format($ddl$
        CREATE TABLE %1$I.projection_quarantine (
            sequence        bigint PRIMARY KEY,
            event_id        uuid NOT NULL,
            tenant          text NOT NULL,
            aggregate_type  text NOT NULL,
            aggregate_id    uuid NOT NULL,
            event_type      text NOT NULL,
            -- 'failed': this event could not be applied; 'held': an earlier event of the same
            -- aggregate failed, so this one waits behind it; 'applied' / 'skipped': resolved.
            status          text NOT NULL CHECK (status IN ('failed', 'held', 'applied', 'skipped')),
            error           text NOT NULL,
            -- The envelope as JSON bytes (bytea: it may hold what text columns cannot).
            envelope        bytea NOT NULL,
            -- Users whose access this event would change (group events name their members):
            -- they are denied until the quarantine is resolved.
            affected_users  uuid[] NOT NULL DEFAULT '{}',
            -- Whether the event's audit record could be written (it is chained either way).
            audited         boolean NOT NULL,
            attempts        integer NOT NULL DEFAULT 1,
            quarantined_at  timestamptz NOT NULL DEFAULT now(),
            resolved_at     timestamptz,
            resolved_by     bigint,
            resolution      text
        );
        CREATE INDEX projection_quarantine_open ON %1$I.projection_quarantine (tenant, aggregate_id)
            WHERE resolved_at IS NULL;
    $ddl$, target);
END
$fn$;

CREATE FUNCTION rollcall_create_read_model(target text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM rollcall_create_read_model_0001(target);
    PERFORM rollcall_create_projection_quarantine(target);
END
$fn$;

SELECT rollcall_create_projection_quarantine('read_model');
