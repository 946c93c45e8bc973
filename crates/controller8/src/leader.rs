//! Leader election (`LeaderElection.enabled`): only the replica holding the database's
//! leader lock schedules and publishes.
//!
//! - The leader verifies the lock every `check_interval` and steps down at once when it
//!   is lost, or when a check gets no answer within [`check_timeout`] (its lock session
//!   is then kept: while it lives nobody else can lead, and when it has ended the lock
//!   has gone with it).
//! - A standby tries to take the lock at the same pace, and leads as soon as it has it.
//!   Taking the lock increments the leader term in the database (fencing,
//!   docs/ENGINE.md): every write only a leader may make carries the term of its
//!   replica and fails, changing nothing, once a newer term exists. So a previous
//!   leader that has not yet noticed its lock is gone (until its next check, plus that
//!   check's time-out) cannot act any more: the new leader need not wait for it. What
//!   it may still do in that window is publish jobs it claimed before (at-least-once:
//!   they are published again after their claim lease, and carry the same identity).
//! - After a database outage (every session ended) the leader has stepped down at its
//!   first check; the first replica whose attempt succeeds once the server answers again
//!   leads.
//!
//! The role is published on a watch channel for the engine, `/ready` and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use db8::LeaderLock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::role::{LockCheck, Role};

/// How long one check may take before it counts as failed: `check_interval`, at least
/// 2 s.
pub(crate) fn check_timeout(check_interval: Duration) -> Duration {
    check_interval.max(Duration::from_secs(2))
}

/// The shortest `check_interval` used (a zero in the file would spin).
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Drives the role from the lock.
pub(crate) struct Leadership {
    lock: Arc<dyn LeaderLock>,
    role: watch::Sender<Role>,
    metrics: Arc<Metrics>,
    settings: watch::Receiver<Arc<config8::Settings>>,
}

impl Leadership {
    pub(crate) fn new(
        lock: Arc<dyn LeaderLock>,
        role: watch::Sender<Role>,
        metrics: Arc<Metrics>,
        settings: watch::Receiver<Arc<config8::Settings>>,
    ) -> Self {
        Leadership {
            lock,
            role,
            metrics,
            settings,
        }
    }

    /// `LeaderElection.check_interval` now (read live).
    fn interval(&self) -> Duration {
        self.settings
            .borrow()
            .leader_election
            .check_interval
            .max(MIN_CHECK_INTERVAL)
    }

    fn set(&self, role: Role) {
        // Only a real change notifies the watchers (the loops wake on role changes).
        let old = *self.role.borrow();
        self.role
            .send_if_modified(|r| std::mem::replace(r, role) != role);
        self.metrics.set_role(role);
        if old != role {
            match role {
                Role::Leader => tracing::info!("this replica is now the leader"),
                Role::Standby => tracing::warn!("this replica is now a standby"),
                Role::Candidate => {
                    tracing::warn!("this replica is now a candidate (the leader lock is unknown)")
                }
            }
        }
    }

    /// One check, bounded by [`check_timeout`]: the leader verifies it holds the lock; a
    /// candidate or standby tries to take it (which starts a new leader term). The role
    /// after it follows from what it found ([`LockCheck::role`], the table in
    /// `role.rs`).
    pub(crate) async fn step(&self) -> Role {
        let interval = self.interval();
        let limit = check_timeout(interval);
        let current = *self.role.borrow();
        let check = async {
            match current {
                Role::Leader => self.lock.is_held().await,
                Role::Candidate | Role::Standby => self.lock.try_acquire().await,
            }
        };
        let found = match tokio::time::timeout(limit, check).await {
            Ok(Ok(true)) => LockCheck::Ours,
            Ok(Ok(false)) => LockCheck::NotOurs,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, role = current.as_str(), "leader lock check failed");
                LockCheck::NoAnswer
            }
            Err(_) => {
                tracing::debug!(timeout = ?limit, role = current.as_str(), "leader lock check timed out");
                LockCheck::NoAnswer
            }
        };
        if current == Role::Leader && found != LockCheck::Ours {
            tracing::warn!(found = ?found, "leader lock lost or unverifiable; stepping down");
        }
        let next = found.role();
        self.set(next);
        next
    }

    /// Steps down, then gives the lock up (shutdown): the role changes first, so that
    /// the engine stops before another replica can take the lock.
    pub(crate) async fn resign(&self) {
        let was = *self.role.borrow();
        self.role
            .send_if_modified(|r| std::mem::replace(r, Role::Standby) != Role::Standby);
        self.metrics.set_role(Role::Standby);
        if was == Role::Leader {
            if let Err(e) = self.lock.release().await {
                tracing::warn!(error = %e, "cannot release the leader lock; it ends with the database session");
            } else {
                tracing::info!("leader lock released");
            }
        }
    }

    /// Checks every `LeaderElection.check_interval` (read live) until shutdown, then
    /// resigns.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval()) => {}
                () = shutdown.cancelled() => break,
            }
            self.step().await;
        }
        self.resign().await;
    }
}
#[cfg(test)]
mod tests {
    //! Leadership on the in-memory lock in tokio's paused time: leading at once with a
    //! new term, never two leaders acting (fencing), stepping down and leading again
    //! around a database outage; and, with the whole controller, what a batch caught by
    //! the outage becomes.

