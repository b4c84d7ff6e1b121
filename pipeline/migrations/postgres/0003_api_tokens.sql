-- The query API's bearer tokens (`veilleuse api`, see docs/api.md), managed with
-- `veilleuse token create/revoke/list`. Only a SHA-256 of each token is kept: the tokens are
-- 256 random bits, so a fast hash is enough (no password stretching needed) and a lookup by
-- hash is one index probe. A revoked token keeps its row, for the record.
CREATE TABLE api_tokens (
    name         text        PRIMARY KEY,
    role         text        NOT NULL CHECK (role IN ('support', 'staff', 'admin')),
    sites        text[]      NOT NULL DEFAULT '{}',  -- the sites a staff token may see
    token_sha256 bytea       NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    CHECK (role <> 'staff' OR cardinality(sites) > 0)
);
