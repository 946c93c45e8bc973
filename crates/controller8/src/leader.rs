//! Leader election (`LeaderElection.enabled`): only the replica holding the database's
//! leader lock schedules and publishes.
//!
//! - The leader verifies the lock every `check_interval` and steps down at once when it
//!   is lost, or when a check gets no answer within [`check_timeout`] (its lock session
//!   is then kept: while it lives nobody else can lead, and when it has ended the lock
//!   has gone with it).
//! - A standby tries to take the lock at the same pace. Having taken it, it does not
//!   lead at once: it waits [`takeover_grace`], the longest a previous leader can take
//!   to notice that its lock is gone (its next check, plus that check's time-out), and
//!   verifies the lock again. So the previous leader has stopped taking new work before
//!   the new one starts: two replicas never lead at once (unless one of them is frozen
//!   longer than that; the claims on stage attempts still keep it from doing anything
//!   twice, docs/DATABASE.md *Concurrency*).
//! - After a database outage (every session ended) the leader has stepped down at its
//!   first check; the first replica whose attempt succeeds once the server answers again
//!   leads after the grace.
//!
//! The role is published on a watch channel for the engine, `/ready` and `/metrics`.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use db8::LeaderLock;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::role::Role;

/// How long one check may take before it counts as failed: `check_interval`, at least
/// 2 s.
pub(crate) fn check_timeout(check_interval: Duration) -> Duration {
    check_interval.max(Duration::from_secs(2))
}

/// How long a replica that took the lock waits before it leads: one `check_interval`
/// (the previous leader's next check) plus [`check_timeout`] (that check not
/// answering). 3 s with the default 1 s interval.
pub(crate) fn takeover_grace(check_interval: Duration) -> Duration {
    check_interval + check_timeout(check_interval)
}

