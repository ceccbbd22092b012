//! Runs a sink on its own thread, so that the training step never waits on disk.
//!
//! Records go through a bounded queue (a writer that falls far behind slows training rather
//! than eating memory). `flush` waits until everything queued before it is written and
//! flushed, which checkpoints rely on. The first error the sink hits is returned by the next
//! call; dropping the sink writes what is queued and joins the thread.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::{Histogram, Record, Sink};
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
    sender: Option<SyncSender<Message>>,
    errors: Receiver<String>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub fn spawn(name: &'static str, mut sink: Box<dyn Sink + Send>) -> Self {
        let (sender, receiver) = mpsc::sync_channel::<Message>(QUEUE);
        let (error_sender, errors) = mpsc::sync_channel::<String>(1);
        let thread = std::thread::Builder::new()
            .name(format!("vigil-sink-{name}"))
            .spawn(move || {
                let mut failed = false;
                for message in receiver {
                    let result = match message {
                        Message::Record(record) => sink.write(&record),
                        Message::Image {
                            tag,
                            step,
                            wall_time,
                            png,
                        } => sink.image(&tag, step, wall_time, &png),
                        Message::Histogram {
                            tag,
                            step,
                            wall_time,
                            histogram,
                        } => sink.histogram(&tag, step, wall_time, &histogram),
                        Message::Flush(done) => {
                            let _ = done.send(sink.flush().map_err(|err| err.to_string()));
                            continue;
                        }
                    };
                    if let Err(err) = result {
                        if !failed {
                            failed = true;
                            let _ = error_sender.try_send(err.to_string());
                        }
                    }
                }
                let _ = sink.flush();
            })
            .ok();
        Background {
            name,
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

impl Sink for Background {
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
