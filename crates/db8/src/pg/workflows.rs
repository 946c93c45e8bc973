//! [`WorkflowRepository`] on the `orchestratorm8_*` tables (docs/DATABASE.md).
//!
//! Concurrency rules: every transaction that changes rows of several tables first locks
//! the workflow rows it touches (`FOR UPDATE`, in id order), so two writers never wait
//! on each other crosswise; claiming uses `FOR UPDATE SKIP LOCKED` and never waits.
//! Transitions re-check the state they expect in their `WHERE` clause, so a duplicate
//! or stale caller changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use model8::{
    DomainRef, GoTime, StageStatus, StageView, WorkflowId, WorkflowKind, WorkflowStatus,
    WorkflowView,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, IsolationLevel, Row, Transaction};
use uuid::Uuid;

use super::PgStore;
use crate::error::DbError;
use crate::outbox::{OutboxEvent, failed_event};
use crate::plan::{active_domain, validate_batch};
use crate::shared::workflows::{DEFAULT_LIST_LIMIT, invalid_state, not_found};
use crate::time::plus;
use crate::traits::{
    ClaimedStage, Created, InitialClaim, NewWorkflow, StageKey, Transition, WorkflowFilter,
    WorkflowRepository,
};
use crate::transitions::StageEvent;

/// A workflow's pipeline as stored in `plan jsonb`: per stage, in order,
/// `{"name": <stage>, "depends_on": [<stage>...]}`.
pub(crate) fn plan_doc<'a>(
    stages: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>,
) -> serde_json::Value {
    serde_json::Value::Array(
        stages
            .into_iter()
            .map(|(name, depends_on)| serde_json::json!({"name": name, "depends_on": depends_on}))
            .collect(),
    )
}

/// A workflow's plan as [`plan_doc`] has it, as JSON text: serialised straight from the
/// stages, without building a document per workflow (a batch holds thousands).
fn plan_text(stages: &[crate::traits::StagePlan]) -> String {
    /// One stage of the stored plan.
    #[derive(serde::Serialize)]
    struct Stage<'a> {
        name: &'a str,
        depends_on: &'a [String],
    }
    let stages: Vec<Stage<'_>> = stages
        .iter()
        .map(|s| Stage {
            name: &s.name,
            depends_on: &s.depends_on,
        })
        .collect();
    serde_json::to_string(&stages).expect("strings serialise")
}

/// The filters of the API's listing, `$1` to `$6` (status, kind, domain, company,
/// cursor time, cursor id), on the workflow row `w`.
const LIST_FILTER: &str = "($1::text IS NULL OR w.status = $1) \
     AND ($2::text IS NULL OR w.kind = $2) \
     AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM orchestratorm8_workflow_domain d \
          WHERE d.workflow_id = w.id AND d.name = $3)) \
     AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM orchestratorm8_workflow_domain d \
          WHERE d.workflow_id = w.id AND d.companyname = $4)) \
     AND ($5::timestamptz IS NULL OR (w.created_at, w.id) < ($5, $6::uuid))";

/// The columns of a workflow row its view starts from, in the order
/// [`PgStore::views`] reads them.
const HEAD: &str = "id, status, created_at, updated_at, kind";

/// The [`HEAD`] of workflow `$1`.
fn one_head() -> String {
    format!("SELECT {HEAD} FROM orchestratorm8_workflow WHERE id = $1")
}

/// The stage status of a confirmed attempt ([`StageEvent::PublishConfirmed`]).
const RUNNING: &str = StageStatus::Running.as_str();

/// The stage status of a claimed attempt ([`StageEvent::Claim`]).
const DISPATCHED: &str = StageStatus::Dispatched.as_str();

/// The stages of `s` a claim at `$2` takes: in a status of `$6` ([`claimable`]) and
/// due; a dispatched one only when its lease ended.
const CLAIMABLE: &str = "s.status = ANY($6) AND s.not_before <= $2 \
     AND (s.claim_until IS NULL OR s.claim_until <= $2)";

/// The claim of a stage for `$4` until `$5`: dispatched (`$7`), with the next attempt
/// number when it was due (a status of `$8`), its own when its lease ended.
const CLAIM: &str = "status = $7, \
     attempt = CASE WHEN s.status = ANY($8) THEN s.attempt + 1 ELSE s.attempt END, \
     claim_owner = $4, claim_until = $5";

/// The attempts in flight at `$1`: running (`$2`), or dispatched (`$3`) under a live
/// lease.
const BUSY: &str = "status = $2 OR (status = $3 AND claim_until > $1)";

/// [`BUSY`] in the fair claim: at `$2`, running `$11`, dispatched `$7`.
const BUSY_FAIR: &str = "s.status = $11 OR (s.status = $7 AND s.claim_until > $2)";

/// The statuses a claim takes a stage from: due, or dispatched (its lease ended).
fn claimable() -> Vec<&'static str> {
    StageEvent::Claim.from_strs_with(&[StageEvent::Reclaim])
}

