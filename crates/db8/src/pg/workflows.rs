//! [`WorkflowRepository`] on the `orchestratorm8_*` tables (docs/DATABASE.md).
//!
//! Concurrency rules: every transaction that changes rows of several tables first locks
//! the workflow rows it touches (`FOR UPDATE`, in id order), so two writers never wait
//! on each other crosswise; claiming uses `FOR UPDATE SKIP LOCKED` and never waits.
//! Transitions re-check the state they expect in their `WHERE` clause, so a duplicate
//! or stale caller changes nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use model8::{DomainRef, GoTime, StageStatus, StageView, WorkflowId, WorkflowStatus, WorkflowView};
use tokio_postgres::{IsolationLevel, Row, Transaction};
use uuid::Uuid;

use super::PgStore;
use crate::error::DbError;
use crate::memory::workflows::{DEFAULT_LIST_LIMIT, invalid_state, not_found};
use crate::plan::{active_domain, validate_batch};
use crate::time::plus;
use crate::traits::{
    ClaimedStage, NewWorkflow, StageKey, Transition, WorkflowFilter, WorkflowRepository,
};

/// Separates dependency names in the batch encoding of `create_workflows` (stage names
/// hold no control characters; see `plan::validate_batch`).
const DEP_SEPARATOR: char = '\u{1f}';

/// Statuses of a workflow that is not over.
const ACTIVE: &str = "('pending', 'running', 'paused')";

fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Attempt numbers as stored (`int`); one that does not fit cannot be stored.
fn attempt_sql(a: u32) -> Option<i32> {
    i32::try_from(a).ok()
}

