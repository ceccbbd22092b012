//! Runs a sink on its own thread, so that the training step never waits on disk.
//!
//! Records go through a bounded queue (a writer that falls far behind slows training rather
//! than eating memory). `flush` waits until everything queued before it is written and
//! flushed, which checkpoints rely on. The first error the sink hits is returned by the next
//! call; dropping the sink writes what is queued and joins the thread.
//!
//! The thread measures its own CPU time for each message and adds it to the message's source
//! (the monitor that logged a record or drew an image, or the host), so that `run.json` can
//! say what writing a monitor's output cost beside what its hooks cost.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{add_by_source, thread_cpu_time, Histogram, Record, Sink, HOST_SOURCE};
use crate::error::{Error, Result};

const QUEUE: usize = 8192;

enum Message {
    Record(Record),
    Image {
        tag: String,
        step: u64,
        wall_time: f64,
        png: Vec<u8>,
    },
    Histogram {
        tag: String,
        step: u64,
        wall_time: f64,
        histogram: Histogram,
    },
    Flush(SyncSender<std::result::Result<(), String>>),
}

/// A sink whose writes happen on a background thread.
pub struct Background {
    name: &'static str,
    /// CPU time by source, published by the thread at every flush and at its end.
    cpu: Arc<Mutex<Vec<(String, Duration)>>>,
    sender: Option<SyncSender<Message>>,
    errors: Receiver<String>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub fn spawn(name: &'static str, mut sink: Box<dyn Sink + Send>) -> Self {
        let (sender, receiver) = mpsc::sync_channel::<Message>(QUEUE);
        let (error_sender, errors) = mpsc::sync_channel::<String>(1);
        let cpu = Arc::new(Mutex::new(Vec::new()));
        let published = Arc::clone(&cpu);
        let thread = std::thread::Builder::new()
            .name(format!("vigil-sink-{name}"))
            .spawn(move || {
                let mut failed = false;
                let mut spent: Vec<(String, Duration)> = Vec::new();
                let publish = |spent: &Vec<(String, Duration)>| {
                    *published.lock().unwrap_or_else(|e| e.into_inner()) = spent.clone();
                };
                for message in receiver {
                    let started = thread_cpu_time();
                    let source = source_of(&message);
                    let result = match &message {
                        Message::Record(record) => sink.write(record),
                        Message::Image {
                            tag,
                            step,
                            wall_time,
                            png,
                        } => sink.image(tag, *step, *wall_time, png),
                        Message::Histogram {
                            tag,
                            step,
                            wall_time,
                            histogram,
                        } => sink.histogram(tag, *step, *wall_time, histogram),
                        Message::Flush(done) => {
                            let flushed = sink.flush().map_err(|err| err.to_string());
                            publish(&spent);
                            let _ = done.send(flushed);
                            continue;
                        }
                    };
                    let took = thread_cpu_time().saturating_sub(started);
                    add_by_source(&mut spent, source, took);
                    if let Err(err) = result {
                        if !failed {
                            failed = true;
                            let _ = error_sender.try_send(err.to_string());
                        }
                    }
                }
                let _ = sink.flush();
                publish(&spent);
            })
            .ok();
        Background {
            name,
            cpu,
            sender: thread.as_ref().map(|_| sender),
            errors,
            thread,
        }
    }

    fn send(&mut self, message: Message) -> Result<()> {
        if let Ok(reason) = self.errors.try_recv() {
            return Err(Error::Sink {
                sink: self.name,
                reason,
            });
        }
        let sender = self.sender.as_ref().ok_or_else(|| Error::Sink {
            sink: self.name,
            reason: "the writer thread could not be started".into(),
        })?;
        sender.send(message).map_err(|_| Error::Sink {
            sink: self.name,
            reason: "the writer thread stopped".into(),
        })
    }
}

