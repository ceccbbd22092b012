//! Test fixture: a vigil monitor whose library runs code the moment it is loaded. An ELF
//! constructor (an `.init_array` entry, run by the dynamic loader before anything else of the
//! library) appends a line to the file `VIGIL_TEST_MARKER` names. A test that finds the file
//! empty knows the library was never opened.

use std::io::Write;

use vigil_plugin_api::{
    expect_no_settings, export_monitor, Context, Error, EventKind, EventSet, Monitor, MonitorInfo,
    Subscriptions,
};

extern "C" fn on_load() {
    if let Some(path) = std::env::var_os("VIGIL_TEST_MARKER") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "constructor ran in process {}", std::process::id());
        }
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = on_load;

pub struct ConstructorMarker;

#[vigil_plugin_api::monitor]
impl Monitor for ConstructorMarker {
    const INFO: MonitorInfo = MonitorInfo {
        name: "constructor-marker",
        version: env!("CARGO_PKG_VERSION"),
        description: "test fixture: its library's constructor writes a marker file",
        events: EventSet::of(&[EventKind::FIT_START]),
        subscriptions: Subscriptions::NONE,
    };

    fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        expect_no_settings(settings)?;
        Ok(ConstructorMarker)
    }
}

export_monitor!(ConstructorMarker);
