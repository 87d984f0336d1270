//! Shape of the generated WsgiApp CRD: names, subresources, printer columns, descriptions, validation.

use kube::CustomResourceExt;
use kubewsgi::crd::WsgiApp;
use serde_json::Value;

fn crd() -> Value {
    serde_json::to_value(WsgiApp::crd()).unwrap()
}

fn version() -> Value {
    crd()["spec"]["versions"][0].clone()
}

fn spec_schema() -> Value {
    version()["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

#[test]
fn names_scope_and_subresources() {
    let crd = crd();
    assert_eq!(crd["metadata"]["name"], "wsgiapps.kubewsgi.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "WsgiApp");
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["wsgi"])
    );
    let v = version();
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["subresources"]["status"], serde_json::json!({}));
    let scale = &v["subresources"]["scale"];
    assert_eq!(scale["specReplicasPath"], ".spec.replicas");
    assert_eq!(scale["statusReplicasPath"], ".status.replicas");
    assert_eq!(scale["labelSelectorPath"], ".status.selector");
}

#[test]
fn printer_columns() {
    let cols: Vec<String> = version()["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(cols, ["Ready", "Replicas", "Queue", "Age"]);
}

/// Every property of the spec and status has a description, for `kubectl explain`.
#[test]
fn every_field_is_described() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if schema
            .get("description")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            missing.push(path.to_string());
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                walk(&format!("{path}.{k}"), v, missing);
            }
        }
        if let Some(props) = schema
            .get("items")
            .and_then(|i| i.get("properties"))
            .and_then(Value::as_object)
        {
            for (k, v) in props {
                walk(&format!("{path}[].{k}"), v, missing);
            }
        }
    }
    let root = version()["schema"]["openAPIV3Schema"].clone();
    let mut missing = Vec::new();
    for part in ["spec", "status"] {
        walk(part, &root["properties"][part], &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn validation_is_in_the_schema() {
    let spec = spec_schema();
    let p = &spec["properties"];
    assert_eq!(spec["required"], serde_json::json!(["app", "image"]));
    assert_eq!(p["image"]["minLength"], 1);
    assert!(p["app"]["pattern"].is_string());
    assert_eq!(p["workers"]["properties"]["processes"]["minimum"], 1.0);
    assert_eq!(p["workers"]["properties"]["threads"]["minimum"], 1.0);
    assert_eq!(
        p["autoscaling"]["properties"]["mode"]["enum"],
        serde_json::json!(["builtin", "hpa"])
    );
    assert!(p["proxy"]["properties"]["maxBodySize"]["pattern"].is_string());
    let rules = |v: &Value| {
        v["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(rules(&p["autoscaling"]).contains("self.minReplicas <= self.maxReplicas"));
    assert!(rules(&p["workers"]).contains("self.minProcesses <= self.maxProcesses"));
}

/// The `app` pattern accepts the three forms the worker server loads and nothing else (checked
/// with Python's `re`, whose syntax matches the API server's for this pattern).
#[test]
fn app_pattern() {
    let ok = [
        "app:app",
        "mysite.wsgi:application",
        "pkg.mod:create_app()",
        "pkg:make('x', 1)",
        "src/app.py:app",
        "app:obj.wsgi",
    ];
    let bad = [
        "app",
        ":app",
        "app:",
        "app:1x",
        "my app:app",
        "dir/app.txt:app",
        "a-b:app",
    ];
    let script =
        "import re,sys\nfor s in sys.argv[2:]: print('1' if re.search(sys.argv[1], s) else '0')";
    let out = std::process::Command::new("python3")
        .args(["-c", script, kubewsgi::crd::APP_PATTERN])
        .args(ok.iter().chain(bad.iter()))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<bool> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l == "1")
        .collect();
    let expected: Vec<bool> = ok
        .iter()
        .map(|_| true)
        .chain(bad.iter().map(|_| false))
        .collect();
    assert_eq!(
        verdicts, expected,
        "accepted/refused for {ok:?} then {bad:?}"
    );
}
