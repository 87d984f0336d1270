//! `WsgiApp.spec`: what to run, how many, and how the pod is shaped.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::WsgiAppStatus;

/// `module:callable`, `module:factory()` (arguments allowed) or `path/file.py:callable`.
pub const APP_PATTERN: &str = r"^([A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*|[^:\s]+\.py):[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\(.*\))?$";

/// A byte size as the proxy accepts it: `1048576`, `512k`, `10m`, `1g`. The digit counts keep
/// every match below 2^64 bytes, so nothing the API server admits is refused by the proxy.
pub const SIZE_PATTERN: &str =
    r"^([0-9]{1,18}|[0-9]{1,15}[kK][bB]?|[0-9]{1,12}[mM][bB]?|[0-9]{1,9}[gG][bB]?)$";

/// A Python WSGI app served by the kubewsgi front proxy and worker server.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubewsgi.io",
    version = "v1alpha1",
    kind = "WsgiApp",
    plural = "wsgiapps",
    shortname = "wsgi",
    namespaced,
    status = "WsgiAppStatus",
    derive = "PartialEq",
    // The name is also the name of the Service (a DNS-1035 label) and a label value (63
    // characters at most): refuse at admission what could never be reconciled.
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label of at most 63 characters (lowercase letters, digits and '-', starting with a letter): it names the app's Service and labels"),
    doc = "A Python WSGI app run by kubewsgi: a Deployment of pods with the front proxy and the worker server, a Service, and queue-depth autoscaling.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every desired pod is updated and ready"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Pods of the current rollout"
    ),
    printcolumn(
        name = "Queue",
        type_ = "number",
        json_path = ".status.queueDepth",
        description = "Requests waiting for a worker, summed over pods"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WsgiAppSpec {
    /// Container image holding the app and its dependencies, built FROM the kubewsgi-python base image.
    #[schemars(length(min = 1), regex(pattern = r"^\S+$"))]
    pub image: String,

    /// The WSGI callable: `module:callable`, `module:factory()` or `path/file.py:callable`, relative to the image's working directory.
    #[schemars(regex(pattern = APP_PATTERN))]
    pub app: String,

    /// Worker server processes and threads in each pod.
    #[serde(default)]
    pub workers: Workers,

    /// Number of pods when autoscaling is off (also set by `kubectl scale` and an HPA in `hpa` mode).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Scaling the number of pods from the request queue depth.
    #[serde(default)]
    pub autoscaling: Autoscaling,

    /// Directories of the image served by the proxy as static files.
    #[serde(default, rename = "static", skip_serializing_if = "Vec::is_empty")]
    pub static_: Vec<StaticFiles>,

    /// Front proxy settings.
    #[serde(default)]
    pub proxy: Proxy,

    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with the certificate of a `kubernetes.io/tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,

    /// The Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Environment variables of the app container, each name once; `TMPDIR` replaces the scratch directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,

    /// Environment of the app container taken from ConfigMaps and Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,

    /// Compute resources of the two containers.
    #[serde(default)]
    pub resources: Resources,

    /// Scheduling and identity overrides for the pods.
    #[serde(default)]
    pub pod_template: PodTemplate,
}

fn default_replicas() -> i32 {
    1
}

/// Worker server processes and threads in each pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.minProcesses) || !has(self.maxProcesses) || self.minProcesses <= self.maxProcesses",
    "message": "workers.minProcesses must be less than or equal to workers.maxProcesses",
    "fieldPath": ".minProcesses",
    "reason": "FieldValueInvalid"
}]))]
pub struct Workers {
    /// Worker processes started per pod.
    #[serde(default = "default_processes")]
    #[schemars(range(min = 1))]
    pub processes: i32,

    /// Python threads per worker process.
    #[serde(default = "default_threads")]
    #[schemars(range(min = 1))]
    pub threads: i32,

    /// In-pod autoscaling: fewest worker processes kept while idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_processes: Option<i32>,

    /// In-pod autoscaling: most worker processes started while requests wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_processes: Option<i32>,

    /// A request running longer than this gets 504 and its worker process is replaced (0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub timeout_seconds: Option<i32>,

    /// Recycle a worker process after this many requests (0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_requests: Option<i64>,
}

fn default_processes() -> i32 {
    2
}

fn default_threads() -> i32 {
    4
}

impl Default for Workers {
    fn default() -> Self {
        Self {
            processes: default_processes(),
            threads: default_threads(),
            min_processes: None,
            max_processes: None,
            timeout_seconds: None,
            max_requests: None,
        }
    }
}

/// How the number of pods follows the request queue depth.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.minReplicas <= self.maxReplicas",
    "message": "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
    "fieldPath": ".minReplicas",
    "reason": "FieldValueInvalid"
}]))]
pub struct Autoscaling {
    /// Scale the pods automatically; `replicas` is then ignored.
    #[serde(default)]
    pub enabled: bool,

    /// `builtin`: the operator scrapes the pods and sets the replicas; `hpa`: an autoscaling/v2 HorizontalPodAutoscaler on the `kubewsgi_queue_depth` pod metric does.
    #[serde(default)]
    pub mode: AutoscalingMode,

    /// Fewest pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,

    /// Most pods.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// Target of waiting plus in-flight requests per pod; when unset, pod capacity × targetUtilization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01))]
    pub target_queue_depth: Option<f64>,

    /// Share of a pod's capacity (processes × threads) to aim for.
    #[serde(default = "default_target_utilization")]
    #[schemars(range(min = 0.01, max = 1.0))]
    pub target_utilization: f64,

    /// Seconds of demand averaged for normal scaling decisions.
    #[serde(default = "default_stable_window")]
    #[schemars(range(min = 1))]
    pub stable_window_seconds: i32,

    /// Seconds of demand averaged to detect bursts (panic mode: scale up fast, never down).
    #[serde(default = "default_panic_window")]
    #[schemars(range(min = 1))]
    pub panic_window_seconds: i32,

    /// Seconds the lower demand must last before pods are removed.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: i32,

    /// Most the pod count may grow by in one decision, as a factor of the ready pods.
    #[serde(default = "default_max_scale_up_rate")]
    #[schemars(range(min = 1.0))]
    pub max_scale_up_rate: f64,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_target_utilization() -> f64 {
    0.7
}
fn default_stable_window() -> i32 {
    60
}
fn default_panic_window() -> i32 {
    6
}
fn default_max_scale_up_rate() -> f64 {
    1000.0
}

impl Default for Autoscaling {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: AutoscalingMode::default(),
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_queue_depth: None,
            target_utilization: default_target_utilization(),
            stable_window_seconds: default_stable_window(),
            panic_window_seconds: default_panic_window(),
            scale_down_delay_seconds: 0,
            max_scale_up_rate: default_max_scale_up_rate(),
        }
    }
}

/// Who sets the number of pods when autoscaling is enabled.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalingMode {
    /// The operator's own queue-depth autoscaler.
    #[default]
    Builtin,
    /// A HorizontalPodAutoscaler on the `kubewsgi_queue_depth` pod metric (needs a metrics adapter).
    Hpa,
}

/// A directory of the app image served under a URL path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticFiles {
    /// URL prefix, e.g. `/static`.
    #[schemars(regex(pattern = r"^/[^\s,]*$"))]
    pub url_path: String,

    /// Directory in the app image, absolute or relative to its working directory.
    #[schemars(length(min = 1))]
    pub dir: String,
}

/// Front proxy settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Proxy {
    /// Image of the proxy container (default: the operator's `--proxy-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Largest request body accepted, e.g. `10m` or `512k`; larger gets 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub max_body_size: Option<String>,

    /// Seconds a client may take to send its request; slower gets 408.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub client_timeout_seconds: Option<i32>,

    /// Seconds the worker may take to answer; longer gets 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub upstream_timeout_seconds: Option<i32>,

    /// Seconds a request may wait for a free worker thread; longer gets 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub queue_timeout_seconds: Option<i32>,
}

/// TLS termination in the proxy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// Name of a `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`) in the WsgiApp's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,
}

/// The Service in front of the pods (the proxy's admin port is never on it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Service port, forwarded to the proxy's `http` port.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_service_port() -> i32 {
    80
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
        }
    }
}

/// Kubernetes Service types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Compute resources of the two containers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Requests and limits of the app (worker server) container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<ResourceRequirements>,

    /// Requests and limits of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ResourceRequirements>,
}

/// Scheduling and identity overrides for the pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Node and pod affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// ServiceAccount the pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Secrets for pulling the app and proxy images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Extra labels on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}
