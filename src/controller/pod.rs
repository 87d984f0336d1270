//! The pod template of a WsgiApp: the `proxy` and `app` containers sharing `/run/kubewsgi`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, Lifecycle,
    LifecycleHandler, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels;
use crate::crd::WsgiApp;

/// Directory shared by the two containers: sockets and static files.
pub const RUN_DIR: &str = "/run/kubewsgi";
/// The worker server's HTTP socket, the proxy's upstream.
pub const APP_SOCKET: &str = "/run/kubewsgi/app.sock";
/// The worker server's control socket (`GET /stats`).
pub const CONTROL_SOCKET: &str = "/run/kubewsgi/control.sock";
/// Writable scratch space (an `emptyDir`, as the root filesystem is read-only), also `TMPDIR`:
/// spooled request bodies, Python's `tempfile`. Not `/tmp`, so nothing of the image under `/tmp`
/// is hidden.
pub const TMP_DIR: &str = "/var/tmp";
/// Where the TLS Secret is mounted in the proxy container.
pub const TLS_DIR: &str = "/etc/kubewsgi/tls";
/// The proxy's client port, named `http`.
pub const HTTP_PORT: i32 = 8080;
/// The proxy's admin port (`/metrics`, `/healthz`, `/readyz`), named `admin`; never on the Service.
pub const ADMIN_PORT: i32 = 9090;
/// Name of the admin port in the pod template, which the autoscaler scrapes.
pub const ADMIN_PORT_NAME: &str = "admin";
/// The non-root user both containers run as (the distroless `nonroot` user).
pub const RUN_AS_USER: i64 = 65532;
/// Pod-template annotation holding a hash of the pod's configuration, so a spec change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "kubewsgi.io/config-hash";

/// Seconds the proxy keeps serving after the pod is marked for deletion, so endpoints drop it first.
const PROXY_PRE_STOP_SECONDS: i64 = 5;
/// The worker starts draining later than the proxy, so requests the proxy still holds reach a live worker.
const APP_PRE_STOP_SECONDS: i64 = 10;
/// The worker server's default graceful timeout plus the pre-stop delay and a margin.
const TERMINATION_GRACE_SECONDS: i64 = 45;
/// Both containers report why they exited in their termination message, or else in their last
/// log lines (the proxy's refusal of a flag, the app's import traceback).
const FALLBACK_TO_LOGS: &str = "FallbackToLogsOnError";

/// The pod template for `app`, with the config-hash annotation set.
pub fn template(app: &WsgiApp, proxy_image: &str) -> PodTemplateSpec {
    let name = app.metadata.name.clone().unwrap_or_default();
    let spec = &app.spec;
    let mut volumes = vec![empty_dir("run"), empty_dir("tmp")];
    let mut proxy_mounts = vec![mount("run", RUN_DIR, false), mount("tmp", TMP_DIR, false)];
    if let Some(tls) = &spec.tls {
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
        proxy_mounts.push(mount("tls", TLS_DIR, true));
    }

    let proxy = Container {
        name: "proxy".into(),
        env: Some(vec![tmpdir()]),
        image: Some(
            spec.proxy
                .image
                .clone()
                .unwrap_or_else(|| proxy_image.to_string()),
        ),
        command: Some(proxy_command(app)),
        ports: Some(vec![
            port("http", HTTP_PORT),
            port(ADMIN_PORT_NAME, ADMIN_PORT),
        ]),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        termination_message_policy: Some(FALLBACK_TO_LOGS.into()),
        lifecycle: Some(pre_stop_sleep(PROXY_PRE_STOP_SECONDS)),
        resources: spec.resources.proxy.clone(),
        security_context: Some(container_security()),
        volume_mounts: Some(proxy_mounts),
        ..Default::default()
    };
    let worker = Container {
        name: "app".into(),
        image: Some(spec.image.clone()),
        command: Some(worker_command(app)),
        // A TMPDIR of the user's replaces the scratch directory (a name may appear only once).
        env: Some(
            (!spec.env.iter().any(|e| e.name == "TMPDIR"))
                .then(tmpdir)
                .into_iter()
                .chain(spec.env.iter().cloned())
                .collect(),
        ),
        env_from: non_empty(spec.env_from.clone()),
        lifecycle: Some(pre_stop_sleep(APP_PRE_STOP_SECONDS)),
        resources: spec.resources.app.clone(),
        security_context: Some(container_security()),
        termination_message_policy: Some(FALLBACK_TO_LOGS.into()),
        volume_mounts: Some(vec![
            mount("run", RUN_DIR, false),
            mount("tmp", TMP_DIR, false),
        ]),
        ..Default::default()
    };
    let init_containers = (!spec.static_.is_empty()).then(|| vec![static_copier(app)]);

    let pt = &spec.pod_template;
    let mut pod_labels = pt.labels.clone();
    pod_labels.extend(labels::common(&name));
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pt.annotations.clone()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![proxy, worker],
            init_containers,
            volumes: Some(volumes),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS_USER),
                run_as_group: Some(RUN_AS_USER),
                fs_group: Some(RUN_AS_USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            // Service links put one variable per Service in the app's environment; WSGI apps never need them.
            enable_service_links: Some(false),
            automount_service_account_token: Some(pt.service_account_name.is_some()),
            service_account_name: pt.service_account_name.clone(),
            node_selector: non_empty_map(pt.node_selector.clone()),
            tolerations: non_empty(pt.tolerations.clone()),
            affinity: pt.affinity.clone(),
            image_pull_secrets: non_empty(pt.image_pull_secrets.clone()),
            ..Default::default()
        }),
    };
    let hash = config_hash(&template);
    template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(Default::default)
        .insert(CONFIG_HASH_ANNOTATION.into(), hash);
    template
}

