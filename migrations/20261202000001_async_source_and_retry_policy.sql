-- The gateway's asynchronous POST /invoke no longer makes an Invocation object per call: its
-- rows say so with their own source, 'async'.
ALTER TABLE invocations DROP CONSTRAINT invocations_source_check;
ALTER TABLE invocations ADD CONSTRAINT invocations_source_check
    CHECK (source IN ('resource', 'sync', 'async'));

-- The function's whole retry policy is frozen into the row when the invocation is submitted
-- (max_attempts already was): an edit of the function does not change how an accepted
-- invocation is retried. Rows from before keep the defaults of a Function's spec.retry.
ALTER TABLE invocations
    ADD COLUMN backoff_seconds integer NOT NULL DEFAULT 1 CHECK (backoff_seconds >= 0),
    ADD COLUMN retry_on_function_error boolean NOT NULL DEFAULT false;
