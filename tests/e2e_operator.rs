//! End to end on the full local control plane: the operator turns WsgiApps into Deployments whose
//! pods the node agent runs as real `kubewsgi proxy` + `kubewsgi worker` processes, each pod in its
//! own network namespace; requests go to the pod addresses the EndpointSlice lists.

#[path = "support_cp/mod.rs"]
mod support_cp;

#[path = "controller_support/mod.rs"]
mod controller_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controller_support::{Operator, install_crd};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use support_cp::{ControlPlane, is_ready, netns_names, pids_with_env, pod_get};

/// Generous: pods start Python and two processes each on a small shared machine.
const TIMEOUT: Duration = Duration::from_secs(150);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A control plane with the node agent, the CRD, the example images mapped and the operator running.
fn cluster() -> (ControlPlane, Operator) {
    let cp = ControlPlane::start_full();
    cp.write_images(&[
        ("example/flask:1", &repo().join("examples/hello")),
        ("example/django:1", &repo().join("examples/django")),
    ]);
    install_crd(&cp);
    let operator = Operator::start(&cp, &[]);
    (cp, operator)
}

fn apply(cp: &ControlPlane, name: &str, yaml: &str) {
    let path = cp.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write manifest");
    cp.kubectl_ok(["apply", "-f", path.to_str().expect("path")]);
}

const FLASK: &str = r#"
apiVersion: kubewsgi.io/v1alpha1
kind: WsgiApp
metadata: {name: hello, namespace: default}
spec:
  image: example/flask:1
  app: "app:app"
  replicas: 2
  workers: {processes: 1, threads: 4}
  static: [{urlPath: /static, dir: static}]
"#;

const DJANGO: &str = r#"
apiVersion: kubewsgi.io/v1alpha1
kind: WsgiApp
metadata: {name: site, namespace: default}
spec:
  image: example/django:1
  app: "mysite.wsgi:application"
  replicas: 1
  workers: {processes: 1, threads: 2}
  static: [{urlPath: /static, dir: collected}]
"#;

/// The WsgiApp's pods once exactly `n` exist, none terminating, all Ready.
async fn ready_pods(cp: &ControlPlane, pods: &Api<Pod>, app: &str, n: usize) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("kubewsgi.io/app={app}"));
    cp.wait(&format!("{n} ready pods of {app}"), TIMEOUT, || async {
        let list = pods.list(&lp).await.ok()?.items;
        (list.len() == n && list.iter().all(is_ready)).then_some(list)
    })
    .await
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a ready pod has an IP")
}

/// Ready endpoint addresses (port 8080) of the Service's EndpointSlices, as a Service proxy sees them.
async fn ready_endpoints(slices: &Api<EndpointSlice>, service: &str) -> BTreeSet<String> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let Ok(list) = slices.list(&lp).await else {
        return BTreeSet::new();
    };
    let mut out = BTreeSet::new();
    for s in list.items {
        let port = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("http"))
            .and_then(|p| p.port);
        for e in s.endpoints.iter().flatten() {
            let ready = e.conditions.as_ref().and_then(|c| c.ready) == Some(true);
            if ready && let Some(port) = port {
                out.extend(e.addresses.iter().map(|a| format!("{a}:{port}")));
            }
        }
    }
    out
}

