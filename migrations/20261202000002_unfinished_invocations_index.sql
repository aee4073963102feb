-- The gateway admits a new invocation only while its function's backlog (invocations not yet
-- finished) is under a bound; counting that backlog reads this index, not the function's whole
-- history.
CREATE INDEX invocations_unfinished ON invocations (function_id)
    WHERE status IN ('pending', 'queued', 'running');
