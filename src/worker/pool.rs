//! The master's bookkeeping: which worker processes exist, what to start, stop or kill next.
//! Pure logic driven by events and a clock, so the process model's decisions are unit-tested.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::protocol::Report;

/// What the master should do to its processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a worker process for this (already registered) slot id.
    Spawn(u64),
    /// Ask the worker to drain and exit (SIGTERM).
    Term(u64),
    /// Kill the worker at once (SIGKILL).
    Kill(u64),
    /// Boot failed too often while no worker ever booted: give up with this traceback.
    GiveUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Booting,
    Ready,
    Retiring { since: Instant, signalled: bool },
}

#[derive(Debug)]
struct Slot {
    id: u64,
    pid: i32,
    generation: u64,
    state: State,
    last_beat: Instant,
    busy: u32,
    threads: u32,
    requests: u64,
    boot_error: Option<String>,
}

/// Timing and sizing knobs of the pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub workers: u32,
    pub threads: u32,
    pub min_workers: u32,
    pub max_workers: u32,
    pub autoscale: bool,
    pub graceful_timeout: Duration,
    pub heartbeat_timeout: Duration,
    pub max_boot_failures: u32,
    pub scale_up_after: Duration,
    pub scale_down_after: Duration,
}

/// `GET /stats` as JSON; the keys are an interface of the proxy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub workers: u32,
    pub threads: u32,
    pub busy: u32,
    pub idle: u32,
    pub restarts: u64,
    pub requests: u64,
    pub ready: bool,
    pub max_workers: u32,
    pub min_workers: u32,
    pub booting: u32,
    pub retiring: u32,
    pub target_workers: u32,
    pub boot_error: Option<String>,
    /// Process ids of the serving workers.
    pub pids: Vec<i32>,
}

/// The set of worker processes and the decisions about them.
#[derive(Debug)]
pub struct Pool {
    cfg: PoolConfig,
    slots: Vec<Slot>,
    next_id: u64,
    target: u32,
    generation: u64,
    ever_booted: bool,
    boot_failures: u32,
    next_spawn_at: Option<Instant>,
    restarts: u64,
    requests_done: u64,
    last_boot_error: Option<String>,
    busy_since: Option<Instant>,
    spare_since: Option<Instant>,
    stopping: Option<Instant>,
}

/// Backoff before retrying a worker that failed to boot: 0.5 s doubling, at most 30 s.
pub fn boot_backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    Duration::from_millis(500u64 << exp).min(Duration::from_secs(30))
}

impl Pool {
    pub fn new(cfg: PoolConfig) -> Self {
        let target = cfg.workers.clamp(cfg.min_workers, cfg.max_workers);
        Pool {
            cfg,
            slots: Vec::new(),
            next_id: 1,
            target,
            generation: 0,
            ever_booted: false,
            boot_failures: 0,
            next_spawn_at: None,
            restarts: 0,
            requests_done: 0,
            last_boot_error: None,
            busy_since: None,
            spare_since: None,
            stopping: None,
        }
    }