/// The shortest `check_interval` used (a zero in the file would spin).
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Drives the role from the lock.
pub(crate) struct Leadership {
    lock: Arc<dyn LeaderLock>,
    role: watch::Sender<Role>,
    metrics: Arc<Metrics>,
    settings: watch::Receiver<Arc<config8::Settings>>,
    /// While a standby holds the lock but waits out the grace: since when.
    acquired: Mutex<Option<Instant>>,
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
            acquired: Mutex::new(None),
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
        let mut old = role;
        self.role.send_if_modified(|r| {
            old = *r;
            *r = role;
            old != role
        });
        self.metrics.set_role(role);
        if old != role {
            match role {
                Role::Leader => tracing::info!("this replica is now the leader"),
                Role::Standby => tracing::warn!("this replica is now a standby"),
            }
        }
    }

    /// One check, bounded by [`check_timeout`]: the leader verifies it holds the lock; a
    /// standby tries to take it, or, holding it, verifies it and leads once the
    /// [`takeover_grace`] has passed. A check that fails or gets no answer makes this
    /// replica a standby (and restarts the grace of one waiting to lead).
    pub(crate) async fn step(&self) -> Role {
        let interval = self.interval();
        let limit = check_timeout(interval);
        let current = *self.role.borrow();
        let waiting_since = *self.acquired.lock();
        let check = async {
            match (current, waiting_since) {
                (Role::Leader, _) | (Role::Standby, Some(_)) => self.lock.is_held().await,
                (Role::Standby, None) => self.lock.try_acquire().await,
            }
        };
        let outcome = tokio::time::timeout(limit, check).await;
        let next = match (current, outcome) {
            (Role::Leader, Ok(Ok(true))) => Role::Leader,
            (Role::Leader, Ok(Ok(false))) => {
                tracing::warn!("leader lock lost (database session ended); stepping down");
                Role::Standby
            }
            (Role::Leader, Ok(Err(e))) => {
                tracing::warn!(error = %e, "cannot verify the leader lock; stepping down");
                Role::Standby
            }
            (Role::Leader, Err(_)) => {
                tracing::warn!(timeout = ?limit, "leader lock check timed out; stepping down");
                Role::Standby
            }
            (Role::Standby, Ok(Ok(true))) => {
                let grace = takeover_grace(interval);
                let now = Instant::now();
                match waiting_since {
                    Some(since) if now.duration_since(since) >= grace => {
                        *self.acquired.lock() = None;
                        Role::Leader
                    }
                    Some(_) => Role::Standby,
                    None if grace.is_zero() => Role::Leader,
                    None => {
                        tracing::info!(
                            ?grace,
                            "leader lock taken; leading once a previous leader must have stepped down"
                        );
                        *self.acquired.lock() = Some(now);
                        Role::Standby
                    }
                }
            }
            (Role::Standby, Ok(Ok(false))) => {
                if waiting_since.is_some() {
                    tracing::warn!("leader lock lost while waiting to lead");
                }
                *self.acquired.lock() = None;
                Role::Standby
            }
            (Role::Standby, Ok(Err(e))) => {
                tracing::debug!(error = %e, "cannot try the leader lock");
                *self.acquired.lock() = None;
                Role::Standby
            }
            (Role::Standby, Err(_)) => {
                tracing::debug!(timeout = ?limit, "leader lock attempt timed out");
                *self.acquired.lock() = None;
                Role::Standby
            }
        };
        self.set(next);
        next
    }

    /// Steps down, then gives the lock up (shutdown): the role changes first, so that
    /// the engine stops before another replica can take the lock.
    pub(crate) async fn resign(&self) {
        let was = *self.role.borrow();
        let waiting = self.acquired.lock().take().is_some();
        self.role
            .send_if_modified(|r| std::mem::replace(r, Role::Standby) != Role::Standby);
        self.metrics.set_role(Role::Standby);
        if was == Role::Leader || waiting {
            if let Err(e) = self.lock.release().await {
                tracing::warn!(error = %e, "cannot release the leader lock; it ends with the database session");
            } else {
                tracing::info!("leader lock released");
            }
        }
    }

    /// Checks every `LeaderElection.check_interval` (read live) until shutdown, then
    /// resigns.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval()) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            self.step().await;
        }
        self.resign().await;
    }
}
#[cfg(test)]
mod tests {
    //! Leadership on the in-memory lock in tokio's paused time: the grace before
    //! leading, never two leaders, stepping down and leading again around a database
    //! outage; and, with the whole controller, what a batch caught by the outage
    //! becomes.

    use std::sync::Arc;
    use std::time::Duration;

