-- The domain table, created only when missing. An existing CPTM8 table (from the
-- platform's own dump: id uuid DEFAULT uuid_generate_v4(), no primary key, possibly
-- duplicate names) is kept as it is; only plain (non-unique) indexes are added.
CREATE TABLE IF NOT EXISTS cptm8domain (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name varchar(200) NOT NULL,
    companyname varchar(50),
    enabled boolean NOT NULL DEFAULT true
);

DO $$
BEGIN
    -- Lookups by id need an index leading with id; the dump's table has none.
    IF NOT EXISTS (
        SELECT 1
        FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = 'cptm8domain'::regclass AND a.attname = 'id'
    ) THEN
        CREATE INDEX cptm8domain_id_idx ON cptm8domain (id);
    END IF;
END
$$;

-- The duplicate-name check of inserts and updates (names compare case-insensitively).
CREATE INDEX IF NOT EXISTS cptm8domain_lower_name_idx ON cptm8domain (lower(name));