#[test]
fn flask_and_django_apps_serve_from_pods_and_are_collected() {
    let (cp, _operator) = cluster();
    apply(&cp, "flask", FLASK);
    apply(&cp, "django", DJANGO);
    runtime().block_on(async {
        let client = cp.kube_client().await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

        let hello = ready_pods(&cp, &pods, "hello", 2).await;
        let site = ready_pods(&cp, &pods, "site", 1).await;
        let hello_addrs: BTreeSet<String> = hello
            .iter()
            .map(|p| format!("{}:8080", pod_ip(p)))
            .collect();
        for addr in &hello_addrs {
            assert!(addr.starts_with("10.244.0."), "pod address {addr}");
        }
        // The endpointslice controller lists exactly the ready pods on the proxy's port.
        cp.wait("the EndpointSlice to list both pods", TIMEOUT, || async {
            (ready_endpoints(&slices, "hello").await == hello_addrs).then_some(())
        })
        .await;

        let robots = std::fs::read(repo().join("examples/hello/static/robots.txt")).unwrap();
        for addr in &hello_addrs {
            let r = pod_get(addr, "/api/hello?name=e2e", REQUEST_TIMEOUT)
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{addr}: {}", r.text());
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["message"], "hello, e2e", "{addr}");
            // The proxy forwarded the host's address as the client's.
            assert!(
                v["client"].as_str().unwrap().starts_with("10.244.0."),
                "{v}"
            );
            // The Flask app has no static route: only the proxy can answer this.
            let r = pod_get(addr, "/static/robots.txt", REQUEST_TIMEOUT)
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{addr}");
            assert_eq!(r.body, robots, "{addr}");
            assert!(r.header("etag").is_some(), "static answer without ETag");
        }

        // Django: a template rendered by the worker naming its hashed stylesheet, which the proxy
        // serves from the collected files the init container copied into the pod's volume.
        let site_addr = format!("{}:8080", pod_ip(&site[0]));
        let page = pod_get(&site_addr, "/", REQUEST_TIMEOUT).await.unwrap();
        assert_eq!(page.status, 200, "{}", page.text());
        let text = page.text();
        assert!(text.contains("Hello from Django"), "{text}");
        let pod_name = site[0].metadata.name.clone().unwrap();
        assert!(text.contains(&pod_name), "the page names its pod: {text}");
        let css_path = "/static/site.fb9604b58941.css";
        assert!(text.contains(css_path), "{text}");
        let css = pod_get(&site_addr, css_path, REQUEST_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(css.status, 200);
        assert_eq!(
            css.body,
            std::fs::read(repo().join("examples/django/collected/site.fb9604b58941.css")).unwrap()
        );
        let info = pod_get(&site_addr, "/api/info", REQUEST_TIMEOUT)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&info.body).unwrap();
        assert_eq!(v["framework"], "django", "{v}");

        // The operator's status counts the pods the node runs.
        cp.wait(
            "WsgiApp hello to report 2 ready replicas",
            TIMEOUT,
            || async {
                let out = cp.kubectl([
                    "get",
                    "wsgiapp",
                    "hello",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ]);
                (String::from_utf8_lossy(&out.stdout).trim() == "2").then_some(())
            },
        )
        .await;

        // Each pod's processes run inside its own network namespace.
        let names: Vec<String> = hello
            .iter()
            .chain(&site)
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        for name in &names {
            assert!(
                pids_with_env("HOSTNAME", name).len() >= 2,
                "proxy and worker processes of {name}"
            );
        }
        // The agent names each pod's network namespace after the pod's UID.
        let uid_tags: Vec<String> = hello
            .iter()
            .chain(&site)
            .map(|p| p.metadata.uid.clone().unwrap().replace('-', "")[..12].to_string())
            .collect();
        let has_netns = |tag: &str| {
            netns_names()
                .iter()
                .any(|n| n.ends_with(&format!("-{tag}")))
        };
        for tag in &uid_tags {
            assert!(has_netns(tag), "a network namespace for pod {tag}");
        }

        // Deleting the WsgiApps lets the garbage collector remove everything they own; the node
        // agent stops the processes (preStop, SIGTERM) and removes the pods' namespaces.
        cp.kubectl_ok(["delete", "wsgiapp", "hello", "site", "--wait=false"]);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        cp.wait(
            "Deployments, Services and pods to be collected",
            TIMEOUT,
            || async {
                let gone = deployments.get_opt("hello").await.ok()?.is_none()
                    && deployments.get_opt("site").await.ok()?.is_none()
                    && services.get_opt("hello").await.ok()?.is_none()
                    && services.get_opt("site").await.ok()?.is_none()
                    && pods
                        .list(&ListParams::default().labels("kubewsgi.io/app in (hello,site)"))
                        .await
                        .ok()?
                        .items
                        .is_empty();
                gone.then_some(())
            },
        )
        .await;
        for name in &names {
            assert!(
                pids_with_env("HOSTNAME", name).is_empty(),
                "processes of {name} still run after its pod was removed"
            );
        }
        for tag in &uid_tags {
            assert!(
                !has_netns(tag),
                "the network namespace of pod {tag} is removed"
            );
        }
        for addr in &hello_addrs {
            assert!(
                pod_get(addr, "/", Duration::from_secs(3)).await.is_err(),
                "{addr} still answers"
            );
        }
    });
}

