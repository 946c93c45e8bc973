//! What the example tests share: the service lock, worker processes killed when the
//! test ends, waiting for collected messages and queue counts with a deadline.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Arc;

use amqp8::{
    Broker, ConsumeOptions, ConsumerHandle, Decision, Message, RabbitBroker, Topology, handler_fn,
};
use tokio::sync::mpsc;

/// How long any awaited condition may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// A counter for unique names.
pub static N: AtomicU64 = AtomicU64::new(0);

/// The shared lock on `/tmp/cptm8-services.lock`, held while a test uses the services.
pub struct ServiceLock(#[allow(dead_code)] File);

/// Takes the shared service lock.
pub fn lock_shared() -> ServiceLock {
    let f = File::options()
        .create(true)
        .append(true)
        .open("/tmp/cptm8-services.lock")
        .expect("open the service lock file");
    f.lock_shared().expect("shared lock");
    ServiceLock(f)
}

/// A worker process, killed if the test ends before it does.
pub struct Worker {
    child: Option<Child>,
    log: PathBuf,
}

impl Worker {
    pub fn start(bin: &str, dir: &Path, args: &[&str]) -> Worker {
        let log = dir.join(format!("{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let out = File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the worker");
        Worker {
            child: Some(child),
            log,
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn terminate(&mut self) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits (with a deadline) for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker still running after {timeout:?}; its output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The next message collected, or a panic with the worker's output.
pub async fn next(rx: &mut mpsc::UnboundedReceiver<Message>, worker: &Worker) -> Message {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(m)) => m,
        _ => panic!(
            "nothing arrived within {WAIT:?}; worker output:\n{}",
            worker.output()
        ),
    }
}

/// Polls `condition` on queue `q`'s counts until it holds or the deadline passes.
pub async fn wait_queue(
    b: &RabbitBroker,
    q: &str,
    what: &str,
    condition: impl Fn(u32, u32) -> bool,
    worker: &Worker,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(i) = b.queue_info(q).await
            && condition(i.messages, i.consumers)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue {q}: {what} not reached within {WAIT:?}; worker output:\n{}",
            worker.output()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Declares `topology` and collects what arrives on its queue `queue` (acked), in order.
pub async fn collect_queue(
    b: &RabbitBroker,
    topology: &Topology,
    queue: &str,
) -> (mpsc::UnboundedReceiver<Message>, ConsumerHandle) {
    b.declare(topology).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let h = b
        .consume(
            ConsumeOptions {
                queue: queue.into(),
                tag: "test".into(),
                prefetch: 50,
                autoack: false,
                max_redeliveries: 5,
                dead_letter: None,
            },
            Arc::new(handler_fn(move |m: Message| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(m);
                    Ok(Decision::Ack)
                }
            })),
        )
        .await
        .unwrap();
    (rx, h)
}
