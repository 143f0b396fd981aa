-- A SCIM API that polls how far a partition's access state is published reads the outbox's
-- oldest entry by event sequence (rollcall_store::Store::published_checkpoint) every 250 ms:
-- an index keeps that a short read however long the outbox grows (a NATS outage).
--
-- Read-model schemas are created by rollcall_create_read_model(target); as in 0005, this
-- migration wraps the previous version so that a rebuild's fresh schema gets the index too.
ALTER FUNCTION rollcall_create_read_model(text) RENAME TO rollcall_create_read_model_0005;

CREATE FUNCTION rollcall_index_outbox_sequence(target text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE INDEX access_outbox_sequence ON %1$I.access_outbox (sequence)', target);
END
$fn$;

CREATE FUNCTION rollcall_create_read_model(target text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM rollcall_create_read_model_0005(target);
    PERFORM rollcall_index_outbox_sequence(target);
END
$fn$;

SELECT rollcall_index_outbox_sequence('read_model');
