//! The request queue from the HTTP side to the Python threads.
//!
//! A mutex and a condition variable rather than a channel library: idle Python threads must sleep
//! (not spin and yield, which on a small machine steals CPU from the threads doing the work), and
//! the producer only pays for a wake-up when a thread is actually waiting.

use std::collections::VecDeque;
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
}

impl Default for JobQueue {
    fn default() -> Self {
        JobQueue {
            state: Mutex::new(State {
                jobs: VecDeque::with_capacity(64),
                waiting: 0,
            }),
            ready: Condvar::new(),
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
        let wake = s.waiting > 0;
        drop(s);
        if wake {
            self.ready.notify_one();
        }
    }

    /// A queued job, without waiting.
    pub fn try_pop(&self) -> Option<Job> {
        self.lock().jobs.pop_front()
    }

    /// The next job, sleeping until one arrives.
    pub fn pop(&self) -> Job {
        let mut s = self.lock();
        loop {
            if let Some(j) = s.jobs.pop_front() {
                return j;
            }
            s.waiting += 1;
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
            s.waiting -= 1;
        }
    }

    /// Requests waiting for a thread.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
