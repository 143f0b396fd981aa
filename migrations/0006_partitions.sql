-- Partitions (issue 12): an installation's tenants are shared between P partitions, each with
-- its own projector consumer, checkpoint and single active projector. P is chosen once for the
-- installation (1 by default: today's layout) and kept here, so that every process agrees.
CREATE TABLE IF NOT EXISTS rollcall_partitioning (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    partitions  integer NOT NULL CHECK (partitions BETWEEN 1 AND 64),
    chosen_at   timestamptz NOT NULL DEFAULT now()
);

-- A tenant's partition, exactly as rollcall_eventlog::partition::Partitioning::of computes it:
-- the first eight bytes of SHA-256 of the tenant's name (UTF-8), as an unsigned big-endian
-- integer, modulo the number of partitions. Used to share the access outbox between partitions.
CREATE OR REPLACE FUNCTION rollcall_partition(tenant text, partitions integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
    SELECT CASE WHEN partitions <= 1 THEN 0 ELSE (
        (('x' || substr(encode(sha256(convert_to(tenant, 'UTF8')), 'hex'), 1, 16))::bit(64)::bigint::numeric
         + CASE WHEN ('x' || substr(encode(sha256(convert_to(tenant, 'UTF8')), 'hex'), 1, 16))::bit(64)::bigint < 0
                THEN 18446744073709551616::numeric ELSE 0 END)
        % partitions)::integer END
$fn$;
