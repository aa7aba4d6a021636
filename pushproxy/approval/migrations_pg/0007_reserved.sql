-- The approval store, version 7: reserved for the location baselines of issue 21
-- (developed in parallel); this placeholder changes nothing and is replaced by
-- that migration when both are merged.
CREATE TABLE IF NOT EXISTS schema_reserved_7 (id BIGINT PRIMARY KEY);
DROP TABLE schema_reserved_7;
