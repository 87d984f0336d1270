//! Labels on everything the operator creates.

use std::collections::BTreeMap;

/// Label selecting a WsgiApp's pods; its value is the WsgiApp's name.
pub const APP: &str = "kubewsgi.io/app";
/// Standard label naming the manager, used to filter the operator's watches.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGER: &str = "kubewsgi";

/// The pod selector of the WsgiApp `name`.
pub fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(APP.to_string(), name.to_string())])
}

/// The selector as a string, as `status.selector` and the scale subresource carry it.
pub fn selector_string(name: &str) -> String {
    format!("{APP}={name}")
}

/// Labels of the Deployment, Service, PDB, HPA and pods of the WsgiApp `name`.
pub fn common(name: &str) -> BTreeMap<String, String> {
    let mut l = selector(name);
    l.insert("app.kubernetes.io/name".into(), name.into());
    l.insert(MANAGED_BY.into(), MANAGER.into());
    l
}

/// Watch filter for objects the operator manages.
pub fn managed_filter() -> String {
    format!("{MANAGED_BY}={MANAGER}")
}
