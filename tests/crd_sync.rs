//! `crds/wsgiapp.yaml` and its copies in the Helm chart and `deploy/` are exactly what `kubewsgi crd` prints.

use std::path::Path;
use std::process::Command;

const COPIES: &[&str] = &[
    "crds/wsgiapp.yaml",
    "charts/kubewsgi/crds/wsgiapp.yaml",
    "deploy/01-crd.yaml",
];

#[test]
fn checked_in_crds_match_the_generated_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_kubewsgi"))
        .arg("crd")
        .output()
        .expect("run kubewsgi crd");
    assert!(
        out.status.success(),
        "kubewsgi crd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("the CRD is UTF-8");
    assert_eq!(
        generated,
        kubewsgi::crd::crd_yaml(),
        "`kubewsgi crd` prints crd_yaml()"
    );
    for copy in COPIES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(copy);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {copy}: {e}"));
        assert!(
            on_disk == generated,
            "{copy} differs from `kubewsgi crd`; run scripts/gen-crd"
        );
    }
}
