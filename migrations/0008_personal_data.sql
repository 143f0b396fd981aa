-- Personal data (issue 16): every user's data key, wrapped under the installation's
-- key-encryption key. The personal fields of a user's events are sealed under it; erasing the
-- user destroys it (wrapped becomes NULL and erased_at is set: the row stays as a tombstone, so
-- that a reader tells an erased person from a key that was never there).
CREATE TABLE IF NOT EXISTS public.personal_data_key (
    tenant      text NOT NULL,
    user_id     uuid NOT NULL,
    -- Fingerprint of the KEK that wrapped it (not the KEK).
    kek         text,
    -- nonce (24 bytes) ‖ XChaCha20-Poly1305 ciphertext of the 32-byte data key.
    wrapped     bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    erased_at   timestamptz,
    PRIMARY KEY (tenant, user_id),
    CHECK ((wrapped IS NULL) = (erased_at IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (kek IS NULL))
);
CREATE INDEX IF NOT EXISTS personal_data_key_kek ON public.personal_data_key (kek) WHERE kek IS NOT NULL;
