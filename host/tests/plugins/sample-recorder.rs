//! Test fixture: a vigil monitor that records, at each validation end, which sample images the
//! host offered: `artifacts/sample-recorder/shown_{epoch:03}.json` with each image's label and
//! a checksum of its pixels, in the order offered.

use vigil_plugin_api::{
    expect_no_settings, export_monitor, ArtifactKind, Context, Error, EventKind, EventSet, Monitor,
    MonitorInfo, Subscriptions,
};

pub struct SampleRecorder;

/// FNV-1a over the pixels' bits: the same image gives the same number.
fn checksum(pixels: &[f32]) -> u64 {
    pixels.iter().fold(0xcbf2_9ce4_8422_2325, |hash, value| {
        value
            .to_bits()
            .to_le_bytes()
            .iter()
            .fold(hash, |hash, &byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
            })
    })
}

#[vigil_plugin_api::monitor]
impl Monitor for SampleRecorder {
    const INFO: MonitorInfo = MonitorInfo {
        name: "sample-recorder",
        version: env!("CARGO_PKG_VERSION"),
        description: "test fixture: records the sample images the host offers",
        events: EventSet::of(&[EventKind::VALIDATION_END]),
        subscriptions: Subscriptions::SAMPLE_IMAGES,
    };

    fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        expect_no_settings(settings)?;
        Ok(SampleRecorder)
    }

    fn on_validation_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let Some(batch) = ctx.sample_images()? else {
            return Ok(());
        };
        let size = (batch.channels * batch.height * batch.width) as usize;
        let images: Vec<String> = (0..batch.count as usize)
            .map(|i| {
                format!(
                    "{{\"label\": {}, \"prediction\": {}, \"pixels\": \"{:016x}\"}}",
                    batch.labels[i],
                    batch.predictions[i],
                    checksum(&batch.pixels[i * size..(i + 1) * size])
                )
            })
            .collect();
        let epoch = ctx.counters().epoch;
        ctx.write_file(
            &format!("shown_{epoch:03}.json"),
            ArtifactKind::TEXT,
            format!("[{}]\n", images.join(",\n")).as_bytes(),
        )
    }
}

export_monitor!(SampleRecorder);
