-- Shared Signals (issue 15): receivers' tokens, and where each SSF stream's delivery stands.
-- Streams themselves are events (aggregate ssf_stream); these tables hold delivery state only.

ALTER TABLE api_token DROP CONSTRAINT IF EXISTS api_token_scope_check;
ALTER TABLE api_token ADD CONSTRAINT api_token_scope_check CHECK (scope IN ('scim', 'audit', 'ssf'));

-- The last event stream sequence whose SETs a stream's receiver has acknowledged (push: 2xx or
-- a 400 that is not retried; poll: every SET of it acknowledged), or that was dropped while
-- the stream was disabled. Delivery resumes after it, on whichever replica delivers next.
CREATE TABLE IF NOT EXISTS public.ssf_delivery (
    stream_id   uuid PRIMARY KEY,
    tenant      text NOT NULL,
    position    bigint NOT NULL CHECK (position >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Poll delivery: SETs acknowledged beyond the position (RFC 8936 acknowledges SETs one by
-- one, in any order); removed once the position passes their event.
CREATE TABLE IF NOT EXISTS public.ssf_ack (
    stream_id   uuid NOT NULL,
    jti         text NOT NULL,
    acked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, jti)
);
