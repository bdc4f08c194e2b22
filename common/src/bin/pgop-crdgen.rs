//! Prints the `postgresqls.acid.zalan.do` CRD generated from the Rust types:
//! `cargo run -p pgop-common --bin pgop-crdgen > manifests/postgresql.crd.yaml`
fn main() {
    print!("{}", pgop_common::crd::crd_yaml());
}
