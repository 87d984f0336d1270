//! The generated CRD in a real kube-apiserver: accepted as structural, documented for `kubectl
//! explain`, defaults filled in, and invalid WsgiApps refused with a message naming the field.

#[path = "support_cp/mod.rs"]
mod support_cp;

#[path = "controller_support/mod.rs"]
mod controller_support;

use std::io::Write;
use std::process::Stdio;

use support_cp::ControlPlane;

/// `kubectl apply` of a WsgiApp with `spec` (YAML flow mapping): (success, combined output).
fn apply(cp: &ControlPlane, name: &str, spec: &str) -> (bool, String) {
    let manifest = format!(
        "apiVersion: kubewsgi.io/v1alpha1\nkind: WsgiApp\nmetadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
    );
    let mut child = cp
        .command("kubectl")
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_api_server_validates_wsgiapps() {
    let cp = ControlPlane::start();
    controller_support::install_crd(&cp);

    let crd = cp.kubectl_ok([
        "get",
        "crd",
        "wsgiapps.kubewsgi.io",
        "-o",
        "jsonpath={.status.conditions}",
    ]);
    assert!(!crd.contains("NonStructuralSchema"), "{crd}");

    // Each case: spec, then the field the refusal must name.
    let refused = [
        ("{app: 'x:y'}", "spec.image"),
        ("{image: '', app: 'x:y'}", "spec.image"),
        ("{image: i, app: nocolon}", "spec.app"),
        ("{image: i, app: 'a b:c'}", "spec.app"),
        ("{image: i, app: 'x:y', replicas: -1}", "spec.replicas"),
        (
            "{image: i, app: 'x:y', workers: {processes: 0}}",
            "spec.workers.processes",
        ),
        (
            "{image: i, app: 'x:y', workers: {threads: 0}}",
            "spec.workers.threads",
        ),
        (
            "{image: i, app: 'x:y', workers: {minProcesses: 4, maxProcesses: 2}}",
            "spec.workers.minProcesses",
        ),
        (
            "{image: i, app: 'x:y', autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 2}}",
            "spec.autoscaling.minReplicas",
        ),
        (
            "{image: i, app: 'x:y', autoscaling: {maxReplicas: 0}}",
            "spec.autoscaling.maxReplicas",
        ),
        (
            "{image: i, app: 'x:y', autoscaling: {mode: keda}}",
            "spec.autoscaling.mode",
        ),
        (
            "{image: i, app: 'x:y', autoscaling: {targetUtilization: 1.5}}",
            "spec.autoscaling.targetUtilization",
        ),
        (
            "{image: i, app: 'x:y', proxy: {maxBodySize: '10 MB'}}",
            "spec.proxy.maxBodySize",
        ),
        // Beyond 2^64 bytes: the proxy could not take it, so the API server does not either.
        (
            "{image: i, app: 'x:y', proxy: {maxBodySize: 99999999999999999999g}}",
            "spec.proxy.maxBodySize",
        ),
        (
            "{image: i, app: 'x:y', env: [{name: A, value: '1'}, {name: A, value: '2'}]}",
            "spec.env[1]",
        ),
        (
            "{image: i, app: 'x:y', static: [{urlPath: static, dir: s}]}",
            "spec.static[0].urlPath",
        ),
        (
            "{image: i, app: 'x:y', service: {port: 70000}}",
            "spec.service.port",
        ),
        (
            "{image: i, app: 'x:y', service: {type: ExternalName}}",
            "spec.service.type",
        ),
    ];
    for (spec, field) in refused {
        let (ok, out) = apply(&cp, "bad", spec);
        assert!(!ok, "{spec} was accepted: {out}");
        assert!(
            out.contains(field),
            "refusal of {spec} does not name {field}: {out}"
        );
    }

    // The name becomes the Service's name and a label value: a DNS subdomain that is not a
    // 63-character DNS-1035 label is refused before anything is created for it.
    let long = format!("a{}", "b".repeat(63));
    for name in [long.as_str(), "my.app", "1app"] {
        let (ok, out) = apply(&cp, name, "{image: i, app: 'x:y'}");
        assert!(!ok, "name {name} was accepted: {out}");
        assert!(
            out.contains("metadata.name must be a DNS-1035 label"),
            "refusal of name {name} does not say why: {out}"
        );
    }
    let longest = format!("a{}", "b".repeat(62));

    for (name, spec) in [
        (longest.as_str(), "{image: i, app: 'x:y'}"),
        (
            "module",
            "{image: 'reg.example/app:1', app: 'mysite.wsgi:application'}",
        ),
        ("factory", "{image: i, app: 'app:create_app()'}"),
        (
            "path",
            "{image: i, app: 'src/app.py:app', workers: {minProcesses: 1, maxProcesses: 4}}",
        ),
    ] {
        let (ok, out) = apply(&cp, name, spec);
        assert!(ok, "{spec} was refused: {out}");
    }
    // Defaults come from the schema, so every reader sees the effective values.
    let defaults = cp.kubectl_ok([
        "get",
        "wsgiapp",
        "module",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.replicas} {.spec.workers.processes} {.spec.workers.threads} {.spec.service.port} {.spec.autoscaling.mode}",
    ]);
    assert_eq!(defaults, "1 2 4 80 builtin");

    let explain = cp.kubectl_ok(["explain", "wsgiapp.spec.autoscaling.targetQueueDepth"]);
    assert!(explain.contains("in-flight requests per pod"), "{explain}");
    let table = cp.kubectl_ok(["get", "wsgi", "-n", "default"]);
    let header = table.lines().next().unwrap();
    for col in ["NAME", "READY", "REPLICAS", "QUEUE", "AGE"] {
        assert!(header.contains(col), "no {col} column in {header}");
    }
}
