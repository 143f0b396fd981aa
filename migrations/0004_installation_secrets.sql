-- Secrets the installation generates once and keeps (operator data, not derived from events).
--
-- 'kek': the key-encryption key that seals the installation's session keys in the NATS
-- key-value bucket <namespace>_secrets, used when ROLLCALL_KEK / ROLLCALL_KEK_FILE is not set.
-- The sealed keys live in NATS and this key lives here, so that neither NATS nor PostgreSQL
-- alone reveals the session keys. With ROLLCALL_KEK set, no row is written.
--
-- Written with INSERT ... ON CONFLICT DO NOTHING and read back, so that processes starting
-- together agree on the first value stored. Rows are never updated.
CREATE TABLE IF NOT EXISTS public.installation_secret (
    name        text PRIMARY KEY,
    value       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