/// `kubewsgi proxy …` for the spec.
pub fn proxy_command(app: &WsgiApp) -> Vec<String> {
    let spec = &app.spec;
    let mut c: Vec<String> = [
        "kubewsgi",
        "proxy",
        "--listen",
        "0.0.0.0:8080",
        "--admin",
        "0.0.0.0:9090",
    ]
    .map(String::from)
    .to_vec();
    c.extend([
        "--upstream".into(),
        format!("unix:{APP_SOCKET}"),
        "--control-socket".into(),
        CONTROL_SOCKET.into(),
    ]);
    for (i, s) in spec.static_.iter().enumerate() {
        c.extend([
            "--static".into(),
            format!("{}={}", s.url_path, static_dir(i)),
        ]);
    }
    let p = &spec.proxy;
    if let Some(v) = &p.max_body_size {
        c.extend(["--max-body-size".into(), v.clone()]);
    }
    for (flag, v) in [
        ("--client-timeout", p.client_timeout_seconds),
        ("--upstream-timeout", p.upstream_timeout_seconds),
        ("--queue-timeout", p.queue_timeout_seconds),
    ] {
        if let Some(v) = v {
            c.extend([flag.into(), v.to_string()]);
        }
    }
    if spec.tls.is_some() {
        c.extend([
            "--tls-cert".into(),
            format!("{TLS_DIR}/tls.crt"),
            "--tls-key".into(),
            format!("{TLS_DIR}/tls.key"),
        ]);
    }
    c
}

/// `kubewsgi worker APP …` for the spec.
pub fn worker_command(app: &WsgiApp) -> Vec<String> {
    let w = &app.spec.workers;
    let mut c: Vec<String> = vec!["kubewsgi".into(), "worker".into(), app.spec.app.clone()];
    c.extend([
        "--socket".into(),
        APP_SOCKET.into(),
        "--control-socket".into(),
        CONTROL_SOCKET.into(),
    ]);
    c.extend([
        "--workers".into(),
        w.processes.to_string(),
        "--threads".into(),
        w.threads.to_string(),
    ]);
    for (flag, v) in [
        ("--min-workers", w.min_processes.map(i64::from)),
        ("--max-workers", w.max_processes.map(i64::from)),
        ("--timeout", w.timeout_seconds.map(i64::from)),
        ("--max-requests", w.max_requests),
    ] {
        if let Some(v) = v {
            c.extend([flag.into(), v.to_string()]);
        }
    }
    c
}

/// Where the `i`-th static directory is copied in the shared volume.
pub fn static_dir(i: usize) -> String {
    format!("{RUN_DIR}/static/{i}")
}

/// Init container from the app image copying each static directory into the shared volume; paths go
/// as positional arguments so no quoting of user input is needed.
fn static_copier(app: &WsgiApp) -> Container {
    let script = r#"set -eu
while [ "$#" -gt 0 ]; do mkdir -p "$2"; cp -a -- "$1/." "$2/"; shift 2; done"#;
    let mut command: Vec<String> = vec![
        "/bin/sh".into(),
        "-c".into(),
        script.into(),
        "copy-static".into(),
    ];
    for (i, s) in app.spec.static_.iter().enumerate() {
        command.extend([s.dir.clone(), static_dir(i)]);
    }
    Container {
        name: "static".into(),
        image: Some(app.spec.image.clone()),
        command: Some(command),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![mount("run", RUN_DIR, false)]),
        resources: app.spec.resources.app.clone(),
        ..Default::default()
    }
}

/// The restricted Pod Security Standard for one container.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tmpdir() -> EnvVar {
    EnvVar {
        name: "TMPDIR".into(),
        value: Some(TMP_DIR.into()),
        ..Default::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn pre_stop_sleep(seconds: i64) -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction { seconds }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn non_empty_map(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

/// FNV-1a over the template's JSON: stable across builds and Rust versions, unlike `DefaultHasher`,
/// so upgrading the operator does not roll every pod.
fn config_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).expect("a pod template always serializes");
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(env: serde_json::Value) -> WsgiApp {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubewsgi.io/v1alpha1", "kind": "WsgiApp",
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {"image": "i", "app": "m:app", "env": env}
        }))
        .unwrap()
    }

    fn env_of(t: &PodTemplateSpec, container: &str) -> Vec<(String, Option<String>)> {
        let spec = t.spec.as_ref().unwrap();
        let c = spec
            .containers
            .iter()
            .find(|c| c.name == container)
            .unwrap();
        c.env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn a_tmpdir_of_the_user_replaces_the_scratch_one() {
        let scratch = ("TMPDIR".to_string(), Some(TMP_DIR.to_string()));
        let t = template(&app(serde_json::json!([{"name": "A", "value": "1"}])), "p");
        assert_eq!(
            env_of(&t, "app"),
            vec![scratch.clone(), ("A".into(), Some("1".into()))]
        );
        // Server-side apply refuses a container env with a name twice, so the user's wins alone.
        let t = template(
            &app(serde_json::json!([{"name": "TMPDIR", "value": "/x"}])),
            "p",
        );
        assert_eq!(
            env_of(&t, "app"),
            vec![("TMPDIR".into(), Some("/x".into()))]
        );
        assert_eq!(env_of(&t, "proxy"), vec![scratch]);
    }

    #[test]
    fn both_containers_fall_back_to_their_logs_for_the_termination_message() {
        let t = template(&app(serde_json::json!([])), "p");
        for c in &t.spec.unwrap().containers {
            assert_eq!(
                c.termination_message_policy.as_deref(),
                Some(FALLBACK_TO_LOGS),
                "{}",
                c.name
            );
        }
    }
}