    use std::sync::Arc;
    use std::time::Duration;

    use amqp8::memory::MemoryBroker;
    use config8::Settings;
    use db8::{DbError, LeaderLock, MemoryStore, WorkflowRepository};
    use model8::{StageStatus, WorkflowView};
    use tokio::sync::{oneshot, watch};
    use tokio::task::JoinHandle;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::{Leadership, check_timeout};
    use crate::controller::{Controller, Deps};
    use crate::error::ControllerError;
    use crate::metrics::Metrics;
    use crate::role::{Role, RoleWatch};
    use crate::testkit::{TokioClock, add_domain, chain, confirmed, declare, rk};
    use crate::tuning::Tuning;

    const INTERVAL: Duration = Duration::from_secs(1);

    /// Waits (virtual time) until `f` holds, at most `limit`.
    async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One replica's leadership loop on `lock`.
    struct Replica {
        role: RoleWatch,
        stop: CancellationToken,
        task: JoinHandle<()>,
        /// Its store, fenced by its term.
        fenced: MemoryStore,
    }

    impl Replica {
        fn start(lock: &MemoryStore) -> Replica {
            let (role_tx, role) = watch::channel(Role::Standby);
            let (_settings_tx, settings) = watch::channel(Arc::new(Settings::default()));
            let stop = CancellationToken::new();
            let leadership = Leadership::new(
                Arc::new(lock.clone()),
                role_tx,
                Arc::new(Metrics::new()),
                settings,
            );
            let task = tokio::spawn(leadership.run(stop.clone()));
            Replica {
                role,
                stop,
                task,
                fenced: lock.fenced(lock.term()),
            }
        }

        fn leads(&self) -> bool {
            *self.role.borrow() == Role::Leader
        }

