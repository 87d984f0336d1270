//! The request queue from the HTTP side to the Python threads.
//!
//! A mutex and a condition variable rather than a channel library: idle Python threads must sleep
//! (not spin and yield, which on a small machine steals CPU from the threads doing the work), and
//! the producer only pays for a wake-up when a thread is actually waiting. Threads do not spin before
//! sleeping: measured on two cores, spinning cost more CPU than the wake-ups it saved.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::job::Job;

struct State {
    jobs: VecDeque<Job>,
    waiting: usize,
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
                waiting: 0,
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
        let queued = s.jobs.len();
        self.queued.store(queued, Ordering::Release);
        let wake = s.waiting > 0;
        drop(s);
        if wake {
            self.ready.notify_one();
        }
    }

    /// A queued job, without waiting.
    pub fn try_pop(&self) -> Option<Job> {
        if self.queued.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut s = self.lock();
        let j = s.jobs.pop_front();
        self.queued.store(s.jobs.len(), Ordering::Release);
        j
    }

    /// The next job, sleeping until one arrives.
    pub fn pop(&self) -> Job {
        let mut s = self.lock();
        loop {
            if let Some(j) = s.jobs.pop_front() {
                self.queued.store(s.jobs.len(), Ordering::Release);
                return j;
            }
            s.waiting += 1;
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
            s.waiting -= 1;
        }
    }

    /// Requests waiting for a thread.
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
