//! `garret-operator --help` works on a machine with no cluster: no kubeconfig is read before
//! the arguments are parsed.

use std::process::Command;

#[test]
fn help_needs_no_kubeconfig_and_documents_the_environment() {
    let home = std::env::temp_dir().join(format!("garret-operator-cli-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("temp home");
    let out = Command::new(env!("CARGO_BIN_EXE_garret-operator"))
        .arg("--help")
        .env("HOME", &home)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run garret-operator --help");
    let _ = std::fs::remove_dir_all(&home);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "--namespace",
        "[env: WATCH_NAMESPACE=]",
        "--rsa-bits",
        "--resync",
        "--log-format",
        "RUST_LOG",
        "POD_NAME",
        "KUBECONFIG",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

#[test]
fn bad_flags_are_refused_before_connecting() {
    let out = Command::new(env!("CARGO_BIN_EXE_garret-operator"))
        .args(["--resync", "soon"])
        .env_remove("KUBECONFIG")
        .output()
        .expect("run garret-operator");
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--resync"), "{err}");
}
