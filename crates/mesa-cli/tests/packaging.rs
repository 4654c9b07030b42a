//! Packaging facts a user relies on: the LICENSE file is the license `Cargo.toml` declares, no placeholder
//! `repository`, and the README says how to install `mesa` and which Rust it needs.

use std::path::PathBuf;

fn read(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn license_file_matches_the_manifest_and_the_readme_says_how_to_install() {
    let manifest = read("Cargo.toml");
    assert!(manifest.contains("license = \"MIT\""), "{manifest}");
    assert!(read("LICENSE").starts_with("MIT License"));
    assert!(
        !manifest.contains("example.invalid"),
        "placeholder repository"
    );
    let rust_version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .expect("rust-version")
        .trim_matches('"');
    let readme = read("README.md");
    assert!(readme.contains("cargo install --path crates/mesa-cli"));
    assert!(
        readme.contains(&format!("Rust **{rust_version}**")),
        "the README states rust-version {rust_version}"
    );
    assert_eq!(env!("CARGO_PKG_RUST_VERSION"), rust_version);
}
