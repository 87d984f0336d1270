//! The worker server's app socket disappears while its control socket still answers: requests get
//! 502, `/readyz` turns 503 naming the socket, and both recover when the socket returns.

mod proxy_support;

use std::time::{Duration, Instant};

use proxy_support::*;

fn readyz(s: &Stack) -> (u16, String) {
    let r = raw(
        s.admin,
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    (status(&r), body(&r).to_string())
}

fn wait_readyz(s: &Stack, want: u16) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, text) = readyz(s);
        if code == want {
            return text;
        }
        assert!(Instant::now() < end, "readyz stayed {code}: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn missing_app_socket_is_502_and_not_ready_until_it_returns() {
    let s = Stack::start(1, 4, &[]);
    let get = || {
        raw(
            s.addr,
            b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
    };
    // No request before the removal, so the proxy has no pooled connection to the old listener.
    std::fs::remove_file(s.sock()).unwrap();
    let why = wait_readyz(&s, 503);
    assert!(why.contains("app socket"), "{why}");
    // The control socket kept answering all along: only the app socket is missing.
    assert!(s.dir.path().join("control.sock").exists());
    for _ in 0..3 {
        let r = get();
        assert_eq!(status(&r), 502, "{r}");
    }
    s.app.serve_app(&s.sock());
    wait_readyz(&s, 200);
    let r = get();
    assert_eq!(status(&r), 200, "{r}");
}
