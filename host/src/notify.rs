//! Notifications: `[[notify]]` webhooks told when a run fails, is interrupted, finishes, stops
//! early, meets an anomaly or loses a monitor, and when a study finishes or fails too often.
//!
//! Messages are sent on a thread of their own with a time-out, so a slow or dead server never
//! holds up training. The same event of the same run goes to the same webhook at most once per
//! `min_interval_s`; what could not be sent becomes a warning (the run's `run.json`), never a
//! failure. A URL given by `url_env` is read from the environment when the run starts and is
//! never written anywhere: messages about a webhook name it by its variable, or by the scheme
//! and host of its URL.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{NotifyEvent, NotifyFormat, NotifySettings, NotifyTarget};
use crate::error::{Error, Result};
use crate::http::{origin, Http};

/// How long one message may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Messages waiting to be sent; more are dropped (and counted in a warning).
const QUEUE: usize = 64;

/// What happened, in the documented JSON object's fields.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Notice {
    pub event: String,
    pub run: Option<String>,
    pub study: Option<String>,
    pub step: Option<u64>,
    pub epoch: Option<usize>,
    pub status: Option<String>,
    /// The metrics at that point (the last validation's, or the study's counts).
    pub metrics: BTreeMap<String, f64>,
    pub error: Option<String>,
    /// The last lines of the run's log, for an error.
    pub error_lines: Vec<String>,
    pub run_dir: Option<String>,
    pub host: String,
    /// One line for people: what Slack and Discord show.
    pub message: String,
    /// Seconds since the Unix epoch.
    pub time: f64,
}

impl Notice {
    pub fn new(event: NotifyEvent, message: String) -> Self {
        Notice {
            event: event.name().into(),
            host: host_name(),
            message,
            time: crate::sink::unix_time(),
            ..Notice::default()
        }
    }

    /// The request body for `format`.
    pub fn body(&self, format: NotifyFormat) -> Vec<u8> {
        let text = self.text();
        let value = match format {
            NotifyFormat::Slack => serde_json::json!({ "text": text }),
            // Discord refuses content over 2000 characters.
            NotifyFormat::Discord => {
                serde_json::json!({ "content": text.chars().take(2000).collect::<String>() })
            }
            NotifyFormat::Json => serde_json::to_value(self).unwrap_or_default(),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// The message as chat text: the line, then the error and its last lines.
    fn text(&self) -> String {
        let mut text = format!("vigil: {}", self.message);
        if let Some(dir) = &self.run_dir {
            text.push_str(&format!("\nrun directory: {dir} on {}", self.host));
        }
        if let Some(error) = &self.error {
            text.push_str(&format!("\nerror: {error}"));
        }
        if !self.error_lines.is_empty() {
            text.push_str("\n```\n");
            text.push_str(&self.error_lines.join("\n"));
            text.push_str("\n```");
        }
        text
    }
}

/// This machine's name, for messages.
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    if ok {
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        String::new()
    }
}

/// A webhook, its address resolved.
#[derive(Debug, Clone)]
struct Webhook {
    url: String,
    /// How messages name it: `$NAME` or scheme and host.
    label: String,
    format: NotifyFormat,
    on: Vec<NotifyEvent>,
    min_interval: Duration,
}

/// Resolve the `[[notify]]` entries: a `url_env` must name a set variable.
fn webhooks(settings: &[NotifySettings]) -> Result<Vec<Webhook>> {
    settings
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let (url, label) = match &entry.target {
                NotifyTarget::Url(url) => (url.clone(), origin(url)),
                NotifyTarget::Env(name) => {
                    let url = std::env::var(name).ok().filter(|v| !v.trim().is_empty());
                    let url = url.ok_or_else(|| Error::Config {
                        location: format!("notify[{index}].url_env"),
                        message: format!(
                            "names the environment variable `{name}`, which is not set: export \
                             it with the webhook's address, or remove the entry"
                        ),
                    })?;
                    (url, format!("${name}"))
                }
            };
            Ok(Webhook {
                url,
                label,
                format: entry.format,
                on: entry.on.clone(),
                min_interval: Duration::from_secs_f64(entry.min_interval_s),
            })
        })
        .collect()
}

struct Job {
    hook: usize,
    body: Vec<u8>,
    event: &'static str,
}

/// Sends a run's (or a study's) notifications.
pub struct Notifier {
    hooks: Vec<Webhook>,
    /// When each (webhook, event) was last sent.
    last_sent: HashMap<(usize, NotifyEvent), Instant>,
    sender: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Failures to notify, for `run.json`.
    warnings: Arc<Mutex<Vec<String>>>,
    dropped: usize,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("webhooks", &self.hooks.len())
            .finish()
    }
}

