-- Atomic writes (issue 12): a write of several events is one message on the stream (a commit),
-- so that it lands whole or not at all; its events share the message's stream sequence. Rows
-- keyed by the sequence of their event are keyed by (sequence, position) instead, position
-- being the event's place in its message: 0 for a message of one event, which is every row
-- written before this migration.
--
-- Read-model schemas are created by rollcall_create_read_model(target); as in 0002, this
-- migration wraps the previous version so that a rebuild's fresh schema gets the same tables.
ALTER FUNCTION rollcall_create_read_model(text) RENAME TO rollcall_create_read_model_0002;

CREATE FUNCTION rollcall_add_commit_position(target text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format($ddl$
        ALTER TABLE %1$I.audit_event ADD COLUMN position integer NOT NULL DEFAULT 0;
        ALTER TABLE %1$I.audit_event DROP CONSTRAINT audit_event_pkey,
            ADD PRIMARY KEY (sequence, position);
        DROP INDEX %1$I.audit_event_aggregate;
        CREATE INDEX audit_event_aggregate ON %1$I.audit_event (tenant, aggregate_id, sequence, position);
        DROP INDEX %1$I.audit_event_type;
        CREATE INDEX audit_event_type ON %1$I.audit_event (tenant, event_type, sequence, position);

        ALTER TABLE %1$I.revocation ADD COLUMN position integer NOT NULL DEFAULT 0;
        ALTER TABLE %1$I.revocation DROP CONSTRAINT revocation_pkey,
            ADD PRIMARY KEY (sequence, position);

        -- A commit that cannot be applied is quarantined as a whole: a row per event.
        ALTER TABLE %1$I.projection_quarantine ADD COLUMN position integer NOT NULL DEFAULT 0;
        ALTER TABLE %1$I.projection_quarantine DROP CONSTRAINT projection_quarantine_pkey,
            ADD PRIMARY KEY (sequence, position);
    $ddl$, target);
END
$fn$;

CREATE FUNCTION rollcall_create_read_model(target text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM rollcall_create_read_model_0002(target);
    PERFORM rollcall_add_commit_position(target);
END
$fn$;

SELECT rollcall_add_commit_position('read_model');