    use amqp8::memory::MemoryBroker;
    use config8::Settings;
    use db8::{LeaderLock, MemoryStore, WorkflowRepository};
    use model8::{StageStatus, WorkflowView};
    use tokio::sync::{oneshot, watch};
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use super::{Leadership, takeover_grace};
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
        stop: watch::Sender<bool>,
        task: JoinHandle<()>,
    }

    impl Replica {
        fn start(lock: &MemoryStore) -> Replica {
            let (role_tx, role) = watch::channel(Role::Standby);
            let (_settings_tx, settings) = watch::channel(Arc::new(Settings::default()));
            let (stop, stopped) = watch::channel(false);
            let leadership = Leadership::new(
                Arc::new(lock.clone()),
                role_tx,
                Arc::new(Metrics::new()),
                settings,
            );
            let task = tokio::spawn(leadership.run(stopped));
            Replica { role, stop, task }
        }

        fn leads(&self) -> bool {
            *self.role.borrow() == Role::Leader
        }

        async fn stop(self) {
            self.stop.send_replace(true);
            self.task.await.unwrap();
        }
    }

    #[test]
    fn the_grace_covers_the_previous_leaders_next_check_and_its_time_out() {
        assert_eq!(
            takeover_grace(Duration::from_secs(1)),
            Duration::from_secs(3)
        );
        assert_eq!(
            takeover_grace(Duration::from_secs(5)),
            Duration::from_secs(10)
        );
        assert_eq!(
            takeover_grace(Duration::from_millis(100)),
            Duration::from_millis(2_100)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_takes_the_lock_leads_only_after_the_grace() {
        let store = MemoryStore::new();
        let (l, role, _) = leadership(&store);
        let started = Instant::now();
        assert_eq!(l.step().await, Role::Standby, "took the lock, waits");
        assert!(LeaderLock::is_held(&store).await.unwrap());
        // Another replica cannot take it meanwhile.
        assert!(!LeaderLock::try_acquire(&store.handle()).await.unwrap());
        while started.elapsed() < takeover_grace(INTERVAL) {
            assert_eq!(*role.borrow(), Role::Standby);
            tokio::time::sleep(INTERVAL).await;
            l.step().await;
        }
        assert_eq!(*role.borrow(), Role::Leader);
        // Lost during the grace: it starts again from the beginning.
        l.resign().await;
        assert_eq!(l.step().await, Role::Standby);
        store.revoke_leadership();
        tokio::time::sleep(takeover_grace(INTERVAL)).await;
        assert_eq!(l.step().await, Role::Standby, "lost while waiting");
        assert_eq!(l.step().await, Role::Standby, "taken again, waits again");
        tokio::time::sleep(takeover_grace(INTERVAL)).await;
        assert_eq!(l.step().await, Role::Leader);
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
        settings_tx.send_replace(Arc::new(new));
        assert_eq!(l.step().await, Role::Standby, "took the lock, waits");
        // The start-up interval's grace (1 s: 3 s) is over; the new one's (5 s: 10 s) not.
        tokio::time::sleep(takeover_grace(INTERVAL) + INTERVAL).await;
        assert_eq!(
            l.step().await,
            Role::Standby,
            "the new interval's grace holds"
        );
        tokio::time::sleep(takeover_grace(Duration::from_secs(5))).await;
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

    /// Steps until this replica leads (the grace), failing after twice the grace.
    async fn lead(l: &Leadership) {
        let started = Instant::now();
        while l.step().await != Role::Leader {
            assert!(
                started.elapsed() < 2 * takeover_grace(INTERVAL),
                "never leads"
            );
            tokio::time::sleep(INTERVAL).await;
        }
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
        // Unverifiable (database down) counts as lost.
        LeaderLock::release(&other).await.unwrap();
        lead(&l).await;
        store.set_available(false);
        assert_eq!(l.step().await, Role::Standby);
        store.set_available(true);
        lead(&l).await;
        l.resign().await;
        assert_eq!(*rx.borrow(), Role::Standby);
        assert!(
            other.try_acquire().await.unwrap(),
            "resigning released the lock"
        );
        // Resigning while waiting out the grace releases the lock too.
        LeaderLock::release(&other).await.unwrap();
        assert_eq!(l.step().await, Role::Standby);
        assert!(LeaderLock::is_held(&store).await.unwrap());
        l.resign().await;
        assert!(other.try_acquire().await.unwrap());
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

    #[tokio::test(start_paused = true)]
    async fn after_the_lock_session_ends_the_new_leader_starts_only_after_the_old_one_stopped() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        // a checks at t0 + 1 s, 2 s, ...: it takes the lock at 1 s and leads from 4 s.
        let a = Replica::start(&store);
        // b checks half an interval later (t0 + 6.5 s, 7.5 s, ...).
        tokio::time::sleep_until(t0 + Duration::from_millis(5_500)).await;
        assert!(a.leads());
        let b = Replica::start(&store.handle());
        tokio::time::sleep_until(t0 + Duration::from_millis(8_100)).await;
        assert!(a.leads() && !b.leads());
        // Just after a's check at 8 s its session ends (pg_terminate_backend): b takes
        // the free lock at 8.5 s, half a second before a's next check notices.
        store.revoke_leadership();
        never_both(&a, &b, Duration::from_secs(10)).await;
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
        tokio::time::timeout(INTERVAL + takeover_grace(INTERVAL) + INTERVAL, both)
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
                workflows: Arc::new(store.clone()),
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
        eventually(
            "leads again",
            INTERVAL + takeover_grace(INTERVAL) + INTERVAL,
            || r.leads(),
        )
        .await;
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
            INTERVAL + takeover_grace(INTERVAL) + Duration::from_secs(5),
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
