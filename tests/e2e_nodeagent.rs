//! The node agent of the full local control plane, through plain pods: init order, environment
//! (downward API, ConfigMap/Secret keys, envFrom), volumes private to the pod, the termination
//! log, probes and restarts, preStop and the grace period.

#[path = "support_cp/mod.rs"]
mod support_cp;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::Api;
use support_cp::{ControlPlane, pids_with_env, pod_get};

const TIMEOUT: Duration = Duration::from_secs(120);

fn wait_for<T>(cp: &ControlPlane, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", cp.log_tail());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn apply(cp: &ControlPlane, name: &str, yaml: &str) {
    let path = cp.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write manifest");
    cp.kubectl_ok(["apply", "-f", path.to_str().expect("path")]);
}

fn get_pod(cp: &ControlPlane, name: &str) -> Option<Pod> {
    let out = cp.kubectl(["get", "pod", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("pod JSON"))
}

/// The directory the agent keeps a running pod's volumes in.
fn volume(cp: &ControlPlane, pod: &Pod, name: &str) -> PathBuf {
    let m = &pod.metadata;
    cp.dir.join(format!(
        "nodeagent/{}_{}_{}/volumes/{name}",
        m.namespace.as_deref().unwrap(),
        m.name.as_deref().unwrap(),
        m.uid.as_deref().unwrap()
    ))
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// One control plane for every check: the pods run side by side on its node.
fn cluster(images_dir: &Path) -> ControlPlane {
    let cp = ControlPlane::start_full();
    std::fs::write(images_dir.join("marker"), "from the image\n").unwrap();
    // The long form also names the image's WORKDIR, where its directory appears.
    let images = format!(
        "example/tools:1: {dir}\nexample/workdir:1: {{dir: {dir}, workingDir: /run/kubewsgi-e2e/wd}}\n",
        dir = images_dir.display()
    );
    std::fs::write(cp.dir.join("images.yaml"), images).unwrap();
    cp
}

#[test]
fn pods_get_their_environment_volumes_and_private_mounts() {
    let image = tempfile::tempdir().unwrap();
    let cp = cluster(image.path());
    apply(
        &cp,
        "config",
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello-from-configmap, mode: fast}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {token: s3cret}
"#,
    );
    apply(
        &cp,
        "env",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: env, labels: {tier: e2e}}
spec:
  terminationGracePeriodSeconds: 2
  volumes:
  - {name: data, emptyDir: {}}
  - {name: cfg, configMap: {name: settings}}
  - {name: sec, secret: {secretName: creds}}
  - {name: info, downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}}
  initContainers:
  - name: side
    image: example/tools:1
    restartPolicy: Always
    command: [sh, -c, 'echo side > /run/kubewsgi-e2e/data/side; exec sleep 600']
    volumeMounts: [{name: data, mountPath: /run/kubewsgi-e2e/data}]
  - name: init
    image: example/tools:1
    command: [sh, -c, 'echo init > /run/kubewsgi-e2e/data/order']
    volumeMounts: [{name: data, mountPath: /run/kubewsgi-e2e/data}]
  containers:
  - name: a
    image: example/tools:1
    workingDir: /run/kubewsgi-e2e/app
    command: [sh, -c]
    args:
    - |
      set -e
      d=/run/kubewsgi-e2e/data
      echo a >> $d/order
      cat /run/kubewsgi-e2e/cfg/greeting > $d/cfg
      cat /run/kubewsgi-e2e/sec/token > $d/sec
      cat /run/kubewsgi-e2e/info/labels > $d/labels
      pwd > $d/pwd
      cat marker > $d/marker
      env > $d/env.tmp && mv $d/env.tmp $d/env
      exec sleep 600
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: FROM_CM, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}
    - {name: FROM_SECRET, valueFrom: {secretKeyRef: {name: creds, key: token}}}
    - {name: COMPOSED, value: "$(POD_NAME)-suffix"}
    envFrom: [{prefix: CM_, configMapRef: {name: settings}}]
    resources: {limits: {memory: 64Mi}}
    volumeMounts:
    - {name: data, mountPath: /run/kubewsgi-e2e/data}
    - {name: cfg, mountPath: /run/kubewsgi-e2e/cfg, readOnly: true}
    - {name: sec, mountPath: /run/kubewsgi-e2e/sec, readOnly: true}
    - {name: info, mountPath: /run/kubewsgi-e2e/info}
  - name: b
    image: example/tools:1
    command: [sh, -c, 'd=/run/kubewsgi-e2e/data; while [ ! -f $d/env ]; do sleep 0.1; done; echo b-sees-a > $d/b; exec sleep 600']
    volumeMounts: [{name: data, mountPath: /run/kubewsgi-e2e/data}]
  - name: c
    image: example/workdir:1
    command: [sh, -c, 'd=/run/kubewsgi-e2e/data; pwd > $d/pwd-c; cat marker > $d/marker-c; exec sleep 600']
    volumeMounts: [{name: data, mountPath: /run/kubewsgi-e2e/data}]
