//! Static files through the proxy: conditional requests, ranges, precompressed variants, content
//! types, cache headers for hashed names, and nothing served from outside the directory.

mod proxy_support;

use std::sync::atomic::Ordering;

use proxy_support::*;

struct Site {
    stack: Stack,
    _root: tempfile::TempDir,
}

fn site() -> Site {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("static");
    std::fs::create_dir_all(d.join("css")).unwrap();
    std::fs::write(d.join("hello.txt"), "hello static\n").unwrap();
    std::fs::write(d.join("app.3f2a9c1b.js"), "console.log(1);\n").unwrap();
    std::fs::write(d.join("css/site.css"), "body{color:red}\n").unwrap();
    std::fs::write(d.join("index.html"), "<h1>index</h1>\n").unwrap();
    // A precompressed variant with different content, to tell which one was sent.
    std::fs::write(d.join("big.txt"), "plain ".repeat(1000)).unwrap();
    let mut gz = flate_gzip(b"gzipped variant");
    std::fs::write(d.join("big.txt.gz"), &mut gz).unwrap();
    // Outside the static dir, and symlinks pointing at it.
    std::fs::write(root.path().join("secret.txt"), "top secret\n").unwrap();
    std::os::unix::fs::symlink(root.path().join("secret.txt"), d.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(root.path(), d.join("up")).unwrap();
    std::os::unix::fs::symlink(d.join("hello.txt"), d.join("alias.txt")).unwrap();
    let mount = format!("/static={}", d.display());
    let stack = Stack::start(1, 2, &["--static", &mount]);
    Site { stack, _root: root }
}

/// gzip via the system `gzip` tool (real encoder, no extra crate).
fn flate_gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut c = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    c.wait_with_output().unwrap().stdout
}