impl Notifier {
    /// A notifier for `settings` (none: it sends nothing and starts no thread). A `url_env`
    /// that is not set is a config error.
    pub fn new(settings: &[NotifySettings]) -> Result<Self> {
        let hooks = webhooks(settings)?;
        let warnings = Arc::new(Mutex::new(Vec::new()));
        let (sender, thread) = if hooks.is_empty() {
            (None, None)
        } else {
            let (sender, receiver) = mpsc::sync_channel::<Job>(QUEUE);
            let thread = spawn(hooks.clone(), receiver, warnings.clone());
            (thread.as_ref().map(|_| sender), thread)
        };
        Ok(Notifier {
            hooks,
            last_sent: HashMap::new(),
            sender,
            thread,
            warnings,
            dropped: 0,
        })
    }

    /// Whether any webhook wants `event`.
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.hooks.iter().any(|hook| hook.on.contains(&event))
    }

    /// Queue `notice` for every webhook that wants `event` and has not been sent that event
    /// within its `min_interval_s`; never waits.
    pub fn send(&mut self, event: NotifyEvent, notice: &Notice) {
        let Some(sender) = &self.sender else {
            return;
        };
        let now = Instant::now();
        for (index, hook) in self.hooks.iter().enumerate() {
            if !hook.on.contains(&event) {
                continue;
            }
            if let Some(last) = self.last_sent.get(&(index, event)) {
                if now.duration_since(*last) < hook.min_interval {
                    continue;
                }
            }
            self.last_sent.insert((index, event), now);
            let job = Job {
                hook: index,
                body: notice.body(hook.format),
                event: event.name(),
            };
            if sender.try_send(job).is_err() {
                self.dropped += 1;
            }
        }
    }

    /// Wait up to `limit` for the queued messages to go out, then stop; the warnings of the
    /// notifications that failed.
    pub fn finish(&mut self, limit: Duration) -> Vec<String> {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + limit;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                self.warn("notifications still being sent when the run ended were given up".into());
            }
        }
        if self.dropped > 0 {
            let dropped = self.dropped;
            self.warn(format!(
                "{dropped} notifications were dropped: more than {QUEUE} were waiting to be sent"
            ));
            self.dropped = 0;
        }
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let _ = self.finish(TIMEOUT);
    }
}

fn spawn(
    hooks: Vec<Webhook>,
    receiver: Receiver<Job>,
    warnings: Arc<Mutex<Vec<String>>>,
) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vigil-notify".into())
        .spawn(move || {
            let http = Http::new(TIMEOUT);
            for job in receiver {
                let hook = &hooks[job.hook];
                let failure = match http.post_json(&hook.url, &job.body, &[]) {
                    Ok(response) if response.ok() => None,
                    Ok(response) => Some(format!(
                        "answered {} {}",
                        response.status,
                        response.text(200).trim()
                    )),
                    // The error names the server by its origin; a `url_env` webhook by its
                    // variable only.
                    Err(err) if hook.label.starts_with('$') => Some(
                        err.split_once(": ")
                            .map_or(err.clone(), |(_, why)| why.to_string()),
                    ),
                    Err(err) => Some(err),
                };
                if let Some(why) = failure {
                    let message = format!(
                        "the `{}` notification to {} could not be sent: {why}",
                        job.event, hook.label
                    );
                    tracing::warn!("{message}");
                    warnings
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(message);
                }
            }
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_slacks_discords_and_ours() {
        let mut notice = Notice::new(NotifyEvent::Failed, "run r failed at step 7".into());
        notice.error = Some("training loss is NaN".into());
        notice.step = Some(7);
        let slack: serde_json::Value =
            serde_json::from_slice(&notice.body(NotifyFormat::Slack)).unwrap();
        assert!(slack["text"]
            .as_str()
            .unwrap()
            .contains("training loss is NaN"));
        let discord: serde_json::Value =
            serde_json::from_slice(&notice.body(NotifyFormat::Discord)).unwrap();
        assert!(discord["content"]
            .as_str()
            .unwrap()
            .starts_with("vigil: run r failed"));
        let json: serde_json::Value =
            serde_json::from_slice(&notice.body(NotifyFormat::Json)).unwrap();
        assert_eq!(json["event"], "failed");
        assert_eq!(json["step"], 7);
        assert_eq!(json["error"], "training loss is NaN");
    }

    #[test]
    fn an_unset_url_env_is_a_config_error() {
        let settings = NotifySettings {
            target: NotifyTarget::Env("VIGIL_TEST_SURELY_UNSET_HOOK".into()),
            format: NotifyFormat::Json,
            on: NotifyEvent::ALL.to_vec(),
            min_interval_s: 0.0,
        };
        let err = Notifier::new(&[settings]).unwrap_err().to_string();
        assert!(err.contains("VIGIL_TEST_SURELY_UNSET_HOOK"), "{err}");
    }
}
