//! The way a reply goes back from a Python thread to its connection task, with deferred wake-ups.
//!
//! Waking a task of the HTTP thread's runtime from another thread costs a system call (the
//! runtime's eventfd) per request. A Python thread therefore only queues the waker while the HTTP
//! thread is busy anyway; the HTTP thread runs the queued wakers itself before it would sleep
//! (the runtime's park hook) and whenever it polls a reply. Only a reply that finds the HTTP
//! thread asleep pays for waking it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::job::Reply;

/// Wakers of connection tasks queued by the Python threads.
#[derive(Default)]
pub struct Wakes {
    /// The HTTP thread is asleep or about to sleep: queued wakers will not be run by it.
    parked: AtomicBool,
    any: AtomicBool,
    pending: Mutex<Vec<Waker>>,
}

impl Wakes {
    fn pending(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, w: Waker) {
        self.pending().push(w);
        self.any.store(true, Ordering::SeqCst);
        // Pairs with `before_park`: either the HTTP thread takes this waker before it sleeps,
        // or this thread sees it asleep and wakes it.
        if self.parked.load(Ordering::SeqCst) {
            self.run();
        }
    }

    /// Runs the queued wakers (cheap on the HTTP thread, where they only schedule a local task).
    pub fn run(&self) {
        if !self.any.swap(false, Ordering::SeqCst) {
            return;
        }
        let wakers = std::mem::take(&mut *self.pending());
        for w in wakers {
            w.wake();
        }
    }

    /// The runtime's park hook: from now on wakers are run by whoever queues them.
    pub fn before_park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        self.run();
    }

    /// The runtime's unpark hook.
    pub fn after_unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct State {
    reply: Option<Reply>,
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    wakes: Arc<Wakes>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A one-shot reply channel whose wake-up goes through `wakes`.
pub fn channel(wakes: Arc<Wakes>) -> (ReplyTx, ReplyRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wakes,
    });
    (
        ReplyTx {
            shared: Some(shared.clone()),
        },
        ReplyRx { shared },
    )
}

/// The Python side of a reply channel.
pub struct ReplyTx {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for ReplyTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyTx").finish_non_exhaustive()
    }
}

impl ReplyTx {
    /// A sender connected to nothing (its replies are dropped).
    pub fn detached() -> Self {
        ReplyTx { shared: None }
    }

    /// Hands over the reply; fails (dropping it) if the receiver is gone.
    pub fn send(mut self, r: Reply) -> Result<(), Lost> {
        let Some(shared) = self.shared.take() else {
            return Err(Lost);
        };
        let mut s = shared.lock();
        if s.receiver_gone {
            drop(s);
            drop(r);
            return Err(Lost);
        }
        s.reply = Some(r);
        s.sender_gone = true;
        let w = s.waker.take();
        drop(s);
        if let Some(w) = w {
            shared.wakes.wake(w);
        }
        Ok(())
    }

    /// True once the receiver is gone (the client left, or got a 504).
    pub fn is_closed(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| s.lock().receiver_gone)
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            let mut s = shared.lock();
            s.sender_gone = true;
            let w = s.waker.take();
            drop(s);
            if let Some(w) = w {
                shared.wakes.wake(w);
            }
        }
    }
}

/// The connection's side: resolves to the reply, or `Err` if the sender went away without one.
pub struct ReplyRx {
    shared: Arc<Shared>,
}

/// The other side of the channel is gone.
#[derive(Debug)]
pub struct Lost;

impl Future for ReplyRx {
    type Output = Result<Reply, Lost>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Other connections' replies may be waiting for their wake-up: run them now.
        self.shared.wakes.run();
        let mut s = self.shared.lock();
        if let Some(r) = s.reply.take() {
            return Poll::Ready(Ok(r));
        }
        if s.sender_gone {
            return Poll::Ready(Err(Lost));
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for ReplyRx {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.receiver_gone = true;
        // The reply holds no Python objects, so it may be dropped here, on the HTTP thread.
        let _ = s.reply.take();
        let _ = s.waker.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reply() -> Reply {
        Reply {
            status: http::StatusCode::OK,
            reason: None,
            headers: http::HeaderMap::new(),
            body: super::super::job::ReplyBody::Full {
                data: bytes::Bytes::from_static(b"x"),
                short: false,
            },
        }
    }

    fn runtime(wakes: &Arc<Wakes>) -> tokio::runtime::Runtime {
        let (a, b) = (wakes.clone(), wakes.clone());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || a.before_park())
            .on_thread_unpark(move || b.after_unpark())
            .build()
            .unwrap()
    }

    /// A reply sent from another thread while the runtime sleeps wakes it.
    #[test]
    fn reply_wakes_a_sleeping_runtime() {
        let wakes = Arc::new(Wakes::default());
        let rt = runtime(&wakes);
        let (tx, rx) = channel(wakes.clone());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(reply()).unwrap();
        });
        let r = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), rx).await });
        assert_eq!(r.expect("woken").expect("a reply").status, 200);
        t.join().unwrap();
    }

    /// Replies queued while the runtime is busy are delivered once it would sleep, and a sender
    /// dropped without a reply resolves its receiver to `Lost`.
    #[test]
    fn replies_while_busy_and_lost_ones() {
        let wakes = Arc::new(Wakes::default());
        let rt = runtime(&wakes);
        let mut rxs = Vec::new();
        let mut txs = Vec::new();
        for _ in 0..10 {
            let (tx, rx) = channel(wakes.clone());
            txs.push(tx);
            rxs.push(rx);
        }
        let got = rt.block_on(async move {
            let tasks: Vec<_> = rxs.into_iter().map(tokio::spawn).collect();
            tokio::task::yield_now().await;
            let t = std::thread::spawn(move || {
                for (i, tx) in txs.into_iter().enumerate() {
                    if i % 2 == 0 {
                        tx.send(reply()).unwrap();
                    } else {
                        drop(tx);
                    }
                }
            });
            // Busy on the runtime thread while the replies arrive.
            let until = std::time::Instant::now() + Duration::from_millis(50);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
            let mut out = Vec::new();
            for task in tasks {
                let r = tokio::time::timeout(Duration::from_secs(10), task)
                    .await
                    .expect("delivered")
                    .unwrap();
                out.push(r.is_ok());
            }
            t.join().unwrap();
            out
        });
        let expected: Vec<bool> = (0..10).map(|i| i % 2 == 0).collect();
        assert_eq!(got, expected);
    }

    /// A receiver dropped before the reply closes the channel and refuses the reply.
    #[test]
    fn closed_when_receiver_is_gone() {
        let wakes = Arc::new(Wakes::default());
        let (tx, rx) = channel(wakes);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(tx.send(reply()).is_err());
        assert!(ReplyTx::detached().is_closed());
    }
}
