//! Real frameworks from PyPI (Flask, Django in the project venv), app spec forms, `--venv` and `--chdir`.
// These tests start worker processes that embed CPython.
#![cfg(feature = "python")]

mod common;

use bytes::Bytes;
use common::{Server, request};

fn apps() -> String {
    common::apps_dir().to_string_lossy().into_owned()
}

fn venv() -> String {
    common::venv().to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_from_the_venv() {
    let (a, v) = (apps(), venv());
    let s = Server::start(
        "flask_app:app",
        &[
            "--chdir",
            &a,
            "--venv",
            &v,
            "--workers",
            "2",
            "--threads",
            "2",
        ],
    );
    s.ready(2).await;
    assert_eq!(s.get("/").await.text(), "hello from flask-module");
    let r = request(
        &s.target,
        "POST",
        "/json",
        &[
            ("content-type", "application/json"),
            ("x-forwarded-for", "203.0.113.5"),
            ("x-forwarded-proto", "https"),
        ],
        Bytes::from_static(br#"{"a": [1, 2]}"#),
    )
    .await
    .unwrap();
    let j = r.json();
    assert_eq!(j["got"], serde_json::json!({"a": [1, 2]}));
    assert_eq!(j["remote"], "203.0.113.5");
    assert_eq!(j["scheme"], "https");
    assert_eq!(j["host"], "test.local");
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n0123456789\r\n--XyZ--\r\n";
    let r = request(
        &s.target,
        "POST",
        "/upload",
        &[("content-type", "multipart/form-data; boundary=XyZ")],
        Bytes::from(body),
    )
    .await
    .unwrap();
    assert_eq!(
        r.json(),
        serde_json::json!({"name": "a.bin", "size": 10, "field": "value"})
    );
    assert_eq!(s.get("/stream").await.text(), "part0;part1;part2;");
    let r = s.get("/boom").await;
    assert_eq!(r.status, 500);
    assert_eq!(s.get("/").await.status, 200);
    // Flask logs the view's exception itself.
    assert!(s.log().contains("flask view failed"), "{}", s.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_factory_with_literal_arguments_and_venv_from_environment() {
    let a = apps();
    let v = venv();
    let s = Server::start_with(
        "flask_app:create_app(\"made-by-factory\")",
        &["--chdir", &a],
        |c| {
            c.env("VIRTUAL_ENV", &v);
        },
    );
    s.ready(1).await;
    assert_eq!(s.get("/").await.text(), "hello from made-by-factory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_from_the_venv() {
    let (a, v) = (apps(), venv());
    let s = Server::start(
        "djangoapp.wsgi:application",
        &["--chdir", &a, "--venv", &v, "--threads", "2"],
    );
    s.ready(1).await;
    assert_eq!(s.get("/").await.text(), "hello from django");
    let r = request(
        &s.target,
        "POST",
        "/echo/x?q=%C3%A9",
        &[("content-type", "application/json"), ("cookie", "c=1")],
        Bytes::from_static(b"[true]"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"method": "POST", "body": [true], "path": "/echo/x", "name": "x", "query": "é", "cookie": "1"})
    );
    // Non-ASCII path: Django decodes PATH_INFO's latin-1 code points back to UTF-8.
    let r = s.get("/echo/caf%C3%A9").await;
    assert_eq!(r.json()["name"], "café", "{}", r.text());
    assert_eq!(s.get("/stream").await.text(), "row0\nrow1\nrow2\n");
    assert_eq!(s.get("/missing").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_venv_flask_is_not_importable() {
    // The system interpreter lacks Flask: the venv flags are what make it importable.
    let a = apps();
    let mut s = Server::start(
        "flask_app:app",
        &["--chdir", &a, "--max-boot-failures", "1"],
    );
    let code = tokio::task::block_in_place(|| s.wait_exit(60));
    assert_eq!(code, Some(3));
    assert!(
        s.log()
            .contains("ModuleNotFoundError: No module named 'flask'"),
        "{}",
        s.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_path_spec_and_chdir() {
    let a = apps();
    let v = venv();
    let s = Server::start("sub/by_path.py:application", &["--chdir", &a, "--venv", &v]);
    s.ready(1).await;
    let t = s.get("/").await.text();
    assert!(t.contains(&format!("cwd={a};")), "{t}");
    assert!(
        t.contains(&format!("prefix={v};")),
        "sys.prefix is the venv: {t}"
    );
    assert!(t.contains(&format!("path0={a}/sub")), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_non_callable_attribute_is_a_clear_error() {
    let a = apps();
    for (spec, msg) in [
        (
            "pep3333:nothing_here",
            "LookupError: module 'pep3333' has no attribute 'nothing_here'",
        ),
        (
            "pep3333:not_callable",
            "TypeError: pep3333:not_callable is not a WSGI callable (it is int)",
        ),
        (
            "pep3333:create_app(undefined_name)",
            "factory arguments must be Python literals",
        ),
    ] {
        let mut s = Server::start(spec, &["--chdir", &a, "--max-boot-failures", "1"]);
        let code = tokio::task::block_in_place(|| s.wait_exit(60));
        assert_eq!(code, Some(3), "{spec}");
        assert!(s.log().contains(msg), "{spec}: {}", s.log());
    }
    let s = Server::start("pep3333:create_app('named', extra=1)", &["--chdir", &a]);
    s.ready(1).await;
    assert_eq!(s.get("/").await.text(), "factory named [('extra', 1)]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_venv_is_resolved_before_chdir() {
    // `--venv .venv --chdir apps` run from the project root: the venv is the root's, not apps/'s.
    let root = env!("CARGO_MANIFEST_DIR");
    let a = apps();
    let s = Server::start_with(
        "flask_app:app",
        &["--chdir", &a, "--venv", ".venv"],
        |cmd| {
            cmd.current_dir(root);
        },
    );
    s.ready(1).await;
    assert_eq!(s.get("/").await.text(), "hello from flask-module");
}
