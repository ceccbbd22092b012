//! MLflow's REST API, the few calls a run needs: experiments by name, runs, batches of metrics
//! and params, run status, and artifact uploads through the tracking server's
//! `mlflow-artifacts` proxy. Credentials come from the environment as MLflow's own clients
//! read them (`MLFLOW_TRACKING_TOKEN`, or `MLFLOW_TRACKING_USERNAME` and
//! `MLFLOW_TRACKING_PASSWORD`) and go only into request headers.

use std::time::Duration;

use serde_json::{json, Value};

use crate::http::{Http, Response};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed: worth trying again later (the server is down or busy), or not (it
/// refused the request itself).
#[derive(Debug, Clone, PartialEq)]
pub enum CallFailed {
    Retry(String),
    Refused(String),
}

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailed::Retry(why) | CallFailed::Refused(why) => f.write_str(why),
        }
    }
}

/// A tracking server at `base` (`http://host:port`).
#[derive(Debug, Clone)]
pub struct Client {
    http: Http,
    base: String,
    headers: Vec<(String, String)>,
}

/// A run on the server.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteRun {
    pub run_id: String,
    pub experiment_id: String,
    /// Where its artifacts are uploaded: `<base>/api/2.0/mlflow-artifacts/artifacts/<exp>/<run>/artifacts`.
    pub artifact_url: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Client {
            http: Http::new(TIMEOUT),
            base: base.trim_end_matches('/').to_string(),
            headers: credentials(),
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/2.0/mlflow/{path}", self.base)
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, CallFailed> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let response = self
            .http
            .post_json(&self.api(path), &bytes, &self.headers)
            .map_err(CallFailed::Retry)?;
        answer(path, response)
    }

    /// The id of experiment `name`, created when there is none.
    pub fn experiment(&self, name: &str) -> Result<String, CallFailed> {
        for _ in 0..2 {
            let url = self.api("experiments/get-by-name");
            let response = self
                .http
                .get(&url, &[("experiment_name", name)], &self.headers)
                .map_err(CallFailed::Retry)?;
            if response.status != 404 {
                let found = answer("experiments/get-by-name", response)?;
                return found["experiment"]["experiment_id"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| CallFailed::Refused("no experiment_id in the answer".into()));
            }
            match self.post("experiments/create", &json!({ "name": name })) {
                Ok(created) => {
                    if let Some(id) = created["experiment_id"].as_str() {
                        return Ok(id.to_string());
                    }
                }
                // Another run of the study created it first: look it up again.
                Err(CallFailed::Refused(why)) if why.contains("RESOURCE_ALREADY_EXISTS") => {}
                Err(err) => return Err(err),
            }
        }
        Err(CallFailed::Retry(format!(
            "experiment `{name}` could not be found or created"
        )))
    }

    /// Create a run in `experiment_id`.
    pub fn create_run(
        &self,
        experiment_id: &str,
        run_name: &str,
        start_time_ms: i64,
        tags: &[(String, String)],
    ) -> Result<RemoteRun, CallFailed> {
        let tags: Vec<Value> = tags
            .iter()
            .map(|(key, value)| json!({ "key": key, "value": value }))
            .collect();
        let created = self.post(
            "runs/create",
            &json!({
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": start_time_ms,
                "tags": tags,
            }),
        )?;
        let info = &created["run"]["info"];
        let run_id = info["run_id"]
            .as_str()
            .ok_or_else(|| CallFailed::Refused("no run_id in the answer".into()))?
            .to_string();
        Ok(RemoteRun {
            artifact_url: info["artifact_uri"]
                .as_str()
                .and_then(|uri| self.artifact_url(uri)),
            run_id,
            experiment_id: experiment_id.to_string(),
        })
    }

    /// The upload address of a run's `mlflow-artifacts:` root (other stores are not reached
    /// through the tracking server).
    fn artifact_url(&self, uri: &str) -> Option<String> {
        let rest = uri.strip_prefix("mlflow-artifacts:")?;
        // `mlflow-artifacts:/1/<run>/artifacts`, or with a host: `mlflow-artifacts://h:p/1/…`.
        let path = match rest.strip_prefix("//") {
            Some(with_host) => with_host.split_once('/').map(|(_, path)| path)?,
            None => rest.trim_start_matches('/'),
        };
        Some(format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{path}",
            self.base
        ))
    }

    /// Log metrics (`key`, `value`, `timestamp` in ms, `step`), params and tags in one call
    /// (at most 1000 metrics, 100 params, 100 tags).
    pub fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Value],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<(), CallFailed> {
        let pairs = |items: &[(String, String)]| -> Vec<Value> {
            items
                .iter()
                .map(|(key, value)| json!({ "key": key, "value": value }))
                .collect()
        };
        self.post(
            "runs/log-batch",
            &json!({
                "run_id": run_id,
                "metrics": metrics,
                "params": pairs(params),
                "tags": pairs(tags),
            }),
        )
        .map(|_| ())
    }

    /// Set a run's status (`RUNNING`, `FINISHED`, `FAILED`, `KILLED`), with its end time.
    pub fn update_run(
        &self,
        run_id: &str,
        status: &str,
        end_time_ms: Option<i64>,
    ) -> Result<(), CallFailed> {
        let mut body = json!({ "run_id": run_id, "status": status });
        if let Some(end) = end_time_ms {
            body["end_time"] = json!(end);
        }
        self.post("runs/update", &body).map(|_| ())
    }

    /// Upload `bytes` as the artifact `path` of the run whose artifacts are at `root`.
    pub fn upload(&self, root: &str, path: &str, bytes: &[u8]) -> Result<(), CallFailed> {
        let encoded: Vec<String> = path.split('/').map(percent_encode).collect();
        let url = format!("{root}/{}", encoded.join("/"));
        let response = self
            .http
            .put(&url, bytes, &self.headers)
            .map_err(CallFailed::Retry)?;
        answer("mlflow-artifacts", response).map(|_| ())
    }
}

