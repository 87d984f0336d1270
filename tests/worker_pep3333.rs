//! PEP 3333 conformance of `kubewsgi worker`, checked with a real app (wrapped in
//! `wsgiref.validate` where the rules allow) and a real HTTP client.
// These tests start worker processes that embed CPython.
#![cfg(feature = "python")]

mod common;

use bytes::Bytes;
use common::{Conn, Server, raw, request};

fn start(extra: &[&str]) -> Server {
    start_with_timeout("20", extra)
}

fn start_with_timeout(timeout: &str, extra: &[&str]) -> Server {
    let state = tempfile::tempdir().unwrap().keep();
    let mut args = vec![
        "--chdir",
        common::apps_dir().to_str().unwrap().to_owned().leak(),
        "--threads",
        "4",
        "--timeout",
        timeout.to_owned().leak(),
    ];
    args.extend_from_slice(extra);
    Server::start_with("pep3333:app", &args, |c| {
        c.env("PEP3333_STATE", &state);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environ_has_every_required_key_with_native_strings() {
    let s = start(&[]);
    s.ready(1).await;
    let r = request(
        &s.target,
        "POST",
        "/environ?a=1&b=%20x",
        &[
            ("content-type", "text/x-test"),
            ("x-dup", "one"),
            ("x-dup", "two"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x_under", "dropped"),
            ("x-under", "kept"),
        ],
        Bytes::from_static(b"abc"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(e["REQUEST_METHOD"], "POST");
    assert_eq!(e["SCRIPT_NAME"], "");
    assert_eq!(e["PATH_INFO"], "/environ");
    assert_eq!(e["QUERY_STRING"], "a=1&b=%20x", "the query stays encoded");
    assert_eq!(e["CONTENT_TYPE"], "text/x-test");
    assert_eq!(e["CONTENT_LENGTH"], "3");
    assert!(e.get("HTTP_CONTENT_TYPE").is_none() && e.get("HTTP_CONTENT_LENGTH").is_none());
    assert_eq!(e["HTTP_X_DUP"], "one, two");
    assert_eq!(e["HTTP_COOKIE"], "a=1; b=2");
    assert_eq!(e["HTTP_X_UNDER"], "kept", "x_under must not alias x-under");
    assert_eq!(e["HTTP_HOST"], "test.local");
    // Without a venv, sys.executable still names a Python (multiprocessing's spawn starts it).
    let exe = s.get("/executable").await.text();
    assert!(
        std::path::Path::new(&exe).is_file() && exe.contains("python3"),
        "sys.executable = {exe:?}"
    );
    assert_eq!(e["SERVER_NAME"], "test.local");
    assert_eq!(e["SERVER_PORT"], "80");
    assert_eq!(e["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(
        e["REMOTE_ADDR"], "",
        "no peer address on a Unix socket without X-Forwarded-For"
    );
    assert_eq!(e["wsgi.version"], serde_json::json!([1, 0]));
    assert_eq!(e["wsgi.url_scheme"], "http");
    assert_eq!(e["wsgi.multithread"], true);
    assert_eq!(e["wsgi.multiprocess"], false);
    assert_eq!(e["wsgi.run_once"], false);
    assert_eq!(e["wsgi.input_terminated"], true);
    for (k, t) in e["types"].as_object().unwrap() {
        if k.starts_with("wsgi.") {
            continue;
        }
        assert_eq!(t, "str", "{k} must be a native str");
    }

    // PATH_INFO: percent-decoded bytes as latin-1, so the app can re-encode them exactly.
    let r = s.get("/environ/caf%C3%A9/%2F%20x").await;
    let e: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    assert_eq!(r.status, 404, "routes are exact; {e}"); // path differs, the 404 body names it
    // The app re-encoded PATH_INFO as latin-1, which gives back the UTF-8 bytes the client sent.
    assert!(r.text().contains("/environ/café// x"), "{}", r.text());

    // Forwarded headers from the proxy are trusted on the Unix socket: the last hop is the client.
    let r = request(
        &s.target,
        "GET",
        "/environ",
        &[
            ("x-forwarded-for", "10.9.9.9, 192.0.2.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example:8443"),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    let e = r.json();
    assert_eq!(e["REMOTE_ADDR"], "192.0.2.7");
    assert_eq!(e["wsgi.url_scheme"], "https");
    assert_eq!(e["HTTP_HOST"], "shop.example:8443");
    assert_eq!(e["SERVER_NAME"], "shop.example");
    assert_eq!(e["SERVER_PORT"], "8443");

    // HTTP/1.0 is reported as such.
    let out = raw(&s.target, b"GET /environ HTTP/1.0\r\n\r\n", 20).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("\"SERVER_PROTOCOL\": \"HTTP/1.0\""), "{text}");
    assert!(
        !s.log().contains("AssertionError"),
        "the validator complained:\n{}",
        s.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_ignored_on_tcp() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let s = start(&["--bind", &addr]);
    s.ready(1).await;
    let r = request(
        &s.target,
        "GET",
        "/environ",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    let e = r.json();
    assert_eq!(e["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(e["wsgi.url_scheme"], "http");
    assert!(e["REMOTE_PORT"].as_str().unwrap().parse::<u16>().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_stream_methods_and_chunked_bodies() {
    let s = start(&[]);
    s.ready(1).await;
    let body = Bytes::from_static(b"line one\nline two\n\nlast no newline");
    let cases: &[(&str, serde_json::Value)] = &[
        (
            "read",
            serde_json::json!(["line one\nline two\n\nlast no newline"]),
        ),
        (
            "small",
            serde_json::json!([
                "lin", "e o", "ne\n", "lin", "e t", "wo\n", "\nla", "st ", "no ", "new", "lin", "e"
            ]),
        ),
        (
            "readline",
            serde_json::json!(["line one\n", "line two\n", "\n", "last no newline"]),
        ),
        (
            "readline_limit",
            serde_json::json!([
                "line", " one", "\n", "line", " two", "\n", "\n", "last", " no ", "newl", "ine"
            ]),
        ),
        (
            "readlines",
            serde_json::json!(["line one\n", "line two\n", "\n", "last no newline"]),
        ),
        (
            "readlines_hint",
            serde_json::json!(["line one\n", "line two\n|\n|last no newline"]),
        ),
        (
            "iter",
            serde_json::json!(["line one\n", "line two\n", "\n", "last no newline"]),
        ),
    ];
    for (mode, want) in cases {
        let r = request(
            &s.target,
            "POST",
            &format!("/echo?mode={mode}"),
            &[],
            body.clone(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{mode}: {}", r.text());
        assert_eq!(&r.json(), want, "mode {mode}");
    }
    // A chunked request body, streamed to the app and read to its end (wsgi.input_terminated).
    let chunked = b"POST /echo?mode=readline HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nab\ncd\r\n4\r\nef\ng\r\n0\r\n\r\n";
    let out = String::from_utf8_lossy(&raw(&s.target, chunked, 20).await).into_owned();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with(r#"["ab\n", "cdef\n", "g"]"#), "{out}");
    // read() without a size reads everything; a big body streams through.
    let big = Bytes::from(vec![b'z'; 3 * 1024 * 1024]);
    let r = request(&s.target, "POST", "/raw/read_all", &[], big)
        .await
        .unwrap();
    assert_eq!(
        r.text(),
        format!("{}:0:{}", 3 * 1024 * 1024, "z".repeat(32))
    );
    let chunked = b"POST /raw/read_all HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n";
    let out = String::from_utf8_lossy(&raw(&s.target, chunked, 20).await).into_owned();
    assert!(out.ends_with("6:0:abcdef"), "{out}");
    assert!(
        !s.log().contains("AssertionError"),
        "the validator complained:\n{}",
        s.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rules() {
    let s = start(&[]);
    s.ready(1).await;
    let t = &s.target;

    // write() then the iterable, in order.
    let r = s.get("/write").await;
    assert_eq!(r.text(), "written-twice-then-iterated");
    // exc_info before any body replaces the response.
    let r = s.get("/exc_info").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, "replaced by the error page")
    );
    // A generator with unknown length: chunked framing, empty chunks skipped.
    let r = s.get("/gen").await;
    assert_eq!(r.text(), "one,two,three");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let r = s.get("/empty_then_data").await;
    assert_eq!(r.text(), "late");
    // file_wrapper over a real file, from its current position.
    let r = s.get("/file?skip=10").await;
    let want: Vec<u8> = (0..=255u8).cycle().take(256 * 1200).skip(10).collect();
    assert_eq!(r.body.len(), want.len());
    assert!(r.body == want, "file body differs");
    let r = s.get("/raw/file?skip=10").await;
    assert!(r.body == want, "file body differs when served from Rust");
    assert_eq!(
        r.header("content-length"),
        Some(want.len().to_string().as_str()),
        "size known from the file"
    );
    // HEAD: headers only, Content-Length as the app set it.
    let out = String::from_utf8_lossy(
        &raw(
            t,
            b"HEAD /head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            20,
        )
        .await,
    )
    .into_owned();
    assert!(
        out.starts_with("HTTP/1.1 200")
            && out.contains("content-length: 5\r\n")
            && out.ends_with("\r\n\r\n"),
        "{out:?}"
    );
    for (path, code) in [("/204", "204"), ("/304", "304")] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = String::from_utf8_lossy(&raw(t, req.as_bytes(), 20).await).into_owned();
        assert!(
            out.starts_with(&format!("HTTP/1.1 {code}")) && out.ends_with("\r\n\r\n"),
            "{out:?}"
        );
        assert!(!out.contains("transfer-encoding"), "{out:?}");
    }
    // Date and Server are added unless the app set them; repeated headers, latin-1 values and the reason phrase pass.
    let r = s.get("/write").await;
    assert_eq!(r.header("server"), Some("kubewsgi"));
    assert!(httpdate::parse_http_date(r.header("date").unwrap()).is_ok());
    let out = raw(
        t,
        b"GET /custom_headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        20,
    )
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("HTTP/1.1 299 Custom Reason\r\n"), "{text}");
    assert!(
        text.contains("date: Mon, 01 Jan 2024 00:00:00 GMT\r\n")
            && text.contains("server: mine\r\n"),
        "{text}"
    );
    assert!(
        text.contains("x-multi: 1\r\n") && text.contains("x-multi: 2\r\n"),
        "{text}"
    );
    assert!(
        out.windows(13).any(|w| w == b"x-latin: caf\xe9"),
        "latin-1 header value: {text}"
    );
    // wsgi.errors goes to the log.
    assert_eq!(s.get("/errors").await.text(), "logged");

    // Content-Length: never more than announced; less cuts the connection.
    let r = s.get("/raw/cl_long").await;
    assert_eq!(r.text(), "123");
    let r = s.get("/raw/cl_long_gen").await;
    assert_eq!(r.text(), "123");
    // A first chunk that alone reaches the Content-Length is the whole body: the connection stays
    // usable for the next request and the iterable is still closed.
    let mut c = Conn::open(t).await.unwrap();
    let r = c
        .send("GET", "/raw/cl_first_gen", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.text(), "12345");
    assert_eq!(r.header("content-length"), Some("5"));
    let r = c
        .send("GET", "/raw/cl_long", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.text(), "123");
    closed_once(&s, "cl_first_gen").await;
    // Less than announced: every byte the app sent arrives, then the connection closes (the
    // client sees the body is short), whether the body came whole or streamed.
    for path in ["/raw/cl_short", "/raw/cl_short_list", "/raw/cl_short_gen"] {
        let t0 = std::time::Instant::now();
        let got = raw(
            t,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            20,
        )
        .await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
        assert!(text.contains("content-length: 10\r\n"), "{path}: {text}");
        assert!(
            text.ends_with("\r\n\r\n12345"),
            "{path}: bytes lost: {text}"
        );
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(4),
            "{path}: the connection was not closed after the short body"
        );
    }
    closed_once(&s, "cl_short_gen").await;
    // Hop-by-hop headers from the app are dropped; `Connection: close` is honoured.
    let mut c = Conn::open(t).await.unwrap();
    let r = c.send("GET", "/raw/hop", &[], Bytes::new()).await.unwrap();
    assert_eq!(r.text(), "hop");
    assert!(r.header("keep-alive").is_none());
    assert_eq!(r.header("connection"), Some("close"));

    // Errors before the response starts are a 500 with the traceback in the log; the worker keeps serving.
    for path in [
        "/raw/raise",
        "/raw/bad_header",
        "/raw/bad_name",
        "/raw/bad_status",
        "/raw/not_bytes",
        "/raw/no_start",
        "/raw/twice",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        assert!(!r.text().contains("must not be sent"));
    }
    assert!(s.get("/write").await.status == 200, "still serving");
    // After the headers went out an error can only cut the connection.
    for path in ["/raw/raise_after", "/raw/exc_after"] {
        match request(t, "GET", path, &[], Bytes::new()).await {
            Err(e) => assert!(e.contains("closed"), "{e}"),
            Ok(r) => {
                assert_eq!(r.status, 200);
                assert!(
                    r.body_error.is_some(),
                    "{path}: the cut must be visible: {r:?}"
                );
                assert!(!r.text().contains("never"));
            }
        }
    }
    let log = s.log();
    assert!(
        log.contains("RuntimeError: boom before start_response"),
        "{log}"
    );
    assert!(log.contains("Traceback (most recent call last)"), "{log}");
    assert!(log.contains("invalid value for header x-bad"), "{log}");
    assert!(
        log.contains("message to wsgi.errors") && log.contains("second line continued"),
        "{log}"
    );
    assert!(
        !log.contains("AssertionError: "),
        "the validator complained:\n{log}"
    );
}

/// Waits until the app recorded exactly one `close()` under `name` (it runs after the response went out).
async fn closed_once(s: &Server, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n = s.get(&format!("/closed?name={name}")).await.text();
        if n == "1" {
            return;
        }
        assert!(n == "0", "close() called {n} times for {name}");
        assert!(
            std::time::Instant::now() < deadline,
            "close() not called for {name}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_called_on_normal_end_and_on_client_abort() {
    let s = start(&[]);
    s.ready(1).await;
    assert_eq!(s.get("/close?id=n").await.text(), "ab");
    closed_once(&s, "close-n").await;
    // A generator (through the validator's wrapper) is closed too.
    assert_eq!(s.get("/gen").await.text(), "one,two,three");
    closed_once(&s, "gen").await;

    // The client goes away in the middle of a slow streamed body.
    let req = b"GET /slow_stream?id=a HTTP/1.1\r\nHost: x\r\n\r\n";
    let got = raw(&s.target, req, 1).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    closed_once(&s, "abort-a").await;
    // Keep-alive: several requests on one connection.
    let mut c = Conn::open(&s.target).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            c.send("GET", "/write", &[], Bytes::new())
                .await
                .unwrap()
                .status,
            200
        );
    }
    assert!(!c.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_called_when_the_deadline_cuts_a_stream() {
    let s = start_with_timeout("1", &[]);
    s.ready(1).await;
    // 200 chunks 50 ms apart: the 1 s deadline cuts it and the worker is replaced.
    let req = b"GET /slow_stream?id=deadline HTTP/1.1\r\nHost: x\r\n\r\n";
    let got = raw(&s.target, req, 20).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200") && got.len() < 200 * 1024,
        "{}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
    // The retiring worker waits for the app to notice the cut before it exits.
    closed_once(&s, "abort-deadline").await;
}