/// Whom a message is written for: a record's monitor, an image's or histogram's tag prefix
/// (`confusion-matrix/confusion_matrix.png`), or the host.
fn source_of(message: &Message) -> &str {
    match message {
        Message::Record(record) => record.source.as_deref().unwrap_or(HOST_SOURCE),
        Message::Image { tag, .. } | Message::Histogram { tag, .. } => match tag.split_once('/') {
            Some(("weights", _)) | None => HOST_SOURCE,
            Some((monitor, _)) => monitor,
        },
        Message::Flush(_) => HOST_SOURCE,
    }
}

impl Sink for Background {
    fn cpu_by_source(&self) -> Vec<(String, Duration)> {
        self.cpu.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn write(&mut self, record: &Record) -> Result<()> {
        self.send(Message::Record(record.clone()))
    }

    fn image(&mut self, tag: &str, step: u64, wall_time: f64, png: &[u8]) -> Result<()> {
        self.send(Message::Image {
            tag: tag.to_string(),
            step,
            wall_time,
            png: png.to_vec(),
        })
    }

    fn histogram(
        &mut self,
        tag: &str,
        step: u64,
        wall_time: f64,
        histogram: &Histogram,
    ) -> Result<()> {
        self.send(Message::Histogram {
            tag: tag.to_string(),
            step,
            wall_time,
            histogram: histogram.clone(),
        })
    }

    fn flush(&mut self) -> Result<()> {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(Message::Flush(done))?;
        match wait.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Error::Sink {
                sink: self.name,
                reason,
            }),
            Err(_) => Err(Error::Sink {
                sink: self.name,
                reason: "the writer thread stopped".into(),
            }),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::RecordKind;
    use std::sync::{Arc, Mutex};

    struct Collect(Arc<Mutex<Vec<u64>>>);

    impl Sink for Collect {
        fn write(&mut self, record: &Record) -> Result<()> {
            if record.global_step == 13 {
                return Err(Error::Sink {
                    sink: "collect",
                    reason: "disk full".into(),
                });
            }
            self.0.lock().unwrap().push(record.global_step);
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
    }

    fn record(step: u64) -> Record {
        Record {
            kind: RecordKind::Train,
            source: None,
            epoch: 1,
            global_step: step,
            wall_time: 0.0,
            metrics: Vec::new(),
        }
    }

    /// A sink that burns CPU for a monitor's records.
    struct Busy;

    impl Sink for Busy {
        fn write(&mut self, record: &Record) -> Result<()> {
            if record.source.is_some() {
                let until = thread_cpu_time() + std::time::Duration::from_millis(5);
                while thread_cpu_time() < until {}
            }
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn cpu_time_is_counted_by_source_and_published_at_a_flush() {
        let mut sink = Background::spawn("test", Box::new(Busy));
        for step in 0..4 {
            let mut monitor = record(step);
            monitor.source = Some("noise".into());
            sink.write(&monitor).unwrap();
            sink.write(&record(step)).unwrap();
        }
        assert!(sink.cpu_by_source().is_empty(), "published at a flush");
        sink.flush().unwrap();
        let spent = sink.cpu_by_source();
        let of = |name: &str| {
            spent
                .iter()
                .find(|(source, _)| source == name)
                .map(|(_, d)| *d)
                .unwrap_or_default()
        };
        assert!(
            of("noise") >= std::time::Duration::from_millis(20),
            "{spent:?}"
        );
        assert!(
            of(HOST_SOURCE) < std::time::Duration::from_millis(5),
            "{spent:?}"
        );
    }

    #[test]
    fn flush_waits_for_everything_queued_before_it() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut sink = Background::spawn("test", Box::new(Collect(seen.clone())));
        for step in 1000..2000 {
            sink.write(&record(step)).unwrap();
        }
        sink.flush().unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1000);
    }

    #[test]
    fn a_write_error_is_reported_by_a_later_call() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut sink = Background::spawn("test", Box::new(Collect(seen)));
        sink.write(&record(13)).unwrap();
        sink.flush().unwrap();
        let err = sink.write(&record(14)).unwrap_err().to_string();
        assert!(err.contains("disk full"), "{err}");
    }
}
