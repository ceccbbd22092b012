//! Bake libtorch's directory into the binary's rpath so that `target/*/vigil` runs with no
//! `LD_LIBRARY_PATH`. torch-sys exports the directory as `DEP_TCH_LIBTORCH_LIB`, which only a
//! crate that depends on torch-sys directly can see.
//!
//! It also checks that the dashboard's charting library is where `scripts/web-assets.sh` puts
//! it (`web/vendor/`, git-ignored), since `vigil serve` embeds it with `include_bytes!`.

fn main() {
    web_assets();
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

/// The uPlot files `serve::assets` embeds; kept in step with scripts/web-assets.sh.
const UPLOT_DIR: &str = "web/vendor/uplot-1.6.32";

fn web_assets() {
    println!("cargo:rerun-if-changed={UPLOT_DIR}");
    for file in ["uPlot.iife.min.js", "uPlot.min.css", "LICENSE"] {
        let path = std::path::Path::new(UPLOT_DIR).join(file);
        if !path.is_file() {
            panic!(
                "host/{} is missing: the dashboard embeds uPlot, fetched by `bash scripts/web-assets.sh` \
                 (bootstrap.sh runs it; it needs npm)",
                path.display()
            );
        }
    }
}