    fn slot(&mut self, id: u64) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id == id)
    }

    /// Process id of a slot (0 while it is being started).
    pub fn pid(&self, id: u64) -> Option<i32> {
        self.slots
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.pid)
            .filter(|&p| p > 0)
    }

    pub fn set_pid(&mut self, id: u64, pid: i32) {
        if let Some(s) = self.slot(id) {
            s.pid = pid;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// The traceback of the last failed boot.
    pub fn last_boot_error(&self) -> Option<&str> {
        self.last_boot_error.as_deref()
    }

    fn is_active(s: &Slot) -> bool {
        !matches!(s.state, State::Retiring { .. })
    }

    fn retire(s: &mut Slot, now: Instant, out: &mut Vec<Action>) {
        if let State::Retiring { .. } = s.state {
            return;
        }
        s.state = State::Retiring {
            since: now,
            signalled: true,
        };
        out.push(Action::Term(s.id));
    }

    /// A report line from worker `id`.
    pub fn report(&mut self, id: u64, r: Report, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(s) = self.slot(id) else { return out };
        s.last_beat = now;
        match r {
            Report::Ready { threads } => {
                s.threads = threads;
                if s.state == State::Booting {
                    s.state = State::Ready;
                }
                self.ever_booted = true;
                self.boot_failures = 0;
                self.last_boot_error = None;
            }
            Report::Beat { busy, requests } => {
                s.busy = busy;
                s.requests = requests;
            }
            Report::Retire { reason } => {
                tracing::info!(worker = id, pid = s.pid, %reason, "worker retiring, starting a replacement");
                if Self::is_active(s) {
                    // The worker drains by itself; it is signalled anyway so a lost report cannot leave it serving.
                    Self::retire(s, now, &mut out);
                    self.restarts += 1;
                }
            }
            Report::BootError { traceback } => {
                s.boot_error = Some(traceback);
            }
        }
        out.extend(self.reconcile(now));
        out
    }

    /// Worker `id` has exited (or could not be started).
    pub fn exited(&mut self, id: u64, now: Instant) -> Vec<Action> {
        let Some(pos) = self.slots.iter().position(|s| s.id == id) else {
            return Vec::new();
        };
        let s = self.slots.remove(pos);
        self.requests_done += s.requests;
        match s.state {
            State::Booting => {
                self.boot_failures += 1;
                let tb = s
                    .boot_error
                    .unwrap_or_else(|| "worker exited before the app was loaded".into());
                self.last_boot_error = Some(tb);
                let wait = boot_backoff(self.boot_failures);
                tracing::warn!(worker = id, failures = self.boot_failures, retry_in = ?wait, "worker failed to boot");
                if !self.ever_booted
                    && self.cfg.max_boot_failures > 0
                    && self.boot_failures >= self.cfg.max_boot_failures
                {
                    return vec![Action::GiveUp];
                }
                self.next_spawn_at = Some(now + wait);
            }
            State::Ready if self.stopping.is_none() => {
                tracing::warn!(worker = id, pid = s.pid, "worker died, replacing it");
                self.restarts += 1;
            }
            _ => tracing::debug!(worker = id, pid = s.pid, "worker exited"),
        }
        self.reconcile(now)
    }

    /// SIGHUP: start a new generation; old workers retire one by one as new ones become ready.
    pub fn reload(&mut self, now: Instant) -> Vec<Action> {
        self.generation += 1;
        self.next_spawn_at = None;
        self.reconcile(now)
    }

    /// SIGTTIN / SIGTTOU: one worker more or fewer, within the bounds.
    pub fn resize(&mut self, delta: i32, now: Instant) -> Vec<Action> {
        let t = (self.target as i64 + delta as i64)
            .clamp(self.cfg.min_workers as i64, self.cfg.max_workers as i64);
        self.target = t as u32;
        self.reconcile(now)
    }

    /// SIGTERM / SIGINT: every worker drains; the master exits once they are gone.
    pub fn stop(&mut self, now: Instant) -> Vec<Action> {
        self.stopping.get_or_insert(now);
        let mut out = Vec::new();
        for s in &mut self.slots {
            Self::retire(s, now, &mut out);
        }
        out
    }

    /// Periodic checks: heartbeats, drain deadlines, boot backoff, in-pod autoscaling.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let kill_after = self.cfg.graceful_timeout + Duration::from_secs(2);
        for s in &mut self.slots {
            match s.state {
                State::Retiring { since, .. } if now.duration_since(since) > kill_after => {
                    tracing::warn!(
                        worker = s.id,
                        pid = s.pid,
                        "worker did not drain in time, killing it"
                    );
                    out.push(Action::Kill(s.id));
                    s.state = State::Retiring {
                        since: now,
                        signalled: true,
                    };
                }
                State::Booting | State::Ready
                    if now.duration_since(s.last_beat) > self.cfg.heartbeat_timeout =>
                {
                    tracing::error!(
                        worker = s.id,
                        pid = s.pid,
                        "worker heartbeat stopped, killing it"
                    );
                    // Replaced like a crashed worker, and counted like one.
                    self.restarts += 1;
                    out.push(Action::Kill(s.id));
                    s.state = State::Retiring {
                        since: now,
                        signalled: true,
                    };
                }
                _ => {}
            }
        }
        if self.cfg.autoscale && self.stopping.is_none() {
            self.autoscale(now);
        }
        out.extend(self.reconcile(now));
        out
    }

    fn autoscale(&mut self, now: Instant) {
        let ready: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| s.state == State::Ready && s.generation == self.generation)
            .collect();
        let booting = self.slots.iter().any(|s| s.state == State::Booting);
        if ready.is_empty() || booting {
            self.busy_since = None;
            self.spare_since = None;
            return;
        }
        let capacity: u32 = ready.iter().map(|s| s.threads).sum();
        let busy: u32 = ready.iter().map(|s| s.busy).sum();
        let per = (capacity / ready.len() as u32).max(1);
        if busy >= capacity {
            let since = *self.busy_since.get_or_insert(now);
            if now.duration_since(since) >= self.cfg.scale_up_after
                && self.target < self.cfg.max_workers
            {
                self.target += 1;
                self.busy_since = None;
                tracing::info!(workers = self.target, "all threads busy, adding a worker");
            }
        } else {
            self.busy_since = None;
        }
        // Spare: the busy threads would fit in one process fewer, with a thread to spare.
        if busy < capacity.saturating_sub(per) {
            let since = *self.spare_since.get_or_insert(now);
            if now.duration_since(since) >= self.cfg.scale_down_after
                && self.target > self.cfg.min_workers
            {
                self.target -= 1;
                self.spare_since = None;
                tracing::info!(workers = self.target, "workers idle, retiring one");
            }
        } else {
            self.spare_since = None;
        }
    }

    fn new_slot(&mut self, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.slots.push(Slot {
            id,
            pid: 0,
            generation: self.generation,
            state: State::Booting,
            last_beat: now,
            busy: 0,
            threads: self.cfg.threads,
            requests: 0,
            boot_error: None,
        });
        id
    }

    /// Brings the process set towards `target` workers of the current generation.
    fn reconcile(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopping.is_some() {
            return out;
        }
        let generation = self.generation;
        let current = self
            .slots
            .iter()
            .filter(|s| s.generation == generation && Self::is_active(s))
            .count() as u32;
        if current < self.target {
            let backoff = self.next_spawn_at.is_some_and(|t| now < t);
            if !backoff {
                self.next_spawn_at = None;
                // After a boot failure, retry one at a time.
                let n = if self.boot_failures > 0 {
                    1.min(self.target - current)
                } else {
                    self.target - current
                };
                let booting = self
                    .slots
                    .iter()
                    .filter(|s| s.state == State::Booting)
                    .count() as u32;
                if self.boot_failures == 0 || booting == 0 {
                    for _ in 0..n {
                        let id = self.new_slot(now);
                        out.push(Action::Spawn(id));
                    }
                }
            }
        } else if current > self.target {
            // Retire the surplus, booting ones first, then the least busy.
            let mut cands: Vec<(bool, u32, u64)> = self
                .slots
                .iter()
                .filter(|s| s.generation == generation && Self::is_active(s))
                .map(|s| (s.state == State::Ready, s.busy, s.id))
                .collect();
            cands.sort();
            for &(_, _, id) in cands.iter().take((current - self.target) as usize) {
                if let Some(s) = self.slots.iter_mut().find(|s| s.id == id) {
                    Self::retire(s, now, &mut out);
                }
            }
        }
        // Older generations stay until enough of the current one serve.
        let new_ready = self
            .slots
            .iter()
            .filter(|s| s.generation == generation && s.state == State::Ready)
            .count() as u32;
        let keep_old = self.target.saturating_sub(new_ready) as usize;
        let mut old: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].generation != generation && Self::is_active(&self.slots[i]))
            .collect();
        if old.len() > keep_old {
            // Retire booting old ones first, then the oldest.
            old.sort_by_key(|&i| (self.slots[i].state == State::Ready, self.slots[i].id));
            for &i in &old[..old.len() - keep_old] {
                let s = &mut self.slots[i];
                if s.state == State::Ready {
                    self.restarts += 1;
                }
                Self::retire(s, now, &mut out);
            }
        }
        out
    }

    pub fn stats(&self) -> Stats {
        let serving: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| s.state == State::Ready)
            .collect();
        let workers = serving.len() as u32;
        let capacity: u32 = serving.iter().map(|s| s.threads).sum();
        let busy: u32 = serving.iter().map(|s| s.busy).sum();
        Stats {
            workers,
            threads: self.cfg.threads,
            busy,
            idle: capacity.saturating_sub(busy),
            restarts: self.restarts,
            requests: self.requests_done + self.slots.iter().map(|s| s.requests).sum::<u64>(),
            ready: workers > 0,
            max_workers: if self.cfg.autoscale {
                self.cfg.max_workers
            } else {
                self.target
            },
            min_workers: self.cfg.min_workers,
            booting: self
                .slots
                .iter()
                .filter(|s| s.state == State::Booting)
                .count() as u32,
            retiring: self.slots.iter().filter(|s| !Self::is_active(s)).count() as u32,
            target_workers: self.target,
            boot_error: self.last_boot_error.clone(),
            pids: serving.iter().map(|s| s.pid).collect(),
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