        /// Whether a leader-only write of this replica succeeds now (`false`: refused
        /// for its term).
        async fn acts(&self) -> bool {
            match self.fenced.prune_finished(chrono::Utc::now(), 1).await {
                Ok(_) => true,
                Err(DbError::StaleTerm { .. }) => false,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }

        async fn stop(self) {
            self.stop.cancel();
            self.task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_takes_the_lock_leads_at_once_with_a_new_term() {
        let store = MemoryStore::new();
        let (l, role, _) = leadership(&store);
        assert_eq!(store.term().get(), None);
        assert_eq!(l.step().await, Role::Leader, "took the lock, leads");
        assert_eq!(*role.borrow(), Role::Leader);
        let first = store.term().get().expect("a term");
        // Another replica cannot take it meanwhile.
        assert!(!LeaderLock::try_acquire(&store.handle()).await.unwrap());
        // Lost (the session ended): steps down, and takes it again with a newer term.
        store.revoke_leadership();
        assert_eq!(l.step().await, Role::Standby);
        assert_eq!(store.term().get(), None, "a lost lock holds no term");
        assert_eq!(l.step().await, Role::Leader);
        assert!(store.term().get().expect("a term") > first);
        l.resign().await;
        assert_eq!(store.term().get(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_check_interval_applies_live_and_is_reported_live() {
        let store = MemoryStore::new();
        let (role_tx, role) = watch::channel(Role::Standby);
        let old = Settings::default();
        let (settings_tx, settings) = watch::channel(Arc::new(old.clone()));
        let l = Leadership::new(
            Arc::new(store.clone()),
            role_tx,
            Arc::new(Metrics::new()),
            settings,
        );
        let mut new = old.clone();
        new.leader_election.check_interval = Duration::from_secs(5);
        let r = config8::diff(&old, &new);
        assert_eq!(r.live, ["LeaderElection.check_interval"]);
        assert!(!r.needs_restart(), "{r:?}");
        assert_ne!(l.interval(), Duration::from_secs(5));
        settings_tx.send_replace(Arc::new(new));
        // The running loop reads the interval at each check: the new one, at once.
        assert_eq!(l.interval(), Duration::from_secs(5));
        assert_eq!(l.step().await, Role::Leader);
        assert_eq!(*role.borrow(), Role::Leader);
    }

    /// A leadership over `store` with the default settings.
    fn leadership(store: &MemoryStore) -> (Leadership, RoleWatch, Arc<Metrics>) {
        let (role_tx, role) = watch::channel(Role::Standby);
        let (_settings_tx, settings) = watch::channel(Arc::new(Settings::default()));
        let metrics = Arc::new(Metrics::new());
        let l = Leadership::new(Arc::new(store.clone()), role_tx, metrics.clone(), settings);
        (l, role, metrics)
    }

    /// Steps until this replica leads, failing after a few intervals.
    async fn lead(l: &Leadership) {
        let started = Instant::now();
        while l.step().await != Role::Leader {
            assert!(started.elapsed() < 3 * INTERVAL, "never leads");
            tokio::time::sleep(INTERVAL).await;
        }
    }

    /// A lock whose checks never answer (a database that accepts and then hangs),
    /// after answering `held` to the first `answers` calls.
    struct Hanging {
        answers: std::sync::atomic::AtomicU32,
    }

    #[async_trait::async_trait]
    impl LeaderLock for Hanging {
        async fn try_acquire(&self) -> Result<bool, DbError> {
            self.answer().await
        }
        async fn is_held(&self) -> Result<bool, DbError> {
            self.answer().await
        }
        async fn release(&self) -> Result<(), DbError> {
            Ok(())
        }
    }

    impl Hanging {
        async fn answer(&self) -> Result<bool, DbError> {
            use std::sync::atomic::Ordering;
            let left = self.answers.load(Ordering::SeqCst);
            if left == 0 {
                return std::future::pending().await;
            }
            self.answers.store(left - 1, Ordering::SeqCst);
            Ok(true)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_without_an_answer_makes_a_candidate_after_the_check_time_out() {
        let (role_tx, role) = watch::channel(Role::Candidate);
        let (_settings_tx, settings) = watch::channel(Arc::new(Settings::default()));
        let lock = Arc::new(Hanging { answers: 1.into() });
        let l = Leadership::new(lock, role_tx, Arc::new(Metrics::new()), settings);
        assert_eq!(l.step().await, Role::Leader, "the first attempt answers");
        let started = Instant::now();
        assert_eq!(l.step().await, Role::Candidate, "the leader's check hangs");
        assert_eq!(started.elapsed(), check_timeout(l.interval()));
        assert_eq!(*role.borrow(), Role::Candidate);
        assert_eq!(
            l.step().await,
            Role::Candidate,
            "and so does the next attempt"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_follows_the_lock() {
        let store = MemoryStore::new();
        let other = store.handle();
        let (l, rx, metrics) = leadership(&store);
        assert!(
            other.try_acquire().await.unwrap(),
            "another replica holds the lock"
        );
        assert_eq!(l.step().await, Role::Standby);
        LeaderLock::release(&other).await.unwrap();
        lead(&l).await;
        assert_eq!(*rx.borrow(), Role::Leader);
        // A check that changes nothing does not wake the role's watchers.
        let mut watcher = rx.clone();
        watcher.borrow_and_update();
        assert_eq!(l.step().await, Role::Leader);
        assert!(!watcher.has_changed().unwrap());
        assert!(
            metrics
                .encode(&Default::default())
                .unwrap()
                .contains("orchestratorm8_leader 1")
        );
        // The session ends (e.g. a database restart): the leader steps down at its next
        // check.
        store.revoke_leadership();
        assert_eq!(l.step().await, Role::Standby);
        assert!(other.try_acquire().await.unwrap());
        assert_eq!(l.step().await, Role::Standby);
        // A database outage ends the lock's session: the leader finds its lock gone
        // (a standby), then its attempts to take it get no answer: a candidate (the
        // lock's state unknown) as long as the database does not answer.
        LeaderLock::release(&other).await.unwrap();
        lead(&l).await;
        store.set_available(false);
        assert_eq!(l.step().await, Role::Standby);
        assert_eq!(l.step().await, Role::Candidate);
        assert_eq!(l.step().await, Role::Candidate);
        assert!(
            metrics
                .encode(&Default::default())
                .unwrap()
                .contains("orchestratorm8_leader 0")
        );
        store.set_available(true);
        lead(&l).await;
        l.resign().await;
        assert_eq!(*rx.borrow(), Role::Standby);
        assert!(
            other.try_acquire().await.unwrap(),
            "resigning released the lock"
        );
    }

    /// Samples both roles every 10 ms of virtual time for `how_long`; panics if both
    /// lead at once.
    async fn never_both(a: &Replica, b: &Replica, how_long: Duration) {
        let end = Instant::now() + how_long;
        while Instant::now() < end {
            assert!(
                !(a.leads() && b.leads()),
                "two leaders at {:?}",
                Instant::now()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Samples every 10 ms of virtual time for `how_long`: panics if both replicas'
    /// leader-only writes succeed at once.
    async fn never_both_act(a: &Replica, b: &Replica, how_long: Duration) {
        let end = Instant::now() + how_long;
        while Instant::now() < end {
            let (x, y) = (a.acts().await, b.acts().await);
            assert!(!(x && y), "two leaders acting at {:?}", Instant::now());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_lock_session_ends_the_old_leader_cannot_act_once_the_new_one_leads() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        // a checks at t0 + 1 s, 2 s, ...: it takes the lock and leads from 1 s.
        let a = Replica::start(&store);
        // b checks half an interval later (t0 + 6.5 s, 7.5 s, ...).
        tokio::time::sleep_until(t0 + Duration::from_millis(5_500)).await;
        assert!(a.leads());
        let b = Replica::start(&store.handle());
        tokio::time::sleep_until(t0 + Duration::from_millis(8_100)).await;
        assert!(a.leads() && !b.leads());
        assert!(a.acts().await && !b.acts().await);
        // Just after a's check at 8 s its session ends (pg_terminate_backend): b takes
        // the free lock at 8.5 s and leads at once, half a second before a's next check
        // notices. Meanwhile a still believes it leads, but its writes fail.
        store.revoke_leadership();
        eventually("b leads", Duration::from_secs(1), || b.leads()).await;
        assert!(a.leads(), "a has not noticed yet");
        assert!(!a.acts().await, "the old leader's write is refused");
        assert!(b.acts().await);
        never_both_act(&a, &b, Duration::from_secs(10)).await;
        assert!(b.leads() && !a.leads(), "b leads, a follows");
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn through_a_database_outage_the_leader_steps_down_and_one_replica_leads_again_after_it()
    {
        let store = MemoryStore::new();
        let a = Replica::start(&store);
        eventually("a leads", Duration::from_secs(10), || a.leads()).await;
        let b = Replica::start(&store.handle());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(a.leads() && !b.leads());

        store.set_available(false);
        // The first check after the outage began finds the lock gone.
        eventually("a steps down", INTERVAL + Duration::from_millis(50), || {
            !a.leads()
        })
        .await;
        let down = Instant::now();
        while down.elapsed() < Duration::from_secs(10) {
            assert!(
                !a.leads() && !b.leads(),
                "nobody leads while the database is away"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.set_available(true);
        // Back: the first attempt takes the lock, and its taker leads after the grace.
        let back = Instant::now();
        let both = async {
            while !(a.leads() || b.leads()) {
                assert!(!(a.leads() && b.leads()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(3 * INTERVAL, both)
            .await
            .expect("a leader again promptly");
        eprintln!(
            "leader again {:?} after the database came back",
            back.elapsed()
        );
        never_both(&a, &b, Duration::from_secs(10)).await;
        assert!(a.leads() != b.leads());
        a.stop().await;
        b.stop().await;
    }

    // ----- the controller around an outage ---------------------------------------

    struct Running {
        role: RoleWatch,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), ControllerError>>,
    }

    /// A controller with leader election over `store` and `broker`; stage `a` has a one
    /// hour time-out so that nothing is retried during a test.
    async fn start(store: &MemoryStore, broker: &MemoryBroker) -> Running {
        let mut settings: Settings = chain();
        for s in &mut settings.workflow.stages {
            s.timeout = Duration::from_secs(3600);
        }
        declare(broker, &settings).await;
        let (_settings_tx, settings_rx) = watch::channel(Arc::new(settings));
        let controller = Controller::with_tuning(
            Deps {
                domains: Arc::new(store.clone()),
                workflows: Arc::new(store.fenced(store.term())),
                outbox: Arc::new(store.clone()),
                broker: broker.as_dyn(),
                leader: Some(Arc::new(store.clone())),
                changes: Arc::new(store.clone()),
                clock: Arc::new(TokioClock::new()),
                settings: settings_rx,
                metrics: Arc::new(Metrics::new()),
                ring: None,
            },
            Tuning::default(),
        )
        .unwrap();
        let role = controller.role();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(controller.run(async move {
            let _ = stopped.await;
        }));
        let r = Running { role, stop, task };
        eventually("the controller leads", Duration::from_secs(10), || {
            *r.role.borrow() == Role::Leader
        })
        .await;
        r
    }

    impl Running {
        fn leads(&self) -> bool {
            *self.role.borrow() == Role::Leader
        }

        async fn stop(self) {
            let _ = self.stop.send(());
            self.task.await.unwrap().unwrap();
        }
    }

    async fn only_workflow(store: &MemoryStore) -> WorkflowView {
        let mut all = WorkflowRepository::list(store, &Default::default())
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_published_during_a_database_outage_is_recorded_when_it_returns_not_published_again()
     {
        let store = MemoryStore::new();
        let broker = MemoryBroker::new();
        let r = start(&store, &broker).await;
        // The broker holds the publish (an alarm) while the database goes away.
        broker.set_outage_wait(Duration::from_secs(30));
        broker.set_blocked(true);
        add_domain(&store, "a.example.com").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.set_available(false);
        eventually("steps down", INTERVAL * 2, || !r.leads()).await;
        // The job goes out; it cannot be recorded as running (the database is away).
        broker.set_blocked(false);
        eventually("published", Duration::from_secs(5), || {
            confirmed(&broker, &rk("a")) == 1
        })
        .await;
        tokio::time::sleep(Duration::from_secs(10)).await;

        store.set_available(true);
        let back = Instant::now();
        eventually("leads again", 3 * INTERVAL, || r.leads()).await;
        // Recorded at once, not after the 60 s claim lease.
        let limit = Duration::from_secs(10);
        loop {
            let wf = only_workflow(&store).await;
            if wf.stages[0].status == StageStatus::Running {
                assert_eq!(wf.stages[0].attempt, 1);
                break;
            }
            assert!(back.elapsed() < limit, "not recorded: {wf:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And never published a second time (past the lease).
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(confirmed(&broker, &rk("a")), 1);
        let wf = only_workflow(&store).await;
        assert_eq!(
            (wf.stages[0].status, wf.stages[0].attempt),
            (StageStatus::Running, 1)
        );
        r.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_claimed_before_a_database_outage_is_published_as_soon_as_it_returns() {
        let store = MemoryStore::new();
        let broker = MemoryBroker::new();
        let r = start(&store, &broker).await;
        // The broker is away too: the claimed batch cannot be published, and it cannot
        // be given back either while the database is away.
        broker.set_outage_wait(Duration::from_secs(5));
        broker.set_outage(true);
        add_domain(&store, "a.example.com").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.set_available(false);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(confirmed(&broker, &rk("a")), 0);

        store.set_available(true);
        broker.set_outage(false);
        let back = Instant::now();
        // Published at once, not after the 60 s claim lease.
        eventually(
            "published after the outage",
            2 * INTERVAL + Duration::from_secs(5),
            || confirmed(&broker, &rk("a")) == 1,
        )
        .await;
        eprintln!(
            "published {:?} after the database came back",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(confirmed(&broker, &rk("a")), 1, "published once");
        r.stop().await;
    }
}
