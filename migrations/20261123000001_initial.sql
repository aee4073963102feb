-- kubefaas metadata: functions, their invocations, and the users/permissions/tokens the gateway
-- authenticates with. PostgreSQL is the source of truth for invocation history; the Kubernetes
-- resources may be garbage-collected long before these rows are.
--
-- Append-only once landed: change the schema with a new migration, never by editing this one.

CREATE TABLE functions (
    id               uuid        PRIMARY KEY,
    namespace        text        NOT NULL,
    name             text        NOT NULL,
    version          text        NOT NULL,
    runtime          text        NOT NULL,
    handler          text        NOT NULL,
    -- Where the code comes from: 'inline' (base64 in the spec), 'zip' (a base64 zip archive),
    -- 'configmap' or 'url'; code_location names the ConfigMap key or the URL.
    code_source_type text        NOT NULL CHECK (code_source_type IN ('inline', 'zip', 'configmap', 'url')),
    code_location    text,
    code_checksum    text        NOT NULL,
    code_size        bigint      NOT NULL CHECK (code_size >= 0),
    timeout_seconds  integer     NOT NULL CHECK (timeout_seconds > 0),
    memory_mb        integer     NOT NULL CHECK (memory_mb > 0),
    cpu_millis       integer     NOT NULL CHECK (cpu_millis > 0),
    max_concurrency  integer     NOT NULL CHECK (max_concurrency > 0),
    environment      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    metadata         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Soft delete: a deleted function keeps its row so its invocation history still resolves.
    deleted_at       timestamptz
);

-- A live function is one Function resource, so (namespace, name) is unique among live rows, which
-- also makes (namespace, name, version) unique. Deleted rows keep their names for history and may
-- repeat them.
CREATE UNIQUE INDEX functions_live_name ON functions (namespace, name) WHERE deleted_at IS NULL;
CREATE INDEX functions_namespace_name_version ON functions (namespace, name, version);
CREATE INDEX functions_runtime ON functions (runtime) WHERE deleted_at IS NULL;

CREATE TABLE invocations (
    id               uuid        PRIMARY KEY,
    function_id      uuid        NOT NULL REFERENCES functions (id),
    namespace        text        NOT NULL,
    function_name    text        NOT NULL,
    -- Name of the Invocation object, for invocations made through one; NULL for synchronous calls.
    resource_name    text,
    -- How the invocation was made: 'resource' (an Invocation object, kubectl or async REST) or
    -- 'sync' (the gateway's synchronous path, which creates no object).
    source           text        NOT NULL CHECK (source IN ('resource', 'sync')),
    payload          jsonb,
    headers          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'timed_out')),
    result           jsonb,
    error            jsonb,
    metrics          jsonb,
    logs             text,
    timeout_seconds  integer     NOT NULL CHECK (timeout_seconds > 0),
    -- attempts counts claims; the claim that set it is the fencing token of the current lease.
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer     NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    lease_owner      text,
    lease_expires_at timestamptz,
    -- While queued: when the row became (or becomes, for a delayed retry) due to run. The sweeper
    -- re-enqueues rows that stay queued long past it.
    queued_at        timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);

CREATE INDEX invocations_function_id ON invocations (function_id, created_at DESC);
CREATE INDEX invocations_status ON invocations (status);
CREATE INDEX invocations_created_at ON invocations (created_at DESC);
CREATE INDEX invocations_queued_due ON invocations (queued_at) WHERE status = 'queued';
CREATE INDEX invocations_running_lease ON invocations (lease_expires_at) WHERE status = 'running';

CREATE TABLE users (
    id         uuid        PRIMARY KEY,
    username   text        NOT NULL UNIQUE,
    email      text,
    disabled   boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE function_permissions (
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    function_id uuid        NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    permission  text        NOT NULL CHECK (permission IN ('read', 'write', 'invoke', 'admin')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, function_id, permission)
);

CREATE INDEX function_permissions_function_id ON function_permissions (function_id);

CREATE TABLE api_tokens (
    id           uuid        PRIMARY KEY,
    user_id      uuid        REFERENCES users (id) ON DELETE CASCADE,
    name         text        NOT NULL,
    -- SHA-256 of the token; the token itself is shown once at creation and never stored.
    token_hash   bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    -- The first characters of the token, so a user can tell their tokens apart.
    token_prefix text        NOT NULL,
    -- Namespaces the token may act in; '*' means all.
    namespaces   text[]      NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE INDEX api_tokens_user_id ON api_tokens (user_id);
