//! Compiles INCRBYFLOAT's long-double arithmetic (`src/c/long_double.c`),
//! which Rust has no type for.

fn main() {
    println!("cargo:rerun-if-changed=src/c/long_double.c");
    cc::Build::new()
        .file("src/c/long_double.c")
        .warnings(true)
        .compile("ferry_long_double");
}
