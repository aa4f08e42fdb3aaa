-- The catalog: items, deleted item ids (never recommended again) and user profiles.
CREATE TABLE IF NOT EXISTS items (
    item_id     TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    categories  TEXT[] NOT NULL DEFAULT '{}',
    tags        TEXT[] NOT NULL DEFAULT '{}',
    attributes  JSONB NOT NULL DEFAULT '{}',
    available   BOOLEAN NOT NULL DEFAULT TRUE,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS deleted_items (
    item_id     TEXT PRIMARY KEY,
    deleted_at  BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS user_profiles (
    user_id     TEXT PRIMARY KEY,
    profile     JSONB NOT NULL,
    updated_at  BIGINT NOT NULL
);
