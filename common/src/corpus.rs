//! Where tests find Zalando's example manifests, configuration and CRDs (the compatibility
//! corpus): `PGOP_ZALANDO_CORPUS`, by default `../shared/zalando-manifests` beside the
//! workspace (a copy of postgres-operator's `manifests/` folder does). A clone without it
//! still passes its tests: the ones that need it say that they did not run and how to give
//! it to them; under CI (`CI=true`) its absence fails them instead.
use std::io::Write;
use std::path::PathBuf;

/// The environment variable that names the corpus folder.
pub const CORPUS_SETTING: &str = "PGOP_ZALANDO_CORPUS";

/// The corpus folder, or None (after saying so on the terminal) when `test` cannot run.
///
/// # Panics
/// Under CI (`CI=true`) when the folder does not exist.
pub fn zalando_corpus(test: &str) -> Option<PathBuf> {
    let folder = std::env::var_os(CORPUS_SETTING)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/zalando-manifests")
        });
    if folder.is_dir() {
        return Some(folder);
    }
    let missing = format!(
        "Zalando's manifests are not at {} (set {CORPUS_SETTING} to a copy of \
         postgres-operator's manifests/ folder)",
        folder.display()
    );
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{test}: {missing}; CI must run every test");
    }
    // Straight to the terminal: the test harness keeps what `eprintln!` prints from a
    // passing test to itself.
    let _ = writeln!(std::io::stderr(), "[not run] {test}: {missing}");
    None
}
