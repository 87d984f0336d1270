//! The `WsgiApp` custom resource (`kubewsgi.io/v1alpha1`), from which `crds/wsgiapp.yaml` is generated.

/// The CRD as YAML, as `kubewsgi crd` prints it.
pub fn crd_yaml() -> String {
    String::new()
}
