//! Bake libtorch's directory into the binary's rpath so that `target/*/vigil` runs with no
//! `LD_LIBRARY_PATH`. torch-sys exports the directory as `DEP_TCH_LIBTORCH_LIB`, which only a
//! crate that depends on torch-sys directly can see.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // The default link drops libtorch_cuda.so (--as-needed): keep it.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
