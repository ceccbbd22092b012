//! What a library file says about itself, read with an ELF parser: nothing of the library runs.

use object::read::{Object, ObjectSection, ObjectSymbol, ReadRef};
use vigil_plugin_api::identity::{self, Identity};

/// The symbol abi_stable's loader looks up, which `export_monitor!` exports.
const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// A library file as read without loading it.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    /// The identity record, when the plugin has one (built against API 1.2 or later, with
    /// `Monitor::INFO` set).
    pub identity: Option<Identity>,
}

/// Read `data` (a whole file, or a lazily read one) as a shared library built for this host
/// and find its identity record. Errors say, in one line, why the file is not a plugin this
/// host could load.
pub fn inspect<'data, R: ReadRef<'data>>(data: R) -> Result<Inspection, String> {
    let file = object::File::parse(data).map_err(|err| {
        if data.read_bytes_at(0, 4) == Ok(&b"\x7fELF"[..]) {
            format!("not a shared library: a truncated or damaged ELF file ({err})")
        } else {
            "not a shared library: not an ELF file (a plugin is the .so file `cargo build` writes)"
                .to_string()
        }
    })?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(format!("not an ELF shared library ({:?})", file.format()));
    }
    if file.kind() != object::ObjectKind::Dynamic {
        return Err(format!(
            "not a shared library but an ELF {:?} file; build the plugin crate as a `cdylib`",
            file.kind()
        ));
    }
    let host = host_architecture();
    if file.architecture() != host || file.is_64() != cfg!(target_pointer_width = "64") {
        return Err(format!(
            "built for {:?} ({}-bit); this host runs on {host:?}: build the plugin for this machine",
            file.architecture(),
            if file.is_64() { 64 } else { 32 }
        ));
    }
    let record = match file.section_by_name(identity::SECTION) {
        Some(section) => {
            let bytes = section.data().map_err(|err| {
                format!("its {} section cannot be read: {err}", identity::SECTION)
            })?;
            Some(identity::decode(bytes).map_err(|err| format!("damaged plugin: {err}"))?)
        }
        None => None,
    };
    let exports_root_module = file
        .dynamic_symbols()
        .any(|symbol| symbol.is_definition() && symbol.name() == Ok(ROOT_MODULE_SYMBOL));
    if !exports_root_module {
        return Err(
            "not a vigil plugin: it exports no plugin module (build it with vigil_plugin_api::export_monitor!)"
                .into(),
        );
    }
    if let Some(record) = &record {
        if u32::from(record.api_major) != vigil_plugin_api::API_MAJOR_VERSION {
            return Err(format!(
                "built against vigil-plugin-api {}; this host loads {}.x: rebuild the plugin",
                record.api_version,
                vigil_plugin_api::API_MAJOR_VERSION
            ));
        }
        if record.is_set() && record.name.trim().is_empty() {
            return Err("the plugin's identity record names no monitor (only spaces)".into());
        }
    }
    Ok(Inspection {
        identity: record.filter(Identity::is_set),
    })
}

fn host_architecture() -> object::Architecture {
    if cfg!(target_arch = "x86_64") {
        object::Architecture::X86_64
    } else if cfg!(target_arch = "aarch64") {
        object::Architecture::Aarch64
    } else if cfg!(target_arch = "riscv64") {
        object::Architecture::Riscv64
    } else if cfg!(target_arch = "powerpc64") {
        object::Architecture::PowerPc64
    } else if cfg!(target_arch = "s390x") {
        object::Architecture::S390x
    } else {
        object::Architecture::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_libraries_are_refused_in_one_line() {
        let reason = inspect(&b"definitely not ELF"[..]).unwrap_err();
        assert!(reason.starts_with("not a shared library"), "{reason}");
        assert!(!reason.contains('\n'));
        // The test binary itself is ELF but an executable, not a library.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let reason = inspect(&exe[..]).unwrap_err();
        assert!(
            reason.contains("not a shared library") || reason.contains("no plugin module"),
            "{reason}"
        );
    }

    #[test]
    fn truncated_and_damaged_files_are_errors_not_panics() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for cut in [0, 4, 16, 63, 64, 65, 200, 4096] {
            assert!(inspect(&exe[..cut.min(exe.len())]).is_err());
        }
        let mut damaged = exe[..8192.min(exe.len())].to_vec();
        for index in (16..damaged.len()).step_by(97) {
            damaged[index] ^= 0x5A;
        }
        let _ = inspect(&damaged[..]);
    }
}
