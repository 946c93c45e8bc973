-- The pipeline as data (docs/DATABASE.md, "Migrations"): `plan` becomes a jsonb array,
-- one object per stage in order, `{"name": <stage>, "depends_on": [<stage>...]}`,
-- instead of text split on control characters; every workflow has one.

ALTER TABLE orchestratorm8_workflow ADD COLUMN IF NOT EXISTS plan_doc jsonb;

-- Workflows with a text plan: each element is the name, then its dependencies,
-- separated by U+001F.
UPDATE orchestratorm8_workflow w SET plan_doc = (
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'name', parts[1],
               'depends_on', to_jsonb(coalesce(parts[2:], '{}'::text[])))
             ORDER BY pos), '[]'::jsonb)
    FROM (SELECT string_to_array(e, E'\x1f') AS parts, pos
          FROM unnest(w.plan) WITH ORDINALITY AS p(e, pos)) p)
WHERE w.plan IS NOT NULL;

-- Workflows created before migration 4 have no plan but a stage-run row per stage: the
-- plan is read off those rows, and their `waiting` rows go (a stage of the plan without
-- a row reads as waiting, as for every other workflow). Their other rows stay as they are.
UPDATE orchestratorm8_workflow w SET plan_doc = (
    SELECT coalesce(jsonb_agg(jsonb_build_object('name', s.stage, 'depends_on', to_jsonb(s.depends_on))
             ORDER BY s.position), '[]'::jsonb)
    FROM orchestratorm8_stage_run s WHERE s.workflow_id = w.id)
WHERE w.plan IS NULL;
DELETE FROM orchestratorm8_stage_run WHERE status = 'waiting';

ALTER TABLE orchestratorm8_workflow DROP COLUMN plan;
ALTER TABLE orchestratorm8_workflow RENAME COLUMN plan_doc TO plan;
ALTER TABLE orchestratorm8_workflow ALTER COLUMN plan SET NOT NULL;

-- The dependencies live in the plan only.
ALTER TABLE orchestratorm8_stage_run DROP COLUMN depends_on;