"#,
    );
    // The containers write their files before the agent's next status write (it coalesces
    // changes over 100 ms), so the pod is read again until its status has caught up too.
    let pod = wait_for(&cp, "pod env running with its containers' files", || {
        let pod = get_pod(&cp, "env")?;
        read(&volume(&cp, &pod, "data").join("b"))?;
        read(&volume(&cp, &pod, "data").join("marker-c"))?;
        read(&volume(&cp, &pod, "data").join("side"))?;
        let status = pod.status.as_ref()?;
        let running = |s: &[ContainerStatus]| {
            s.iter()
                .filter(|c| c.name != "init")
                .all(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
        };
        (status.phase.as_deref() == Some("Running")
            && running(status.init_container_statuses.as_deref()?)
            && running(status.container_statuses.as_deref()?))
        .then_some(pod)
    });
    let data = volume(&cp, &pod, "data");
    let status = pod.status.clone().unwrap();
    // A sidecar (an init container with restartPolicy Always) keeps running beside the others.
    assert_eq!(read(&data.join("side")).unwrap(), "side\n");
    let side = &status.init_container_statuses.as_ref().unwrap()[0];
    assert!(side.state.as_ref().unwrap().running.is_some(), "{side:?}");
    assert_eq!(
        read(&data.join("order")).unwrap(),
        "init\na\n",
        "init runs first"
    );
    assert_eq!(read(&data.join("cfg")).unwrap(), "hello-from-configmap");
    assert_eq!(read(&data.join("sec")).unwrap(), "s3cret");
    assert!(read(&data.join("labels")).unwrap().contains("tier=\"e2e\""));
    // The image directory is bind-mounted at the container's workingDir.
    assert_eq!(read(&data.join("pwd")).unwrap(), "/run/kubewsgi-e2e/app\n");
    assert_eq!(read(&data.join("marker")).unwrap(), "from the image\n");
    assert_eq!(read(&data.join("pwd-c")).unwrap(), "/run/kubewsgi-e2e/wd\n");
    assert_eq!(read(&data.join("marker-c")).unwrap(), "from the image\n");
    let env = read(&data.join("env")).unwrap();
    let ip = status.pod_ip.clone().unwrap();
    for want in [
        "POD_NAME=env".to_string(),
        "POD_NAMESPACE=default".into(),
        format!("POD_UID={}", pod.metadata.uid.as_deref().unwrap()),
        format!("POD_IP={ip}"),
        "NODE=kubewsgi-node".into(),
        "MEM_MI=64".into(),
        "FROM_CM=hello-from-configmap".into(),
        "FROM_SECRET=s3cret".into(),
        "COMPOSED=env-suffix".into(),
        "CM_mode=fast".into(),
        "HOSTNAME=env".into(),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} in\n{env}");
    }
    assert!(ip.starts_with("10.244.0."), "pod IP {ip}");
    let host_ip = status.host_ip.clone().unwrap_or_default();
    assert!(host_ip.starts_with("10.244.0."), "host IP {host_ip}");
    // The mounts live in the containers' own mount namespaces, not on the host.
    assert!(!Path::new("/run/kubewsgi-e2e/data/env").exists());
    assert!(!Path::new("/run/kubewsgi-e2e/app/marker").exists());

    cp.kubectl_ok(["delete", "pod", "env", "--wait=true", "--timeout=60s"]);
    assert!(
        pids_with_env("HOSTNAME", "env").is_empty(),
        "the pod's processes are gone"
    );
}