fn get(s: &Stack, path: &str, extra: &str) -> String {
    raw(
        s.addr,
        format!("GET {path} HTTP/1.1\r\nHost: h\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn files_types_etag_304_and_range() {
    let site = site();
    let s = &site.stack;
    let r = get(s, "/static/hello.txt", "");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(body(&r), "hello static\n");
    assert!(
        header(&r, "content-type")
            .unwrap()
            .starts_with("text/plain"),
        "{r}"
    );
    assert_eq!(
        header(&r, "cache-control"),
        None,
        "plain names are not immutable"
    );
    let etag = header(&r, "etag").expect("etag").to_string();
    let lm = header(&r, "last-modified")
        .expect("last-modified")
        .to_string();
    assert_eq!(
        status(&get(
            s,
            "/static/hello.txt",
            &format!("If-None-Match: {etag}\r\n")
        )),
        304
    );
    assert_eq!(
        status(&get(
            s,
            "/static/hello.txt",
            &format!("If-Modified-Since: {lm}\r\n")
        )),
        304
    );
    let r = get(s, "/static/hello.txt", "Range: bytes=6-11\r\n");
    assert_eq!(status(&r), 206, "{r}");
    assert_eq!(body(&r), "static");
    assert_eq!(header(&r, "content-range"), Some("bytes 6-11/13"));
    assert!(
        header(&get(s, "/static/css/site.css", ""), "content-type")
            .unwrap()
            .starts_with("text/css")
    );
    let r = get(s, "/static/app.3f2a9c1b.js", "");
    assert_eq!(
        header(&r, "cache-control"),
        Some("public, max-age=31536000, immutable"),
        "{r}"
    );
    assert!(
        header(&r, "content-type").unwrap().contains("javascript"),
        "{r}"
    );
    assert_eq!(status(&get(s, "/static/missing.txt", "")), 404);
    assert_eq!(body(&get(s, "/static/", "")), "<h1>index</h1>\n");
    // A symlink that stays inside the directory is fine.
    assert_eq!(body(&get(s, "/static/alias.txt", "")), "hello static\n");
    assert_eq!(
        s.app.state.requests.load(Ordering::SeqCst),
        0,
        "static requests never reach the app"
    );
    // Everything else goes to the app.
    assert_eq!(status(&get(s, "/staticky", "")), 200);
}

#[test]
fn if_range_other_units_several_ranges_and_vary_on_304() {
    let site = site();
    let s = &site.stack;
    let r = get(s, "/static/hello.txt", "");
    let etag = header(&r, "etag").expect("etag").to_string();
    let lm = header(&r, "last-modified")
        .expect("last-modified")
        .to_string();
    let ranged = |if_range: &str| {
        get(
            s,
            "/static/hello.txt",
            &format!("Range: bytes=6-11\r\nIf-Range: {if_range}\r\n"),
        )
    };
    // The validator names this version: the range is served.
    for v in [etag.as_str(), lm.as_str()] {
        let r = ranged(v);
        assert_eq!((status(&r), body(&r)), (206, "static"), "If-Range {v}: {r}");
    }
    // It names another version (or is weak): the whole file, never a splice of two versions.
    let weak = format!("W/{etag}");
    for v in [
        "\"another-version\"",
        weak.as_str(),
        "Mon, 01 Jan 2001 00:00:00 GMT",
        "not a date",
    ] {
        let r = ranged(v);
        assert_eq!(
            (status(&r), body(&r)),
            (200, "hello static\n"),
            "If-Range {v}: {r}"
        );
    }
    // Ranges the server does not take are ignored (RFC 9110 §14.2), not answered with 416.
    for range in ["bytes=0-1,6-7", "items=0-1"] {
        let r = get(s, "/static/hello.txt", &format!("Range: {range}\r\n"));
        assert_eq!(
            (status(&r), body(&r)),
            (200, "hello static\n"),
            "{range}: {r}"
        );
    }
    assert_eq!(
        status(&get(s, "/static/hello.txt", "Range: bytes=99-\r\n")),
        416
    );
    // A 304 varies as its 200 does, so caches keep the gzip and plain answers apart.
    assert_eq!(header(&r, "vary"), Some("accept-encoding"), "{r}");
    let r = get(
        s,
        "/static/hello.txt",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(status(&r), 304, "{r}");
    assert_eq!(header(&r, "vary"), Some("accept-encoding"), "{r}");
}

#[test]
fn precompressed_variants_by_accept_encoding() {
    let site = site();
    let s = &site.stack;
    let r = get(s, "/static/big.txt", "Accept-Encoding: gzip\r\n");
    assert_eq!(header(&r, "content-encoding"), Some("gzip"), "{r}");
    let (out, ok) = curl(&["--compressed", &format!("http://{}/static/big.txt", s.addr)]);
    assert!(ok);
    assert_eq!(out, "gzipped variant");
    let r = get(s, "/static/big.txt", "");
    assert_eq!(header(&r, "content-encoding"), None);
    assert!(body(&r).starts_with("plain plain"));
}

#[test]
fn nothing_outside_the_directory() {
    let site = site();
    let s = &site.stack;
    for path in [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E%2Fsecret.txt",
        "/static/..%2fsecret.txt",
        "/static/leak.txt",
        "/static/up/secret.txt",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
    ] {
        let r = get(s, path, "");
        assert!(
            !r.contains("top secret") && !r.contains("root:"),
            "{path} leaked: {r}"
        );
        assert!(status(&r) == 404 || status(&r) == 400, "{path}: {r}");
    }
}

#[test]
fn small_files_are_served_from_memory_for_their_validity() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    std::fs::write(d.join("v.txt"), "one\n").unwrap();
    let mount = format!("/static={}", d.display());
    let long = Stack::start(1, 1, &["--static", &mount, "--static-cache-valid", "600"]);
    let short = Stack::start(1, 1, &["--static", &mount, "--static-cache-valid", "0.3"]);
    let off = Stack::start(1, 1, &["--static", &mount, "--static-cache-size", "0"]);
    let first = get(&long, "/static/v.txt", "");
    for s in [&long, &short, &off] {
        assert_eq!(body(&get(s, "/static/v.txt", "")), "one\n");
    }
    std::fs::write(d.join("v.txt"), "two\n").unwrap();

    // Within its validity the kept copy is served, with the headers the file had.
    let hit = get(&long, "/static/v.txt", "");
    assert_eq!(body(&hit), "one\n");
    for name in ["content-type", "content-length", "etag", "last-modified"] {
        assert_eq!(header(&hit, name), header(&first, name), "{name}");
    }
    // Ranges and conditional requests always read the file.
    let r = get(&long, "/static/v.txt", "Range: bytes=0-2\r\n");
    assert_eq!((status(&r), body(&r)), (206, "two"), "{r}");
    let r = get(&long, "/static/v.txt", "If-None-Match: \"stale\"\r\n");
    assert_eq!(body(&r), "two\n");
    // HEAD is never answered from memory either.
    let r = raw(
        long.addr,
        b"HEAD /static/v.txt HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&r), 200);

    // Without the cache a change shows at once; with a short validity, once it has passed.
    assert_eq!(body(&get(&off, "/static/v.txt", "")), "two\n");
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(body(&get(&short, "/static/v.txt", "")), "two\n");
    assert_eq!(body(&get(&short, "/static/v.txt", "")), "two\n");
}