#[test]
fn spec_change_rolls_pods_with_no_failed_request_under_load() {
    let (cp, _operator) = cluster();
    apply(&cp, "flask", FLASK);
    runtime().block_on(async {
        let client = cp.kube_client().await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let old: BTreeSet<String> = ready_pods(&cp, &pods, "hello", 2)
            .await
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();

        // Clients follow the Service's ready endpoints the way a Service proxy does.
        let endpoints = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let refresher = {
            let (endpoints, stop, slices) = (endpoints.clone(), stop.clone(), slices.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ready = ready_endpoints(&slices, "hello").await;
                    if !ready.is_empty() {
                        *endpoints.lock().unwrap() = ready.into_iter().collect();
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        cp.wait("ready endpoints", TIMEOUT, || async {
            (endpoints.lock().unwrap().len() == 2).then_some(())
        })
        .await;
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut clients = Vec::new();
        for i in 0..3 {
            let (endpoints, stop, ok, failures) = (
                endpoints.clone(),
                stop.clone(),
                ok.clone(),
                failures.clone(),
            );
            clients.push(tokio::spawn(async move {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let addr = {
                        let eps = endpoints.lock().unwrap();
                        eps[n % eps.len()].clone()
                    };
                    n += 1;
                    match pod_get(&addr, "/api/hello?name=roll", REQUEST_TIMEOUT).await {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.lock().unwrap().push(format!(
                            "{addr}: {} {}",
                            r.status,
                            r.text()
                        )),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }

        // A spec change (new environment) changes the pod template: the Deployment rolls.
        cp.kubectl_ok([
            "patch",
            "wsgiapp",
            "hello",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"env":[{"name":"GREETING","value":"v2"}]}}"#,
        ]);
        let lp = ListParams::default().labels("kubewsgi.io/app=hello");
        let new = cp
            .wait("the rollout to replace both pods", TIMEOUT, || async {
                let list = pods.list(&lp).await.ok()?.items;
                let names: BTreeSet<String> = list
                    .iter()
                    .map(|p| p.metadata.name.clone().unwrap())
                    .collect();
                let done = list.len() == 2 && list.iter().all(is_ready) && names.is_disjoint(&old);
                done.then_some(list)
            })
            .await;
        for p in &new {
            let app = p
                .spec
                .as_ref()
                .unwrap()
                .containers
                .iter()
                .find(|c| c.name == "app");
            let env = app.and_then(|c| c.env.clone()).unwrap_or_default();
            assert!(env.iter().any(|e| e.name == "GREETING"), "new pod template");
            let name = p.metadata.name.clone().unwrap();
            assert!(
                !pids_with_env("GREETING", "v2").is_empty(),
                "the new worker runs with the new environment ({name})"
            );
        }
        // Keep the load on until the endpoints list only the new pods.
        let new_addrs: BTreeSet<String> =
            new.iter().map(|p| format!("{}:8080", pod_ip(p))).collect();
        cp.wait("endpoints of the new pods only", TIMEOUT, || async {
            (endpoints
                .lock()
                .unwrap()
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                == new_addrs)
                .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        refresher.await.unwrap();

        let failures = failures.lock().unwrap();
        let ok = ok.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} of {} requests failed during the rollout: {:?}",
            failures.len(),
            failures.len() + ok,
            &failures[..failures.len().min(10)]
        );
        assert!(ok >= 50, "only {ok} requests were sent during the rollout");
    });
}

#[test]
fn a_crashing_app_restarts_with_its_traceback_in_the_pod_status() {
    let (cp, _operator) = cluster();
    apply(
        &cp,
        "broken",
        r#"
apiVersion: kubewsgi.io/v1alpha1
kind: WsgiApp
metadata: {name: broken, namespace: default}
spec:
  image: example/flask:1
  app: "no_such_module:app"
  replicas: 1
"#,
    );
    runtime().block_on(async {
        let client = cp.kube_client().await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let lp = ListParams::default().labels("kubewsgi.io/app=broken");
        // The worker writes the import error to /dev/termination-log, which the node agent maps
        // to a file per container; the restart moves it to lastState.
        let (pod, message) = cp
            .wait(
                "a restarted app container with its traceback",
                TIMEOUT,
                || async {
                    let list = pods.list(&lp).await.ok()?.items;
                    list.iter().find_map(|p| {
                        let st = p.status.as_ref()?;
                        let app = st
                            .container_statuses
                            .iter()
                            .flatten()
                            .find(|c| c.name == "app")?;
                        let last = app.last_state.as_ref()?.terminated.as_ref()?;
                        (app.restart_count >= 1 && last.exit_code != 0)
                            .then(|| (p.clone(), last.message.clone().unwrap_or_default()))
                    })
                },
            )
            .await;
        assert!(
            message.contains("no_such_module"),
            "termination message: {message:?}"
        );
        assert!(!is_ready(&pod), "a pod whose app cannot start is not Ready");
    });
}
