//! The request queue from the HTTP side to the Python threads.
//!
//! Only one thread holding the GIL runs Python at a time, so a request is best served by the
//! thread that already holds it: a thread that finishes a request takes the next queued one
//! without waiting or waking anybody. Sleeping threads are woken one at a time, as *standby*: a
//! woken thread takes the GIL (waiting for it while another thread runs Python) and only then looks
//! at the queue. While a standby exists, new requests wake nobody; the standby takes over the queue
//! as soon as the running thread releases the GIL, whether for I/O (so apps that block without the
//! GIL still get every thread working) or because it ran out of work. A standby that finds the
//! queue empty goes back to sleep.
//!
//! A mutex and a condition variable rather than a channel library: idle Python threads must sleep
//! (not spin and yield, which on a small machine steals CPU from the threads doing the work), and
//! wake-ups must be counted so that one request wakes at most one thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::job::Job;

struct State {
    jobs: VecDeque<Job>,
    /// Threads blocked in [`JobQueue::wait`].
    sleeping: usize,
    /// Wake-ups granted to sleeping threads and not yet taken by one.
    wakes: usize,
    /// Threads woken for queued work that have not yet looked at the queue with the GIL held.
    standby: usize,
}

impl State {
    /// Wakes a sleeping thread as standby when work is queued and nobody stands by; true if one must be notified.
    fn grant_standby(&mut self) -> bool {
        if !self.jobs.is_empty() && self.standby == 0 && self.sleeping > self.wakes {
            self.wakes += 1;
            self.standby += 1;
            return true;
        }
        false
    }
}

/// FIFO of requests waiting for a Python thread.
pub struct JobQueue {
    state: Mutex<State>,
    ready: Condvar,
    queued: AtomicUsize,
}

impl Default for JobQueue {
    fn default() -> Self {
        JobQueue {
            state: Mutex::new(State {
                jobs: VecDeque::with_capacity(64),
                sleeping: 0,
                wakes: 0,
                standby: 0,
            }),
            ready: Condvar::new(),
            queued: AtomicUsize::new(0),
        }
    }
}

impl JobQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, job: Job) {
        let mut s = self.lock();
        s.jobs.push_back(job);
        self.queued.store(s.jobs.len(), Ordering::Release);
        let wake = s.grant_standby();
        drop(s);
        if wake {
            self.ready.notify_one();
        }
    }

    /// A queued job, without waiting; for a thread that holds the GIL between two requests.
    pub fn try_pop(&self) -> Option<Job> {
        if self.queued.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut s = self.lock();
        let j = s.jobs.pop_front();
        self.queued.store(s.jobs.len(), Ordering::Release);
        j
    }

    /// Sleeps until this thread is woken as standby; call without the GIL, then
    /// [`take_as_standby`](Self::take_as_standby) once the GIL is held.
    pub fn wait(&self) {
        let mut s = self.lock();
        s.sleeping += 1;
        // Work that arrived after this thread last looked, with nobody standing by: this thread is
        // the standby (no notification needed, it takes the wake-up itself below).
        s.grant_standby();
        while s.wakes == 0 {
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.wakes -= 1;
        s.sleeping -= 1;
    }

    /// Ends this thread's standby with the GIL held: the next job if one is left, and another
    /// sleeping thread becomes standby if more work is queued.
    pub fn take_as_standby(&self) -> Option<Job> {
        let mut s = self.lock();
        s.standby -= 1;
        let j = s.jobs.pop_front();
        self.queued.store(s.jobs.len(), Ordering::Release);
        let wake = s.grant_standby();
        drop(s);
        if wake {
            self.ready.notify_one();
        }
        j
    }

    /// Requests waiting for a thread.
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    fn job() -> (Job, super::super::reply::ReplyRx) {
        let (tx, rx) = super::super::reply::channel(Arc::default());
        let j = Job {
            method: http::Method::GET,
            uri: http::Uri::from_static("/"),
            version: http::Version::HTTP_11,
            headers: http::HeaderMap::new(),
            peer: super::super::job::Peer {
                remote: None,
                local: None,
                trust_forwarded: true,
            },
            input: super::super::job::Input::Full(bytes::Bytes::new()),
            reply: tx,
            picked_at: Arc::new(AtomicU64::new(0)),
        };
        (j, rx)
    }

    fn sleepers(q: &JobQueue, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while q.lock().sleeping != n {
            assert!(std::time::Instant::now() < deadline, "threads never slept");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A burst of requests wakes one sleeping thread, not one per request; the standby wakes the
    /// next one only while work is left, so every queued job is taken.
    #[test]
    fn one_standby_per_burst() {
        let q = Arc::new(JobQueue::default());
        let (woke_tx, woke_rx) = std::sync::mpsc::channel();
        for _ in 0..3 {
            let (q, woke_tx) = (q.clone(), woke_tx.clone());
            std::thread::spawn(move || {
                q.wait();
                woke_tx.send(()).unwrap();
                // Stands by for good, as if another thread never released the GIL.
                loop {
                    std::thread::park();
                }
            });
        }
        sleepers(&q, 3);
        let mut rxs = Vec::new();
        for _ in 0..5 {
            let (j, rx) = job();
            q.push(j);
            rxs.push(rx);
        }
        woke_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let s = q.lock();
        assert_eq!(
            (s.standby, s.sleeping, s.jobs.len()),
            (1, 2, 5),
            "five requests woke exactly one thread"
        );
        drop(s);
        // The thread that is not a standby (holding the GIL) drains the queue itself.
        let mut taken = 0;
        while q.try_pop().is_some() {
            taken += 1;
        }
        assert_eq!(taken, 5);
        assert_eq!(q.len(), 0);
    }

    /// A request queued just before a thread goes to sleep (after it found the queue empty) is not
    /// left waiting: the thread stands by at once.
    #[test]
    fn no_lost_wakeup_before_sleeping() {
        let q = Arc::new(JobQueue::default());
        q.push(job().0);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let q2 = q.clone();
        std::thread::spawn(move || {
            q2.wait();
            done_tx.send(q2.take_as_standby().is_some()).unwrap();
        });
        assert!(
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            "the queued request was taken"
        );
    }

    /// A standby that finds work left hands the standby role to the next sleeper.
    #[test]
    fn standby_hands_on_while_work_is_left() {
        let q = Arc::new(JobQueue::default());
        let taken = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            let (q, taken) = (q.clone(), taken.clone());
            std::thread::spawn(move || {
                loop {
                    q.wait();
                    if q.take_as_standby().is_some() {
                        taken.fetch_add(1, Ordering::SeqCst);
                        // Busy with its request (as an app blocked without the GIL) for good.
                        std::thread::park();
                    }
                }
            });
        }
        sleepers(&q, 2);
        for _ in 0..2 {
            q.push(job().0);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while taken.load(Ordering::SeqCst) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the second request was never picked up: {} taken",
                taken.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(q.len(), 0);
    }
}