fn attempt_of(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn parse<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, DbError> {
    s.parse()
        .map_err(|e: String| DbError::Query(format!("unexpected value in the database: {e}")))
}

/// Keys as three parallel arrays for `unnest`, dropping attempts that cannot exist.
fn key_arrays(keys: &[StageKey]) -> (Vec<Uuid>, Vec<&str>, Vec<i32>) {
    let mut ids = Vec::with_capacity(keys.len());
    let mut stages = Vec::with_capacity(keys.len());
    let mut attempts = Vec::with_capacity(keys.len());
    for k in keys {
        if let Some(a) = attempt_sql(k.attempt) {
            ids.push(k.workflow_id);
            stages.push(k.stage.as_str());
            attempts.push(a);
        }
    }
    (ids, stages, attempts)
}

impl PgStore {
    /// Locks the workflows `ids` (in id order) within `tx`.
    async fn lock_workflows(&self, tx: &Transaction<'_>, ids: &[Uuid]) -> Result<(), DbError> {
        tx.execute(
            "SELECT 1 FROM (SELECT id FROM orchestratorm8_workflow WHERE id = ANY($1) \
             ORDER BY id FOR UPDATE) locked",
            &[&ids],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Locks one workflow within `tx` and returns its status (`None`: absent).
    async fn lock_workflow(
        &self,
        tx: &Transaction<'_>,
        id: WorkflowId,
    ) -> Result<Option<WorkflowStatus>, DbError> {
        let row = tx
            .query_opt(
                "SELECT status FROM orchestratorm8_workflow WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| parse(r.get::<_, &str>(0))).transpose()
    }

    /// Ends a workflow within `tx`: terminal status, unfinished stages cancelled,
    /// domain freed.
    async fn finish(
        &self,
        tx: &Transaction<'_>,
        id: WorkflowId,
        status: WorkflowStatus,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        tx.execute(
            "UPDATE orchestratorm8_workflow SET status = $2, updated_at = $3, ended_at = $3, \
             active_domain = NULL WHERE id = $1",
            &[&id, &status.as_str(), &now],
        )
        .await
        .map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE orchestratorm8_stage_run SET status = 'cancelled', deadline = NULL, \
             claim_owner = NULL, claim_until = NULL, updated_at = $2 \
             WHERE workflow_id = $1 AND status IN ('waiting', 'pending', 'running')",
            &[&id, &now],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Completes the views of the workflow rows `heads` (id, status, created_at,
    /// updated_at), keeping their order.
    async fn views(
        &self,
        tx: &Transaction<'_>,
        heads: &[Row],
    ) -> Result<Vec<WorkflowView>, DbError> {
        let ids: Vec<Uuid> = heads.iter().map(|r| r.get(0)).collect();
        let mut domains: HashMap<Uuid, Vec<String>> = HashMap::new();
        for r in tx
            .query(
                "SELECT workflow_id, name FROM orchestratorm8_workflow_domain \
                 WHERE workflow_id = ANY($1) ORDER BY workflow_id, position",
                &[&ids],
            )
            .await
            .map_err(|e| self.err(e))?
        {
            domains.entry(r.get(0)).or_default().push(r.get(1));
        }
        let mut stages: HashMap<Uuid, Vec<StageView>> = HashMap::new();
        for r in tx
            .query(
                "SELECT workflow_id, stage, status, attempt FROM orchestratorm8_stage_run \
                 WHERE workflow_id = ANY($1) ORDER BY workflow_id, position",
                &[&ids],
            )
            .await
            .map_err(|e| self.err(e))?
        {
            stages.entry(r.get(0)).or_default().push(StageView {
                name: r.get(1),
                status: parse::<StageStatus>(r.get(2))?,
                attempt: attempt_of(r.get(3)),
            });
        }
        heads
            .iter()
            .map(|r| {
                let id: Uuid = r.get(0);
                Ok(WorkflowView {
                    id,
                    status: parse(r.get::<_, &str>(1))?,
                    created_at: GoTime::from_utc(r.get(2)),
                    updated_at: GoTime::from_utc(r.get(3)),
                    domains: domains.remove(&id).unwrap_or_default(),
                    stages: stages.remove(&id).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// The view of one workflow within `tx`.
    async fn view(&self, tx: &Transaction<'_>, id: WorkflowId) -> Result<WorkflowView, DbError> {
        let heads = tx
            .query(
                "SELECT id, status, created_at, updated_at FROM orchestratorm8_workflow \
                 WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(|e| self.err(e))?;
        self.views(tx, &heads)
            .await?
            .pop()
            .ok_or_else(|| not_found(id))
    }

    /// Runs `change` on one locked workflow in a transaction and returns its view.
    async fn change_workflow(
        &self,
        id: WorkflowId,
        action: &str,
        allowed: &[WorkflowStatus],
        now: DateTime<Utc>,
    ) -> Result<WorkflowView, DbError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(|e| self.err(e))?;
        let status = self
            .lock_workflow(&tx, id)
            .await?
            .ok_or_else(|| not_found(id))?;
        if !allowed.contains(&status) {
            return Err(invalid_state(id, action, status));
        }
        match action {
            "cancel" => self.finish(&tx, id, WorkflowStatus::Cancelled, now).await?,
            "pause" => {
                tx.execute(
                    "UPDATE orchestratorm8_workflow SET status = 'paused', updated_at = $2 \
                     WHERE id = $1",
                    &[&id, &now],
                )
                .await
                .map_err(|e| self.err(e))?;
            }
            _ => {
                tx.execute(
                    "UPDATE orchestratorm8_workflow SET updated_at = $2, status = CASE \
                     WHEN EXISTS (SELECT 1 FROM orchestratorm8_stage_run \
                                  WHERE workflow_id = $1 AND attempt > 0) \
                     THEN 'running' ELSE 'pending' END WHERE id = $1",
                    &[&id, &now],
                )
                .await
                .map_err(|e| self.err(e))?;
            }
        }
        let view = self.view(&tx, id).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(view)
    }
}

#[async_trait]
impl WorkflowRepository for PgStore {
    async fn create_workflows(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
    ) -> Result<Vec<WorkflowId>, DbError> {
        validate_batch(batch)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let n = batch.len();
        let mut ids = Vec::with_capacity(n);
        let mut actives: Vec<Option<Uuid>> = Vec::with_capacity(n);
        let (mut d_wf, mut d_pos, mut d_id, mut d_name, mut d_company) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut s_wf, mut s_pos, mut s_name, mut s_deps) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for wf in batch {
            ids.push(wf.id);
            actives.push(active_domain(wf));
            for (i, d) in wf.domains.iter().enumerate() {
                d_wf.push(wf.id);
                d_pos.push(i32::try_from(i).unwrap_or(i32::MAX));
                d_id.push(d.id);
                d_name.push(d.name.as_str());
                d_company.push(d.companyname.as_str());
            }
            for (i, s) in wf.stages.iter().enumerate() {
                s_wf.push(wf.id);
                s_pos.push(i32::try_from(i).unwrap_or(i32::MAX));
                s_name.push(s.name.as_str());
                s_deps.push(s.depends_on.join(&DEP_SEPARATOR.to_string()));
            }
        }
        // One statement: the workflows that do not conflict (known id, or a domain that
        // already has an active one-domain workflow) are inserted with their domains
        // and stages; the others are skipped.
        let sql = format!(
            "WITH wf AS ( \
               INSERT INTO orchestratorm8_workflow (id, status, created_at, updated_at, active_domain) \
               SELECT u.id, 'pending', $1, $1, u.active \
               FROM unnest($2::uuid[], $3::uuid[]) AS u(id, active) \
               ON CONFLICT DO NOTHING \
               RETURNING id \
             ), d AS ( \
               INSERT INTO orchestratorm8_workflow_domain (workflow_id, position, domain_id, name, companyname) \
               SELECT u.wf, u.pos, u.id, u.name, u.company \
               FROM unnest($4::uuid[], $5::int[], $6::uuid[], $7::text[], $8::text[]) \
                    AS u(wf, pos, id, name, company) \
               WHERE u.wf IN (SELECT id FROM wf) \
             ), s AS ( \
               INSERT INTO orchestratorm8_stage_run \
                 (workflow_id, stage, position, depends_on, status, not_before, updated_at) \
               SELECT u.wf, u.name, u.pos, string_to_array(u.deps, E'\\x{sep:02x}'), \
                      CASE WHEN u.deps = '' THEN 'pending' ELSE 'waiting' END, \
                      CASE WHEN u.deps = '' THEN $1 END, $1 \
               FROM unnest($9::uuid[], $10::int[], $11::text[], $12::text[]) \
                    AS u(wf, pos, name, deps) \
               WHERE u.wf IN (SELECT id FROM wf) \
             ) \
             SELECT id FROM wf",
            sep = DEP_SEPARATOR as u32
        );
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &sql,
                &[
                    &now, &ids, &actives, &d_wf, &d_pos, &d_id, &d_name, &d_company, &s_wf, &s_pos,
                    &s_name, &s_deps,
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        let created: HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
        Ok(ids.into_iter().filter(|id| created.contains(id)).collect())
    }

    async fn idle_domains(
        &self,
        ended_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<DomainRef>, DbError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT d.id, coalesce(d.name, ''), coalesce(d.companyname, '') \
                 FROM cptm8domain d \
                 WHERE d.enabled AND d.id IS NOT NULL AND ($2::uuid IS NULL OR d.id > $2) \
                   AND NOT EXISTS ( \
                     SELECT 1 FROM orchestratorm8_workflow_domain wd \
                     JOIN orchestratorm8_workflow w ON w.id = wd.workflow_id \
                     WHERE wd.domain_id = d.id AND (w.ended_at IS NULL OR w.ended_at > $1)) \
                 ORDER BY d.id LIMIT $3",
                &[&ended_before, &after, &sql_limit(limit)],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| DomainRef {
                id: r.get(0),
                name: r.get(1),
                companyname: r.get(2),
            })
            .collect())
    }

    async fn any_active(&self) -> Result<bool, DbError> {
        let conn = self.conn().await?;
        let row = conn
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM orchestratorm8_workflow WHERE ended_at IS NULL)",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    async fn last_ended_at(&self) -> Result<Option<DateTime<Utc>>, DbError> {
        let conn = self.conn().await?;
        let row = conn
            .query_one("SELECT max(ended_at) FROM orchestratorm8_workflow", &[])
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    async fn in_flight_counts(&self, now: DateTime<Utc>) -> Result<HashMap<String, u64>, DbError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT stage, count(*) FROM orchestratorm8_stage_run \
                 WHERE status = 'running' OR (status = 'pending' AND claim_until > $1) \
                 GROUP BY stage",
                &[&now],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
            .collect())
    }

    async fn claim_due(
        &self,
        stage: &str,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedStage>, DbError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let until = plus(now, lease);
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "WITH due AS ( \
                   SELECT s.workflow_id FROM orchestratorm8_stage_run s \
                   JOIN orchestratorm8_workflow w ON w.id = s.workflow_id \
                   WHERE s.stage = $1 AND s.status = 'pending' AND s.not_before <= $2 \
                     AND (s.claim_until IS NULL OR s.claim_until <= $2) \
                     AND w.status IN ('pending', 'running') \
                   ORDER BY s.not_before, s.workflow_id \
                   LIMIT $3 \
                   FOR UPDATE OF s SKIP LOCKED \
                 ) \
                 UPDATE orchestratorm8_stage_run s SET claim_owner = $4, claim_until = $5 \
                 FROM due WHERE s.workflow_id = due.workflow_id AND s.stage = $1 \
                 RETURNING s.workflow_id, s.attempt, s.not_before",
                &[&stage, &now, &sql_limit(limit), &owner, &until],
            )
            .await
            .map_err(|e| self.err(e))?;
        let mut claimed: Vec<(DateTime<Utc>, Uuid, u32)> = rows
            .iter()
            .map(|r| (r.get(2), r.get(0), attempt_of(r.get(1)) + 1))
            .collect();
        claimed.sort();
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.1).collect();
        let mut domains: HashMap<Uuid, Vec<DomainRef>> = HashMap::new();
        if !ids.is_empty() {
            for r in conn
                .query(
                    "SELECT workflow_id, domain_id, name, companyname \
                     FROM orchestratorm8_workflow_domain WHERE workflow_id = ANY($1) \
                     ORDER BY workflow_id, position",
                    &[&ids],
                )
                .await
                .map_err(|e| self.err(e))?
            {
                domains.entry(r.get(0)).or_default().push(DomainRef {
                    id: r.get(1),
                    name: r.get(2),
                    companyname: r.get(3),
                });
            }
        }
        Ok(claimed
            .into_iter()
            .map(|(_, id, attempt)| ClaimedStage {
                key: StageKey {
                    workflow_id: id,
                    stage: stage.to_owned(),
                    attempt,
                },
                domains: domains.remove(&id).unwrap_or_default(),
            })
            .collect())
    }

    async fn mark_running(
        &self,
        keys: &[StageKey],
        owner: Uuid,
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let (ids, stages, attempts) = key_arrays(keys);
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(|e| self.err(e))?;
        self.lock_workflows(&tx, &ids).await?;
        let row = tx
            .query_one(
                "WITH upd AS ( \
                   UPDATE orchestratorm8_stage_run s SET status = 'running', \
                     attempt = k.attempt, deadline = $5, claim_owner = NULL, \
                     claim_until = NULL, updated_at = $4 \
                   FROM unnest($1::uuid[], $2::text[], $3::int[]) AS k(wf, stage, attempt) \
                   WHERE s.workflow_id = k.wf AND s.stage = k.stage AND s.status = 'pending' \
                     AND s.claim_owner = $6 AND s.attempt + 1 = k.attempt \
                   RETURNING s.workflow_id \
                 ), w AS ( \
                   UPDATE orchestratorm8_workflow w SET updated_at = $4, \
                     status = CASE WHEN w.status = 'pending' THEN 'running' ELSE w.status END \
                   WHERE w.id IN (SELECT workflow_id FROM upd) \
                 ) \
                 SELECT count(*) FROM upd",
                &[&ids, &stages, &attempts, &now, &deadline, &owner],
            )
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn release(
        &self,
        keys: &[StageKey],
        owner: Uuid,
        not_before: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let (ids, stages, attempts) = key_arrays(keys);
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(|e| self.err(e))?;
        self.lock_workflows(&tx, &ids).await?;
        let n = tx
            .execute(
                "UPDATE orchestratorm8_stage_run s SET claim_owner = NULL, claim_until = NULL, \
                   not_before = $5 \
                 FROM unnest($1::uuid[], $2::text[], $3::int[]) AS k(wf, stage, attempt) \
                 WHERE s.workflow_id = k.wf AND s.stage = k.stage AND s.status = 'pending' \
                   AND s.claim_owner = $4 AND s.attempt + 1 = k.attempt",
                &[&ids, &stages, &attempts, &owner, &not_before],
            )
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(n)
    }

    async fn complete_stage(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        let Some(attempt) = attempt_sql(key.attempt) else {
            return Ok(Transition::Stale);
        };
        let id = key.workflow_id;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(|e| self.err(e))?;
        match self.lock_workflow(&tx, id).await? {
            Some(s) if !s.is_terminal() => {}
            _ => return Ok(Transition::Stale),
        }
        let n = tx
            .execute(
                "UPDATE orchestratorm8_stage_run SET status = 'completed', deadline = NULL, \
                   detail = coalesce($4, detail), updated_at = $5 \
                 WHERE workflow_id = $1 AND stage = $2 AND status = 'running' AND attempt = $3",
                &[&id, &key.stage, &attempt, &detail, &now],
            )
            .await
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Ok(Transition::Stale);
        }
        tx.execute(
            "UPDATE orchestratorm8_stage_run s SET status = 'pending', not_before = $2, \
               updated_at = $2 \
             WHERE s.workflow_id = $1 AND s.status = 'waiting' AND NOT EXISTS ( \
               SELECT 1 FROM orchestratorm8_stage_run d \
               WHERE d.workflow_id = $1 AND d.stage = ANY(s.depends_on) \
                 AND d.status <> 'completed')",
            &[&id, &now],
        )
        .await
        .map_err(|e| self.err(e))?;
        let done: bool = tx
            .query_one(
                "SELECT bool_and(status = 'completed') FROM orchestratorm8_stage_run \
                 WHERE workflow_id = $1",
                &[&id],
            )
            .await
            .map_err(|e| self.err(e))?
            .get(0);
        if done {
            self.finish(&tx, id, WorkflowStatus::Completed, now).await?;
        } else {
            tx.execute(
                "UPDATE orchestratorm8_workflow SET updated_at = $2 WHERE id = $1",
                &[&id, &now],
            )
            .await
            .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(Transition::StageCompleted {
            workflow_completed: done,
        })
    }

    async fn fail_stage(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        let Some(attempt) = attempt_sql(key.attempt) else {
            return Ok(Transition::Stale);
        };
        let id = key.workflow_id;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(|e| self.err(e))?;
        match self.lock_workflow(&tx, id).await? {
            Some(s) if !s.is_terminal() => {}
            _ => return Ok(Transition::Stale),
        }
        let row = tx
            .query_opt(
                "UPDATE orchestratorm8_stage_run SET \
                   status = CASE WHEN $4::timestamptz IS NULL THEN 'failed' ELSE 'pending' END, \
                   not_before = coalesce($4, not_before), deadline = NULL, \
                   detail = coalesce($5, detail), updated_at = $6 \
                 WHERE workflow_id = $1 AND stage = $2 AND status = 'running' AND attempt = $3 \
                 RETURNING not_before",
                &[&id, &key.stage, &attempt, &retry_at, &detail, &now],
            )
            .await
            .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Ok(Transition::Stale);
        };
        let transition = match retry_at {
            Some(_) => {
                tx.execute(
                    "UPDATE orchestratorm8_workflow SET updated_at = $2 WHERE id = $1",
                    &[&id, &now],
                )
                .await
                .map_err(|e| self.err(e))?;
                Transition::Retrying { at: row.get(0) }
            }
            None => {
                self.finish(&tx, id, WorkflowStatus::Failed, now).await?;
                Transition::WorkflowFailed
            }
        };
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(transition)
    }

    async fn timed_out(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<StageKey>, DbError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT s.workflow_id, s.stage, s.attempt FROM orchestratorm8_stage_run s \
                     JOIN orchestratorm8_workflow w ON w.id = s.workflow_id \
                     WHERE s.status = 'running' AND s.deadline < $1 AND w.status IN {ACTIVE} \
                     ORDER BY s.deadline, s.workflow_id, s.stage COLLATE \"C\" LIMIT $2"
                ),
                &[&now, &sql_limit(limit)],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| StageKey {
                workflow_id: r.get(0),
                stage: r.get(1),
                attempt: attempt_of(r.get(2)),
            })
            .collect())
    }

    async fn list(&self, filter: &WorkflowFilter) -> Result<Vec<WorkflowView>, DbError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.err(e))?;
        let status = filter.status.map(|s| s.as_str());
        let limit = sql_limit(filter.limit.unwrap_or(DEFAULT_LIST_LIMIT));
        let heads = tx
            .query(
                "SELECT id, status, created_at, updated_at FROM orchestratorm8_workflow \
                 WHERE ($1::text IS NULL OR status = $1) \
                 ORDER BY created_at DESC, id DESC LIMIT $2",
                &[&status, &limit],
            )
            .await
            .map_err(|e| self.err(e))?;
        let views = self.views(&tx, &heads).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(views)
    }

    async fn get(&self, id: WorkflowId) -> Result<WorkflowView, DbError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.err(e))?;
        let view = self.view(&tx, id).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(view)
    }

    async fn cancel(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        use WorkflowStatus::*;
        self.change_workflow(id, "cancel", &[Pending, Running, Paused], now)
            .await
    }

    async fn pause(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        use WorkflowStatus::*;
        self.change_workflow(id, "pause", &[Pending, Running], now)
            .await
    }

    async fn resume(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        self.change_workflow(id, "resume", &[WorkflowStatus::Paused], now)
            .await
    }
}