/// The answer as JSON, or why it is an error: a server error or too many requests is worth
/// trying again; another refusal is not.
fn answer(call: &str, response: Response) -> Result<Value, CallFailed> {
    if response.ok() {
        return Ok(serde_json::from_slice(&response.body).unwrap_or(Value::Null));
    }
    let why = format!(
        "{call} answered {}: {}",
        response.status,
        response.text(300).trim()
    );
    if response.status >= 500 || response.status == 429 || response.status == 408 {
        Err(CallFailed::Retry(why))
    } else {
        Err(CallFailed::Refused(why))
    }
}

/// Authorization headers from MLflow's environment variables.
fn credentials() -> Vec<(String, String)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(token) = var("MLFLOW_TRACKING_TOKEN") {
        return vec![("Authorization".into(), format!("Bearer {token}"))];
    }
    match (
        var("MLFLOW_TRACKING_USERNAME"),
        var("MLFLOW_TRACKING_PASSWORD"),
    ) {
        (Some(user), Some(password)) => vec![(
            "Authorization".into(),
            format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
        )],
        _ => Vec::new(),
    }
}

/// Standard base64 with padding (RFC 4648), for HTTP basic authentication.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A path segment with everything but unreserved characters percent-encoded.
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        // RFC 4648, section 10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn artifact_roots_go_through_the_tracking_server() {
        let client = Client::new("http://127.0.0.1:5000/");
        assert_eq!(
            client
                .artifact_url("mlflow-artifacts:/1/abc/artifacts")
                .unwrap(),
            "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts"
        );
        assert_eq!(
            client
                .artifact_url("mlflow-artifacts://other:5000/1/abc/artifacts")
                .unwrap(),
            "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts"
        );
        assert_eq!(client.artifact_url("s3://bucket/1/abc/artifacts"), None);
        assert_eq!(percent_encode("a b%.png"), "a%20b%25.png");
    }
}
