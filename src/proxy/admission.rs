//! The admission queue: at most `capacity` requests go upstream at once, the rest wait in FIFO order.
//!
//! Built on tokio's fair semaphore. Capacity follows the worker server: growing adds permits,
//! shrinking forgets free permits and, for permits still held, records a debt that returning
//! permits pay off instead of going back into the pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Shared FIFO admission gate.
pub struct Admission {
    sem: Arc<Semaphore>,
    state: Mutex<Capacity>,
    waiting: AtomicUsize,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Capacity {
    target: usize,
    /// Held permits to forget on release because capacity shrank below them.
    debt: usize,
}

/// A worker slot; dropping it lets the next waiter in.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    gate: Arc<Admission>,
}

/// Why no slot was granted.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueTimeout;

impl Admission {
    /// A gate that admits nothing until [`Admission::set_capacity`] is called.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            sem: Arc::new(Semaphore::new(0)),
            state: Mutex::new(Capacity::default()),
            waiting: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Current capacity target.
    pub fn capacity(&self) -> usize {
        self.state.lock().expect("admission lock").target
    }

    /// Follows a new capacity (worker processes × threads).
    pub fn set_capacity(&self, new: usize) {
        let mut st = self.state.lock().expect("admission lock");
        if new == st.target {
            return;
        }
        if new > st.target {
            let mut grow = new - st.target;
            let paid = grow.min(st.debt);
            st.debt -= paid;
            grow -= paid;
            self.sem.add_permits(grow);
        } else {
            let shrink = st.target - new;
            let forgotten = self.sem.forget_permits(shrink);
            st.debt += shrink - forgotten;
        }
        st.target = new;
        self.metrics.worker_capacity.set(new as i64);
    }

    /// Waits in line for a slot, at most `timeout`.
    pub async fn acquire(self: &Arc<Self>, timeout: Duration) -> Result<Slot, QueueTimeout> {
        // Fast path: a free slot and nobody queued before us (the semaphore is fair, so
        // try_acquire fails while others wait).
        if let Ok(permit) = self.sem.clone().try_acquire_owned() {
            return Ok(self.slot(permit));
        }
        let res = {
            // A guard, because a client that leaves while queued drops this future mid-wait.
            let _queued = Queued::enter(self);
            tokio::time::timeout(timeout, self.sem.clone().acquire_owned()).await
        };
        match res {
            Ok(Ok(permit)) => Ok(self.slot(permit)),
            _ => Err(QueueTimeout),
        }
    }

    fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        self.metrics.inflight.inc();
        Slot {
            permit: Some(permit),
            gate: self.clone(),
        }
    }
}

/// One request counted as waiting (`kubewsgi_queue_depth`) for as long as it lives.
struct Queued<'a>(&'a Admission);

impl<'a> Queued<'a> {
    fn enter(gate: &'a Admission) -> Self {
        gate.waiting.fetch_add(1, Ordering::Relaxed);
        gate.metrics.queue_depth.inc();
        Self(gate)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.queue_depth.dec();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.metrics.inflight.dec();
        let Some(permit) = self.permit.take() else {
            return;
        };
        let mut st = self.gate.state.lock().expect("admission lock");
        if st.debt > 0 {
            st.debt -= 1;
            permit.forget();
        } else {
            drop(st);
            drop(permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(cap: usize) -> Arc<Admission> {
        let g = Admission::new(Arc::new(Metrics::new()));
        g.set_capacity(cap);
        g
    }

    #[tokio::test]
    async fn waits_then_times_out() {
        let g = gate(1);
        let a = g.acquire(Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            g.acquire(Duration::from_millis(50)).await.err(),
            Some(QueueTimeout)
        );
        drop(a);
        assert!(g.acquire(Duration::from_millis(50)).await.is_ok());
    }

    #[tokio::test]
    async fn fifo_order() {
        let g = gate(1);
        let held = g.acquire(Duration::from_secs(5)).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (g2, order) = (g.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _s = g2.acquire(Duration::from_secs(5)).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            // Let each waiter enter the queue before the next.
            while g.waiting() != i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn shrink_with_held_slots_and_grow_again() {
        let g = gate(3);
        let a = g.acquire(Duration::from_secs(1)).await.unwrap();
        let b = g.acquire(Duration::from_secs(1)).await.unwrap();
        g.set_capacity(1);
        drop(a);
        // Still one held (b) with capacity 1: nothing free.
        assert!(g.acquire(Duration::from_millis(30)).await.is_err());
        drop(b);
        let c = g.acquire(Duration::from_millis(30)).await.unwrap();
        assert!(g.acquire(Duration::from_millis(30)).await.is_err());
        g.set_capacity(2);
        let d = g.acquire(Duration::from_millis(30)).await.unwrap();
        assert!(g.acquire(Duration::from_millis(30)).await.is_err());
        drop((c, d));
        assert_eq!(g.sem.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let g = gate(1);
        let _held = g.acquire(Duration::from_secs(1)).await.unwrap();
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.acquire(Duration::from_secs(60)).await.is_ok() })
        };
        while g.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(g.metrics.queue_depth.get(), 1);
        // What hyper does when the client disconnects: the request's future is dropped.
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(g.waiting(), 0);
        assert_eq!(g.metrics.queue_depth.get(), 0);
    }

    #[tokio::test]
    async fn zero_capacity_admits_nothing_until_set() {
        let g = Admission::new(Arc::new(Metrics::new()));
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.acquire(Duration::from_secs(5)).await.is_ok() })
        };
        while g.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        g.set_capacity(2);
        assert!(waiter.await.unwrap());
    }
}
