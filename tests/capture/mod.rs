//! Collects a child's stdout and stderr into strings as it runs, so tests can wait for a line.

use std::io::Read;
use std::process::Child;
use std::sync::{Arc, Mutex};

/// Text a child has written so far.
pub type Sink = Arc<Mutex<String>>;

/// Takes the child's piped stdout and stderr and copies them into two sinks on background threads.
pub fn capture(child: &mut Child) -> (Sink, Sink) {
    let out = Sink::default();
    let err = Sink::default();
    for (pipe, sink) in [
        (
            Box::new(child.stdout.take().expect("stdout piped")) as Box<dyn Read + Send>,
            out.clone(),
        ),
        (
            Box::new(child.stderr.take().expect("stderr piped")) as Box<dyn Read + Send>,
            err.clone(),
        ),
    ] {
        std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    (out, err)
}
