-- Accounts and their devices (core.ports.AccountStore).
-- Times are timestamptz so that operators read them in psql; the store converts them to and
-- from int ms since the epoch at its edge.

CREATE TABLE users (
    id            text PRIMARY KEY,
    display_name  text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL
);

CREATE TABLE devices (
    id          text PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id),
    name        text NOT NULL,
    -- SHA-256 of the bearer token; the token itself is never stored.
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

-- list_devices: a user's live devices, oldest first.
CREATE INDEX devices_user_live_idx ON devices (user_id, created_at) WHERE revoked_at IS NULL;
