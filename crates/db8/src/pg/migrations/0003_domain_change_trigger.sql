-- The change feed: one notification per statement (not per row) on cptm8domain, on
-- channel orchestratorm8_domain with the table's schema as payload. PostgreSQL also
-- folds identical notifications of one transaction into one.
CREATE OR REPLACE FUNCTION orchestratorm8_domain_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orchestratorm8_domain', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgrelid = 'cptm8domain'::regclass AND tgname = 'orchestratorm8_domain_changed'
    ) THEN
        CREATE TRIGGER orchestratorm8_domain_changed
            AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON cptm8domain
            FOR EACH STATEMENT EXECUTE FUNCTION orchestratorm8_domain_changed();
    END IF;
END
$$;