/// A stage's columns as a result of its in-flight attempt leaves them at `$6`: no
/// claim, no deadline, finished (an early result, before the publisher's record,
/// also starts it: only a dispatched attempt has a claim).
const SETTLE: &str = "started_at = CASE WHEN claim_owner IS NULL THEN started_at ELSE $6 END, \
     claim_owner = NULL, claim_until = NULL, deadline = NULL, updated_at = $6, finished_at = $6";

/// Statuses of a workflow that is not over.
const ACTIVE: &str = "('pending', 'running', 'paused')";

fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Attempt numbers as stored (`int`); one that does not fit cannot be stored.
fn attempt_sql(a: u32) -> Option<i32> {
    i32::try_from(a).ok()
}

/// An attempt number as stored.
pub(super) fn attempt_of(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// A status or kind as stored.
pub(super) fn parse<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, DbError> {
    s.parse()
        .map_err(|e: String| DbError::Query(format!("unexpected value in the database: {e}")))
}

/// Keys as three parallel arrays for `unnest`, dropping attempts that cannot exist.
fn key_arrays(keys: &[StageKey]) -> (Vec<Uuid>, Vec<&str>, Vec<i32>) {
    let (ids, (stages, attempts)) = keys
        .iter()
        .filter_map(|k| Some((k.workflow_id, (k.stage.as_str(), attempt_sql(k.attempt)?))))
        .unzip();
    (ids, stages, attempts)
}

impl PgStore {
    /// Makes the statements of `tx` that join a batch of keys (`unnest` of up to a
    /// few thousand) with the stage runs find each row by its primary key, whatever
    /// the statistics say: right after a bulk creation (not analysed yet) PostgreSQL
    /// may otherwise hash-join with a sequential scan of every stage run, which grows
    /// with the table (and a cost estimate that starts the JIT compiler).
    async fn by_key_lookups(&self, tx: &Transaction<'_>) -> Result<(), DbError> {
        tx.batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL jit = off")
            .await
            .map_err(|e| self.err(e))
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

    /// The preamble of a guarded transition of one stage attempt (a worker's report or
    /// a time-out): a transaction on `conn` with the attempt's workflow locked. `None`
    /// (stale: nothing to do) when the attempt number cannot exist or the workflow is
    /// absent or terminal; otherwise the transaction and the attempt as stored.
    ///
    /// `leader`: a leader-only write (a time-out), whose term is checked first
    /// ([`PgStore::fenced`]).
    async fn begin_guarded<'c>(
        &self,
        conn: &'c mut tokio_postgres::Client,
        key: &StageKey,
        leader: bool,
    ) -> Result<Option<(Transaction<'c>, i32)>, DbError> {
        let Some(attempt) = attempt_sql(key.attempt) else {
            return Ok(None);
        };
        let tx = if leader {
            self.leader_tx(conn).await?
        } else {
            conn.transaction().await.map_err(|e| self.err(e))?
        };
        match self.lock_workflow(&tx, key.workflow_id).await? {
            Some(s) if !s.is_terminal() => Ok(Some((tx, attempt))),
            _ => Ok(None),
        }
    }

    /// A failed attempt (`leader`: a time-out, fenced): see
    /// [`WorkflowRepository::fail_stage`].
    async fn fail(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        leader: bool,
    ) -> Result<Transition, DbError> {
        let id = key.workflow_id;
        let mut conn = self.conn().await?;
        let Some((tx, attempt)) = self.begin_guarded(&mut conn, key, leader).await? else {
            return Ok(Transition::Stale);
        };
        let (retry, last) = (StageEvent::FailRetry, StageEvent::FailFinal);
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE orchestratorm8_stage_run SET \
                       status = CASE WHEN $4::timestamptz IS NULL THEN $7::text ELSE $8::text END, \
                       not_before = coalesce($4, not_before), \
                       detail = coalesce($5, detail), {SETTLE} \
                     WHERE workflow_id = $1 AND stage = $2 AND status = ANY($9) \
                       AND attempt = $3 \
                     RETURNING not_before"
                ),
                &[
                    &id,
                    &key.stage,
                    &attempt,
                    &retry_at,
                    &detail,
                    &now,
                    &last.to().as_str(),
                    &retry.to().as_str(),
                    &retry.from_strs_with(&[last]),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Ok(Transition::Stale);
        };
        let transition = match retry_at {
            Some(_) => {
                self.touch_started(&tx, id, now).await?;
                Transition::Retrying { at: row.get(0) }
            }
            None => {
                self.finish(&tx, id, WorkflowStatus::Failed, now).await?;
                // Its notification, in the same transaction (the outbox).
                let domains = self.domain_names(&tx, id).await?;
                let event = failed_event(key, domains, detail);
                self.outbox_insert(&tx, &event, now).await?;
                Transition::WorkflowFailed
            }
        };
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(transition)
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
        let cancel = StageEvent::Cancel;
        tx.execute(
            "UPDATE orchestratorm8_stage_run SET status = $3, deadline = NULL, \
             claim_owner = NULL, claim_until = NULL, updated_at = $2, finished_at = $2 \
             WHERE workflow_id = $1 AND status = ANY($4)",
            &[&id, &now, &cancel.to().as_str(), &cancel.from_strs()],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Within `tx`: a result applied to workflow `id` (not finished by it): changed
    /// now, and started (an early result, before the publisher's record, starts it).
    async fn touch_started(
        &self,
        tx: &Transaction<'_>,
        id: WorkflowId,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        tx.execute(
            "UPDATE orchestratorm8_workflow SET updated_at = $2, \
               status = CASE WHEN status = 'pending' THEN 'running' ELSE status END \
             WHERE id = $1",
            &[&id, &now],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Completes the views of the workflow rows `heads` (id, status, created_at,
    /// updated_at, kind: [`HEAD`]), keeping their order.
    async fn views(
        &self,
        tx: &Transaction<'_>,
        heads: &[Row],
    ) -> Result<Vec<WorkflowView>, DbError> {
        let ids: Vec<Uuid> = heads.iter().map(|r| r.get(0)).collect();
        let mut domains = self.domains_of(tx, &ids).await?;
        let mut stages: HashMap<Uuid, Vec<StageView>> = HashMap::new();
        // Its stages in plan order, each as its stage-run row says, or `waiting`
        // (`cancelled` once the workflow is over) before it has one.
        let sql = "SELECT w.id, p.e->>'name', \
               coalesce(s.status, CASE WHEN w.ended_at IS NULL THEN 'waiting' ELSE 'cancelled' END), \
               coalesce(s.attempt, 0), p.pos::int, s.started_at, s.finished_at, s.detail \
             FROM orchestratorm8_workflow w \
             CROSS JOIN LATERAL jsonb_array_elements(w.plan) WITH ORDINALITY AS p(e, pos) \
             LEFT JOIN orchestratorm8_stage_run s \
               ON s.workflow_id = w.id AND s.stage = p.e->>'name' \
             WHERE w.id = ANY($1) \
             ORDER BY 1, 5";
        for r in tx.query(sql, &[&ids]).await.map_err(|e| self.err(e))? {
            stages.entry(r.get(0)).or_default().push(StageView {
                name: r.get(1),
                status: parse::<StageStatus>(r.get(2))?,
                attempt: attempt_of(r.get(3)),
                started_at: r.get::<_, Option<DateTime<Utc>>>(5).map(GoTime::from_utc),
                finished_at: r.get::<_, Option<DateTime<Utc>>>(6).map(GoTime::from_utc),
                detail: r.get(7),
                waiting_for_window_until: None,
            });
        }
        heads
            .iter()
            .map(|r| {
                let id: Uuid = r.get(0);
                Ok(WorkflowView {
                    id,
                    kind: parse(r.get::<_, &str>(4))?,
                    status: parse(r.get::<_, &str>(1))?,
                    created_at: GoTime::from_utc(r.get(2)),
                    updated_at: GoTime::from_utc(r.get(3)),
                    domains: domains
                        .remove(&id)
                        .into_iter()
                        .flatten()
                        .map(|d| d.name)
                        .collect(),
                    stages: stages.remove(&id).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// The view of one workflow within `tx`.
    async fn view(&self, tx: &Transaction<'_>, id: WorkflowId) -> Result<WorkflowView, DbError> {
        let heads = tx
            .query(&one_head(), &[&id])
            .await
            .map_err(|e| self.err(e))?;
        self.views(tx, &heads)
            .await?
            .pop()
            .ok_or_else(|| not_found(id))
    }

    /// The views of the workflow rows `sql` selects ([`HEAD`]), in its order, read in
    /// one read-only snapshot.
    async fn read_views(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<WorkflowView>, DbError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.err(e))?;
        let heads = tx.query(sql, params).await.map_err(|e| self.err(e))?;
        let views = self.views(&tx, &heads).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(views)
    }

    /// Creates the workflows of `batch` that do not conflict, in one statement, claiming
    /// the first attempts `claim` names (see [`WorkflowRepository::create_claimed`]).
    ///
    /// A workflow's pipeline is recorded on its row (`plan`); only the stages without
    /// dependencies get a stage-run row now (pending), the others get theirs when they
    /// become due (`complete_stage`). Until then they read as `waiting` (or
    /// `cancelled` once the workflow is over).
    async fn create(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
        claim: Option<&InitialClaim>,
    ) -> Result<Created, DbError> {
        validate_batch(batch)?;
        if batch.is_empty() {
            return Ok(Created::default());
        }
        let n = batch.len();
        let mut ids = Vec::with_capacity(n);
        let mut actives: Vec<Option<Uuid>> = Vec::with_capacity(n);
        let mut plans: Vec<String> = Vec::with_capacity(n);
        let (mut d_wf, mut d_pos, mut d_id, mut d_name, mut d_company) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut s_wf, mut s_pos, mut s_name, mut s_claim) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let claims = |stage: &crate::traits::StagePlan| {
            stage.depends_on.is_empty() && claim.is_some_and(|c| c.stages.contains(&stage.name))
        };
        for wf in batch {
            ids.push(wf.id);
            actives.push(active_domain(&wf.domains));
            plans.push(plan_text(&wf.stages));
            for (i, d) in wf.domains.iter().enumerate() {
                d_wf.push(wf.id);
                d_pos.push(i32::try_from(i).unwrap_or(i32::MAX));
                d_id.push(d.id);
                d_name.push(d.name.as_str());
                d_company.push(d.companyname.as_str());
            }
            for (i, st) in wf.stages.iter().enumerate() {
                if st.depends_on.is_empty() {
                    s_wf.push(wf.id);
                    s_pos.push(i32::try_from(i).unwrap_or(i32::MAX));
                    s_name.push(st.name.as_str());
                    s_claim.push(claims(st));
                }
            }
        }
        let owner = claim.map(|c| c.owner);
        let until = claim.map(|c| plus(now, c.lease));
        // One statement: the workflows that do not conflict (known id, or a domain that
        // already has an active one-domain workflow) are inserted with their domains
        // and their stages without dependencies (pending, and claimed when asked); the
        // others are skipped.
        let sql = "WITH wf AS ( \
               INSERT INTO orchestratorm8_workflow \
                 (id, status, created_at, updated_at, active_domain, plan) \
               SELECT u.id, 'pending', $1, $1, u.active, u.plan::jsonb \
               FROM unnest($2::uuid[], $3::uuid[], $4::text[]) AS u(id, active, plan) \
               ON CONFLICT DO NOTHING \
               RETURNING id \
             ), d AS ( \
               INSERT INTO orchestratorm8_workflow_domain (workflow_id, position, domain_id, name, companyname) \
               SELECT u.wf, u.pos, u.id, u.name, u.company \
               FROM unnest($5::uuid[], $6::int[], $7::uuid[], $8::text[], $9::text[]) \
                    AS u(wf, pos, id, name, company) \
               WHERE u.wf IN (SELECT id FROM wf) \
             ), s AS ( \
               INSERT INTO orchestratorm8_stage_run \
                 (workflow_id, stage, position, status, attempt, not_before, claim_owner, \
                  claim_until, updated_at) \
               SELECT u.wf, u.name, u.pos, \
                      CASE WHEN u.claim THEN $16::text ELSE 'pending' END, u.claim::int, $1, \
                      CASE WHEN u.claim THEN $13::uuid END, \
                      CASE WHEN u.claim THEN $14::timestamptz END, $1 \
               FROM unnest($10::uuid[], $11::int[], $12::text[], $15::bool[]) \
                    AS u(wf, pos, name, claim) \
               WHERE u.wf IN (SELECT id FROM wf) \
             ) \
             SELECT id FROM wf";
        let mut conn = self.conn().await?;
        let tx = self.leader_tx(&mut conn).await?;
        let rows = tx
            .query(
                sql,
                &[
                    &now,
                    &ids,
                    &actives,
                    &plans,
                    &d_wf,
                    &d_pos,
                    &d_id,
                    &d_name,
                    &d_company,
                    &s_wf,
                    &s_pos,
                    &s_name,
                    &owner,
                    &until,
                    &s_claim,
                    &StageEvent::Claim.to().as_str(),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        let created: HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
        let mut out = Created::default();
        for wf in batch.iter().filter(|w| created.contains(&w.id)) {
            out.ids.push(wf.id);
            for st in wf.stages.iter().filter(|st| claims(st)) {
                out.claimed.push(ClaimedStage {
                    key: StageKey {
                        workflow_id: wf.id,
                        stage: st.name.clone(),
                        attempt: 1,
                    },
                    domains: wf.domains.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Within `tx` (workflow `id` locked): the stages whose dependencies are all
    /// completed and that are not due yet become pending at `now`.
    async fn promote_due(
        &self,
        tx: &Transaction<'_>,
        id: WorkflowId,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        // The stages whose dependencies are all completed become due: a row is
        // created for each.
        tx.execute(
            "INSERT INTO orchestratorm8_stage_run \
               (workflow_id, stage, position, status, not_before, updated_at) \
             SELECT $1, p.e->>'name', (p.pos - 1)::int, 'pending', $2, $2 \
             FROM orchestratorm8_workflow w \
             CROSS JOIN LATERAL jsonb_array_elements(w.plan) WITH ORDINALITY AS p(e, pos) \
             WHERE w.id = $1 \
               AND NOT EXISTS (SELECT 1 FROM orchestratorm8_stage_run s \
                               WHERE s.workflow_id = $1 AND s.stage = p.e->>'name') \
               AND NOT EXISTS ( \
                 SELECT 1 FROM jsonb_array_elements_text(p.e->'depends_on') AS d(name) \
                 WHERE NOT EXISTS ( \
                   SELECT 1 FROM orchestratorm8_stage_run c WHERE c.workflow_id = $1 \
                     AND c.stage = d.name AND c.status = 'completed'))",
            &[&id, &now],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Within `tx` (workflow `id` locked, failed or cancelled): the workflow runs
    /// again from its unfinished stages (see [`WorkflowRepository::retry`]).
    async fn reopen(
        &self,
        tx: &Transaction<'_>,
        id: WorkflowId,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let kind: String = tx
            .query_one(
                "SELECT kind FROM orchestratorm8_workflow WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(|e| self.err(e))?
            .get(0);
        if kind != WorkflowKind::Managed.as_str() {
            return Err(DbError::InvalidState(format!(
                "cannot retry workflow {id}: it is an observed cycle"
            )));
        }
        // A one-domain workflow takes its domain back (the unique index refuses it
        // while another workflow of the domain is active: a conflict).
        tx.execute(
            "UPDATE orchestratorm8_workflow w SET updated_at = $2, ended_at = NULL, \
               status = CASE WHEN EXISTS (SELECT 1 FROM orchestratorm8_stage_run \
                 WHERE workflow_id = $1 AND status = 'completed') THEN 'running' ELSE 'pending' END, \
               active_domain = (SELECT CASE WHEN count(*) = 1 THEN min(domain_id::text)::uuid END \
                 FROM orchestratorm8_workflow_domain WHERE workflow_id = $1) \
             WHERE id = $1",
            &[&id, &now],
        )
        .await
        .map_err(|e| match self.err(e) {
            DbError::Conflict(_) => DbError::Conflict(format!(
                "cannot retry workflow {id}: its domain has another active workflow"
            )),
            other => other,
        })?;
        // Only its completed stages keep their rows; the others are due again as
        // their dependencies are completed.
        tx.execute(
            "DELETE FROM orchestratorm8_stage_run WHERE workflow_id = $1 AND status <> 'completed'",
            &[&id],
        )
        .await
        .map_err(|e| self.err(e))?;
        self.promote_due(tx, id, now).await
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
            "retry" => self.reopen(&tx, id, now).await?,
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
                    // Started: an attempt was confirmed once (a dispatched one is
                    // not yet).
                    "UPDATE orchestratorm8_workflow SET updated_at = $2, status = CASE \
                     WHEN EXISTS (SELECT 1 FROM orchestratorm8_stage_run WHERE workflow_id = $1 \
                                  AND attempt > CASE WHEN status = $3 THEN 1 ELSE 0 END) \
                     THEN 'running' ELSE 'pending' END WHERE id = $1",
                    &[&id, &now, &StageEvent::Claim.to().as_str()],
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
        Ok(self.create(batch, now, None).await?.ids)
    }

    async fn create_claimed(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
        claim: &InitialClaim,
    ) -> Result<Created, DbError> {
        self.create(batch, now, Some(claim)).await
    }

    async fn idle_domains(
        &self,
        ended_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<DomainRef>, DbError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.err(e))?;
        // Walk the domains in id order from the cursor and probe each one, whatever
        // the statistics say: a freshly imported table (100,000 rows, not analysed
        // yet) otherwise gets a sequential scan and a sort of every domain after the
        // cursor at each page (O(n) per page, O(n^2) in all; 130 ms instead of 8 ms a
        // page at 100,000 domains), and the cost estimate of that plan starts the
        // JIT compiler on top (another 100+ ms a page).
        tx.batch_execute(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off; SET LOCAL jit = off",
        )
        .await
        .map_err(|e| self.err(e))?;
        let rows = tx
            .query(
                // The domains in id order, each probed for a workflow that keeps it
                // busy (index lookups: the LATERAL ... LIMIT 1 keeps PostgreSQL from
                // turning the test into a hash anti-join over every workflow, which
                // cost a scan of both tables per page).
                "SELECT d.id, coalesce(d.name, ''), coalesce(d.companyname, '') \
                 FROM cptm8domain d \
                 LEFT JOIN LATERAL ( \
                   SELECT true AS busy FROM orchestratorm8_workflow_domain wd \
                   JOIN orchestratorm8_workflow w ON w.id = wd.workflow_id \
                   WHERE wd.domain_id = d.id AND (w.ended_at IS NULL OR w.ended_at > $1) \
                   LIMIT 1) b ON true \
                 WHERE d.enabled AND d.id IS NOT NULL AND ($2::uuid IS NULL OR d.id > $2) \
                   AND b.busy IS NULL \
                   AND NOT EXISTS (SELECT 1 FROM orchestratorm8_domain_last_ended le \
                                   WHERE le.domain_id = d.id AND le.ended_at > $1) \
                 ORDER BY d.id LIMIT $3",
                &[&ended_before, &after, &sql_limit(limit)],
            )
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
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
            .query_one(
                "SELECT greatest( \
                   (SELECT max(ended_at) FROM orchestratorm8_workflow), \
                   (SELECT max(ended_at) FROM orchestratorm8_domain_last_ended))",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    async fn mark_requested(&self, ids: &[WorkflowId]) -> Result<u64, DbError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let conn = self.conn().await?;
        conn.execute(
            "UPDATE orchestratorm8_workflow SET requested = true WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(|e| self.err(e))
    }

    async fn prune_finished(
        &self,
        ended_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, DbError> {
        if limit == 0 {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let tx = self.leader_tx(&mut conn).await?;
        // One statement, one short transaction: the oldest finished workflows are
        // locked (skipping any being changed now: a result, a retry), their domains'
        // latest end is kept, then their rows go. The row lock re-checks `ended_at`,
        // so a workflow made active again meanwhile (retried) is left alone.
        let row = tx
            .query_one(
                "WITH victim AS ( \
                   SELECT id, ended_at FROM orchestratorm8_workflow \
                   WHERE ended_at IS NOT NULL AND ended_at < $1 \
                   ORDER BY ended_at LIMIT $2 \
                   FOR UPDATE SKIP LOCKED \
                 ), kept AS ( \
                   INSERT INTO orchestratorm8_domain_last_ended AS le (domain_id, ended_at) \
                   SELECT wd.domain_id, max(v.ended_at) FROM victim v \
                   JOIN orchestratorm8_workflow_domain wd ON wd.workflow_id = v.id \
                   GROUP BY wd.domain_id \
                   ON CONFLICT (domain_id) DO UPDATE \
                     SET ended_at = greatest(le.ended_at, excluded.ended_at) \
                 ), runs AS ( \
                   DELETE FROM orchestratorm8_stage_run s USING victim v \
                   WHERE s.workflow_id = v.id \
                 ), doms AS ( \
                   DELETE FROM orchestratorm8_workflow_domain d USING victim v \
                   WHERE d.workflow_id = v.id \
                 ), gone AS ( \
                   DELETE FROM orchestratorm8_workflow w USING victim v \
                   WHERE w.id = v.id RETURNING 1 \
                 ) \
                 SELECT count(*) FROM gone",
                &[&ended_before, &sql_limit(limit)],
            )
            .await
            .map_err(|e| self.err(e))?;
        // The ring's message keys (redeliveries come within minutes, retention is
        // days), as many at most, in a statement of their own.
        tx.execute(
            "DELETE FROM orchestratorm8_ring_message WHERE key IN ( \
               SELECT key FROM orchestratorm8_ring_message WHERE received_at < $1 \
               ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&ended_before, &sql_limit(limit)],
        )
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn in_flight_counts(&self, now: DateTime<Utc>) -> Result<HashMap<String, u64>, DbError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &format!("SELECT stage, count(*) FROM orchestratorm8_stage_run WHERE {BUSY} GROUP BY stage"),
                &[&now, &RUNNING, &DISPATCHED],
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
        // The workflow rows are locked too (shared, skipped when taken): a pause or
        // cancel holds its workflow's row until it commits, so a claim skips a
        // workflow being changed, and re-checks the status of one changed since the
        // statement's snapshot instead of claiming on the status it had before.
        let sql = format!(
            "WITH due AS ( \
                   SELECT s.workflow_id FROM orchestratorm8_stage_run s \
                   JOIN orchestratorm8_workflow w ON w.id = s.workflow_id \
                   WHERE s.stage = $1 AND {CLAIMABLE} \
                     AND w.status IN ('pending', 'running') \
                   ORDER BY s.not_before, s.workflow_id \
                   LIMIT $3 \
                   FOR UPDATE OF s SKIP LOCKED \
                   FOR SHARE OF w SKIP LOCKED \
                 ) \
                 UPDATE orchestratorm8_stage_run s SET {CLAIM} \
                 FROM due WHERE s.workflow_id = due.workflow_id AND s.stage = $1 \
                 RETURNING s.workflow_id, s.attempt, s.not_before"
        );
        self.claim(stage, owner, now, lease, limit, (&sql, &[]))
            .await
    }

    async fn claim_due_fair(
        &self,
        stage: &str,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
        weights: &BTreeMap<String, u32>,
    ) -> Result<Vec<ClaimedStage>, DbError> {
        let (companies, factors): (Vec<&str>, Vec<f64>) = weights
            .iter()
            .map(|(c, w)| (c.as_str(), f64::from((*w).max(1))))
            .unzip();
        // Ranked without locks (window functions cannot lock), then the picked rows
        // are locked and re-checked as in `claim_due`; a row taken meanwhile is
        // skipped (the claim returns fewer).
        let sql = format!(
            "WITH due AS ( \
                   SELECT s.workflow_id, s.not_before, d.companyname AS company, w.requested, \
                          row_number() OVER (PARTITION BY d.companyname \
                                             ORDER BY s.not_before, s.workflow_id) - 1 AS k \
                   FROM orchestratorm8_stage_run s \
                   JOIN orchestratorm8_workflow w ON w.id = s.workflow_id \
                   JOIN orchestratorm8_workflow_domain d \
                     ON d.workflow_id = s.workflow_id AND d.position = 0 \
                   WHERE s.stage = $1 AND {CLAIMABLE} \
                     AND w.status IN ('pending', 'running') \
                 ), busy AS ( \
                   SELECT d.companyname AS company, count(*) AS n \
                   FROM orchestratorm8_stage_run s \
                   JOIN orchestratorm8_workflow_domain d \
                     ON d.workflow_id = s.workflow_id AND d.position = 0 \
                   WHERE s.stage = $1 AND ({BUSY_FAIR}) \
                   GROUP BY d.companyname \
                 ), weight AS ( \
                   SELECT * FROM unnest($9::text[], $10::float8[]) AS t(company, w) \
                 ), pick AS ( \
                   SELECT due.workflow_id FROM due \
                   LEFT JOIN busy ON busy.company = due.company \
                   LEFT JOIN weight ON weight.company = due.company \
                   ORDER BY NOT due.requested, \
                            (coalesce(busy.n, 0) + due.k)::float8 / coalesce(weight.w, 1), \
                            due.not_before, due.workflow_id \
                   LIMIT $3 \
                 ), locked AS ( \
                   SELECT s.workflow_id FROM orchestratorm8_stage_run s \
                   JOIN pick ON pick.workflow_id = s.workflow_id \
                   JOIN orchestratorm8_workflow w ON w.id = s.workflow_id \
                   WHERE s.stage = $1 AND {CLAIMABLE} \
                     AND w.status IN ('pending', 'running') \
                   FOR UPDATE OF s SKIP LOCKED \
                   FOR SHARE OF w SKIP LOCKED \
                 ) \
                 UPDATE orchestratorm8_stage_run s SET {CLAIM} \
                 FROM locked WHERE s.workflow_id = locked.workflow_id AND s.stage = $1 \
                 RETURNING s.workflow_id, s.attempt, s.not_before"
        );
        let extra: [&(dyn ToSql + Sync); 3] = [&companies, &factors, &RUNNING];
        self.claim(stage, owner, now, lease, limit, (&sql, &extra))
            .await
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
        let tx = self.leader_tx(&mut conn).await?;
        self.by_key_lookups(&tx).await?;
        // First the workflows of the attempts still dispatched by `owner`, locked in
        // id order and updated in the same statement (a one-workflow transition locks
        // its workflow before its stages, so this order never deadlocks with it); then
        // the stages (found by primary key; the status is tested after the lookup).
        let confirmed = StageEvent::PublishConfirmed;
        tx.execute(
            "WITH c AS ( \
               SELECT DISTINCT k.wf FROM unnest($1::uuid[], $2::text[], $3::int[]) \
                 AS k(wf, stage, attempt) \
               JOIN orchestratorm8_stage_run s ON s.workflow_id = k.wf AND s.stage = k.stage \
               WHERE s.claim_owner = $5 AND s.attempt = k.attempt AND s.status = ANY($6) \
             ), l AS ( \
               SELECT w.id FROM orchestratorm8_workflow w WHERE w.id IN (SELECT wf FROM c) \
               ORDER BY w.id FOR UPDATE \
             ) \
             UPDATE orchestratorm8_workflow w SET updated_at = $4, \
               status = CASE WHEN w.status = 'pending' THEN 'running' ELSE w.status END \
             FROM l WHERE w.id = l.id",
            &[
                &ids,
                &stages,
                &attempts,
                &now,
                &owner,
                &confirmed.from_strs(),
            ],
        )
        .await
        .map_err(|e| self.err(e))?;
        let n = tx
            .execute(
                "UPDATE orchestratorm8_stage_run s SET status = $7, \
                   deadline = $5, claim_owner = NULL, \
                   claim_until = NULL, updated_at = $4, started_at = $4, finished_at = NULL \
                 FROM unnest($1::uuid[], $2::text[], $3::int[]) AS k(wf, stage, attempt) \
                 WHERE s.workflow_id = k.wf AND s.stage = k.stage \
                   AND s.claim_owner = $6 AND s.attempt = k.attempt AND s.status = ANY($8)",
                &[
                    &ids,
                    &stages,
                    &attempts,
                    &now,
                    &deadline,
                    &owner,
                    &confirmed.to().as_str(),
                    &confirmed.from_strs(),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(n)
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
        let tx = self.leader_tx(&mut conn).await?;
        self.by_key_lookups(&tx).await?;
        // Their workflows locked first, in id order.
        tx.execute(
            "SELECT 1 FROM (SELECT id FROM orchestratorm8_workflow WHERE id = ANY($1) \
             ORDER BY id FOR UPDATE) locked",
            &[&ids],
        )
        .await
        .map_err(|e| self.err(e))?;
        let n = tx
            .execute(
                "UPDATE orchestratorm8_stage_run s SET status = $6, attempt = s.attempt - 1, \
                   claim_owner = NULL, claim_until = NULL, not_before = $5 \
                 FROM unnest($1::uuid[], $2::text[], $3::int[]) AS k(wf, stage, attempt) \
                 WHERE s.workflow_id = k.wf AND s.stage = k.stage \
                   AND s.claim_owner = $4 AND s.attempt = k.attempt AND s.status = ANY($7)",
                &[
                    &ids,
                    &stages,
                    &attempts,
                    &owner,
                    &not_before,
                    &StageEvent::Release.to().as_str(),
                    &StageEvent::Release.from_strs(),
                ],
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
        let id = key.workflow_id;
        let mut conn = self.conn().await?;
        let Some((tx, attempt)) = self.begin_guarded(&mut conn, key, false).await? else {
            return Ok(Transition::Stale);
        };
        let complete = StageEvent::Complete;
        let n = tx
            .execute(
                &format!(
                    "UPDATE orchestratorm8_stage_run SET status = $5, \
                       detail = coalesce($4, detail), {SETTLE} \
                     WHERE workflow_id = $1 AND stage = $2 AND status = ANY($7) AND attempt = $3"
                ),
                &[
                    &id,
                    &key.stage,
                    &attempt,
                    &detail,
                    &complete.to().as_str(),
                    &now,
                    &complete.from_strs(),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Ok(Transition::Stale);
        }
        self.promote_due(&tx, id, now).await?;
        // Completed when every stage of the plan is.
        let done: bool = tx
            .query_one(
                "SELECT jsonb_array_length(w.plan) \
                 = (SELECT count(*) FROM orchestratorm8_stage_run \
                    WHERE workflow_id = $1 AND status = 'completed') \
                 FROM orchestratorm8_workflow w WHERE w.id = $1",
                &[&id],
            )
            .await
            .map_err(|e| self.err(e))?
            .get(0);
        if done {
            self.finish(&tx, id, WorkflowStatus::Completed, now).await?;
            // Its notification, in the same transaction (the outbox).
            let domains = self.domain_names(&tx, id).await?;
            let event = OutboxEvent::WorkflowCompleted {
                workflow_id: id,
                domains,
            };
            self.outbox_insert(&tx, &event, now).await?;
        } else {
            self.touch_started(&tx, id, now).await?;
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
        self.fail(key, detail, retry_at, now, false).await
    }

    async fn time_out(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        self.fail(key, detail, retry_at, now, true).await
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
        let status = filter.status.map(|s| s.as_str());
        let kind = filter.kind.map(|k| k.as_str());
        let after_at = filter.after.map(|c| c.created_at);
        let after_id = filter.after.map(|c| c.id);
        let limit = sql_limit(filter.limit.unwrap_or(DEFAULT_LIST_LIMIT));
        self.read_views(
            &format!(
                "SELECT {HEAD} FROM orchestratorm8_workflow w WHERE {LIST_FILTER} \
                 ORDER BY w.created_at DESC, w.id DESC LIMIT $7"
            ),
            &[
                &status,
                &kind,
                &filter.domain,
                &filter.company,
                &after_at,
                &after_id,
                &limit,
            ],
        )
        .await
    }

    async fn get(&self, id: WorkflowId) -> Result<WorkflowView, DbError> {
        self.read_views(&one_head(), &[&id])
            .await?
            .pop()
            .ok_or_else(|| not_found(id))
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

    async fn retry(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        use WorkflowStatus::*;
        self.change_workflow(id, "retry", &[Failed, Cancelled], now)
            .await
    }

    async fn changed_since(
        &self,
        since: DateTime<Utc>,
        after: Option<WorkflowId>,
        limit: usize,
    ) -> Result<Vec<WorkflowView>, DbError> {
        // The active workflows (partial index on id) and those that ended since
        // (index on ended_at: a terminal workflow's last change is its end).
        self.read_views(
            &format!(
                "SELECT {HEAD} FROM ( \
                   SELECT * FROM orchestratorm8_workflow \
                   WHERE ended_at IS NULL AND updated_at >= $1 \
                   UNION ALL \
                   SELECT * FROM orchestratorm8_workflow WHERE ended_at >= $1) w \
                 WHERE $3::uuid IS NULL OR (updated_at, id) > ($1, $3) \
                 ORDER BY updated_at, id LIMIT $2"
            ),
            &[&since, &sql_limit(limit), &after],
        )
        .await
    }
}

impl PgStore {
    /// Runs claim statement `sql` of `stage` as a leader-only write: `$1` to `$8` are
    /// the stage, `now`, `limit`, `owner`, the lease's end, the statuses of
    /// [`claimable`], [`DISPATCHED`] and those a claim takes a due stage from, then
    /// `extra` (its `RETURNING`: `workflow_id, attempt, not_before`). Returns the
    /// attempts claimed, oldest first, with their domains.
    async fn claim(
        &self,
        stage: &str,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
        (sql, extra): (&str, &[&(dyn ToSql + Sync)]),
    ) -> Result<Vec<ClaimedStage>, DbError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (until, limit) = (plus(now, lease), sql_limit(limit));
        let (claimable, due) = (claimable(), StageEvent::Claim.from_strs());
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &stage,
            &now,
            &limit,
            &owner,
            &until,
            &claimable,
            &DISPATCHED,
            &due,
        ];
        params.extend_from_slice(extra);
        let mut conn = self.conn().await?;
        let tx = self.leader_tx(&mut conn).await?;
        let rows = tx.query(sql, &params).await.map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        // Oldest first, with their workflows' domains.
        let mut claimed: Vec<(DateTime<Utc>, Uuid, u32)> = rows
            .iter()
            .map(|r| (r.get(2), r.get(0), attempt_of(r.get(1))))
            .collect();
        claimed.sort();
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.1).collect();
        let mut domains = self.domains_of(&*conn, &ids).await?;
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

    /// The domains of the workflows `ids`, each workflow's in order.
    pub(super) async fn domains_of(
        &self,
        client: &(impl GenericClient + Sync),
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<DomainRef>>, DbError> {
        let mut domains: HashMap<Uuid, Vec<DomainRef>> = HashMap::new();
        if ids.is_empty() {
            return Ok(domains);
        }
        for r in client
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
        Ok(domains)
    }
}