#[test]
fn termination_log_probes_restarts_and_graceful_stop() {
    let image = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let cp = cluster(image.path());
    let host_dir = host.path().display().to_string();
    apply(
        &cp,
        "pods",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: done}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: example/tools:1
    command: [sh, -c, 'echo last words > /dev/termination-log; exit 3']
---
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 2
  volumes: [{{name: data, emptyDir: {{}}}}]
  containers:
  - name: web
    image: example/tools:1
    command: [sh, -c, 'd=/run/kubewsgi-e2e/web; touch $d/alive; [ -f $d/started ] && echo again > $d/restarted; touch $d/started; exec python3 -m http.server 8080 --bind 0.0.0.0']
    ports: [{{name: web, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{port: web, path: /}}, periodSeconds: 1}}
    livenessProbe: {{exec: {{command: [cat, /run/kubewsgi-e2e/web/alive]}}, periodSeconds: 1, failureThreshold: 2}}
    volumeMounts: [{{name: data, mountPath: /run/kubewsgi-e2e/web}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: stopper}}
spec:
  terminationGracePeriodSeconds: 30
  volumes: [{{name: host, hostPath: {{path: {host_dir}}}}}]
  containers:
  - name: polite
    image: example/tools:1
    command: [sh, -c, 'trap "echo term > /h/term; exit 0" TERM; while :; do sleep 0.2; done']
    lifecycle: {{preStop: {{exec: {{command: [sh, -c, 'echo prestop > /h/prestop']}}}}}}
    volumeMounts: [{{name: host, mountPath: /h}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: deaf
    image: example/tools:1
    command: [sh, -c, 'trap "" TERM; while :; do sleep 0.2; done']
"#
        ),
    );

    // The termination log reaches the status of a finished container.
    let done = wait_for(&cp, "pod done to fail", || {
        let p = get_pod(&cp, "done")?;
        (p.status.as_ref()?.phase.as_deref()? == "Failed").then_some(p)
    });
    let st = &done.status.unwrap().container_statuses.unwrap()[0];
    let t = st.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(t.exit_code, 3);
    assert_eq!(t.message.as_deref(), Some("last words\n"));
    assert_eq!(st.restart_count, 0, "restartPolicy Never");

    // Readiness from an httpGet probe; the pod answers on its address.
    let web = wait_for(&cp, "pod web ready", || {
        let p = get_pod(&cp, "web")?;
        let ready = p
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(p)
    });
    let addr = format!(
        "{}:8080",
        web.status.as_ref().unwrap().pod_ip.as_ref().unwrap()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(pod_get(&addr, "/", Duration::from_secs(20)))
        .unwrap();
    assert_eq!(r.status, 200);
    // A passing liveness probe leaves the container alone...
    std::thread::sleep(Duration::from_secs(3));
    let st = &get_pod(&cp, "web")
        .unwrap()
        .status
        .unwrap()
        .container_statuses
        .unwrap()[0];
    assert_eq!(
        st.restart_count, 0,
        "restarted while its liveness probe passes"
    );
    // ...a failing one restarts it in the same pod (its emptyDir survives).
    std::fs::remove_file(volume(&cp, &web, "data").join("alive")).unwrap();
    wait_for(&cp, "the liveness restart", || {
        let p = get_pod(&cp, "web")?;
        let st = &p.status?.container_statuses?[0];
        (st.restart_count >= 1 && st.last_state.as_ref()?.terminated.is_some()).then_some(())
    });
    wait_for(&cp, "the restarted container", || {
        read(&volume(&cp, &web, "data").join("restarted"))
    });

    // ...and says so in the pod's events, as a kubelet does.
    wait_for(&cp, "Unhealthy and Killing events for pod web", || {
        let out = cp.kubectl_ok([
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web",
            "-o",
            "jsonpath={.items[*].reason}",
        ]);
        (out.contains("Unhealthy") && out.contains("Killing") && out.contains("Started"))
            .then_some(())
    });

    // Deletion: preStop, then SIGTERM; a process ignoring SIGTERM is killed at the grace period.
    wait_for(&cp, "stopper and stubborn running", || {
        let a = get_pod(&cp, "stopper")?.status?.phase? == "Running";
        let b = get_pod(&cp, "stubborn")?.status?.phase? == "Running";
        (a && b).then_some(())
    });
    cp.kubectl_ok([
        "delete",
        "pod",
        "stopper",
        "stubborn",
        "--wait=true",
        "--timeout=90s",
    ]);
    assert_eq!(
        read(&host.path().join("prestop")).as_deref(),
        Some("prestop\n")
    );
    assert_eq!(read(&host.path().join("term")).as_deref(), Some("term\n"));
    assert!(
        pids_with_env("HOSTNAME", "stubborn").is_empty(),
        "SIGKILL after the grace period"
    );

    let client = rt.block_on(cp.kube_client());
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let left: Vec<_> = rt
        .block_on(pods.list(&Default::default()))
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(
        !left.iter().any(|n| n == "stopper" || n == "stubborn"),
        "{left:?}"
    );
}
