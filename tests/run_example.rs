//! The README's first command: the Flask example app with its static files through `kubewsgi run`.

mod run_support;

use run_support::*;

#[test]
fn hello_example_serves_pages_api_and_static_files() {
    let dir = root().join("examples/hello");
    let mount = format!("/static={}", dir.join("static").display());
    let r = Run::start("app:app", &dir, &["--static", &mount]);
    let page = r.get("/");
    assert_eq!(status(&page), 200, "{page}");
    assert!(body(&page).contains("/static/css/site.css"), "{page}");
    let api = r.get("/api/hello?name=kube");
    let j = json(&api);
    assert_eq!(j["message"], "hello, kube");
    assert_eq!(j["client"], "127.0.0.1");
    assert_eq!(j["host"], "example.test");
    let css = r.get("/static/css/site.css");
    assert_eq!(status(&css), 200);
    assert!(
        header(&css, "content-type")
            .unwrap()
            .starts_with("text/css")
    );
    assert_eq!(
        body(&css),
        std::fs::read_to_string(dir.join("static/css/site.css")).unwrap()
    );
    let (out, ok) = curl(&[
        "--data-binary",
        "abc",
        &format!("http://{}/api/echo", r.addr),
    ]);
    assert!(ok, "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["length"],
        3
    );
    assert_eq!(status(&r.get("/static/missing.css")), 404);
}
