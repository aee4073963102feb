-- Every invocation passes through `queued` and `running`, so an index on `status` alone holds
-- an entry for every row version that ever changed state, and each change writes one more:
-- three per invocation, for an index no hot query needs. The states that are looked up by
-- themselves have partial indexes instead (queued and running above, unfinished per function);
-- pending rows, which the sweeper looks for, get one here.
DROP INDEX IF EXISTS invocations_status;
CREATE INDEX invocations_pending ON invocations (created_at) WHERE status = 'pending';
