//! The raft leader answers `service logs` requests: for each open request
//! in the desired state, it reads every task's log from its own engine
//! (swarm streams a task's log from whichever node runs it) and posts the
//! lines to the server, prefixed as `docker service logs` prefixes them
//! (`NAME.SLOT.TASK@HOST    | line`). A follow request keeps picking up
//! new tasks until the server says the request is gone.

use bollard::container::LogOutput;
use bollard::models::Task;
use fogswarm_client::engine::Engine;
use fogswarm_client::Client;
use fogswarm_protocol::logs::{since_seconds, LogChunk, LogOptions, LogRequest};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Lines sent in one post at most, and how long a line waits for company.
const BATCH_LINES: usize = 200;
const BATCH_WAIT: Duration = Duration::from_millis(250);

/// The requests this agent is answering.
#[derive(Default)]
pub struct LogDuty {
    running: HashMap<String, JoinHandle<()>>,
}

impl LogDuty {
    /// Starts answering new requests; forgets finished ones. Call on the
    /// raft leader only; [`LogDuty::stop`] when leadership goes.
    pub fn serve(&mut self, engine: &Engine, server: &Client, requests: &[LogRequest]) {
        self.running.retain(|_, h| !h.is_finished());
        for request in requests {
            if self.running.contains_key(&request.id) {
                continue;
            }
            tracing::info!(request = %request.id, service = %request.service, follow = request.options.follow, "answering a service logs request");
            let handle = tokio::spawn(answer(engine.clone(), server.clone(), request.clone()));
            self.running.insert(request.id.clone(), handle);
        }
    }

    pub fn stop(&mut self) {
        for (_, h) in self.running.drain() {
            h.abort();
        }
    }
}

async fn answer(engine: Engine, server: Client, request: LogRequest) {
    let (lines_tx, mut lines_rx) = mpsc::channel::<String>(1024);
    let follow = request.options.follow;
    let mut reader = Some(tokio::spawn(read_tasks(engine, request.clone(), lines_tx)));
    let mut batch = Vec::new();
    let mut error = None;
    loop {
        let next = tokio::time::timeout(BATCH_WAIT, lines_rx.recv()).await;
        let ended = matches!(next, Ok(None));
        if let Ok(Some(line)) = next {
            batch.push(line);
            if batch.len() < BATCH_LINES {
                continue;
            }
        }
        if ended && !follow {
            if let Some(r) = reader.take() {
                if let Ok(Err(e)) = r.await {
                    error = Some(e);
                }
            }
            let chunk = LogChunk {
                lines: std::mem::take(&mut batch),
                done: true,
                error: error.take(),
            };
            if let Err(e) = server.post_log_chunk(&request.id, &chunk).await {
                tracing::warn!(request = %request.id, error = %e, "posting the last log lines");
            }
            return;
        }
        if batch.is_empty() && !ended {
            continue;
        }
        let chunk = LogChunk {
            lines: std::mem::take(&mut batch),
            done: false,
            error: None,
        };
        match server.post_log_chunk(&request.id, &chunk).await {
            Ok(()) => {}
            Err(e) if e.status() == Some(410) => {
                tracing::info!(request = %request.id, "log request closed; stopping");
                return;
            }
            Err(e) => tracing::warn!(request = %request.id, error = %e, "posting log lines"),
        }
        if ended {
            // A follow whose readers all ended (the service went): keep
            // the request alive until the server closes it.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Streams the log of every task of the service into `lines`; with
/// follow, keeps looking for new tasks. Answers an error that stopped it.
async fn read_tasks(
    engine: Engine,
    request: LogRequest,
    lines: mpsc::Sender<String>,
) -> Result<(), String> {
    let mut started: HashSet<String> = HashSet::new();
    let mut readers = Vec::new();
    let mut first = true;
    loop {
        let tasks = list_tasks(&engine, &request.service).await?;
        let hosts = node_hosts(&engine).await;
        for task in tasks {
            let Some(id) = task.id.clone() else { continue };
            // Tasks that never got a container have no log.
            let has_container = task
                .status
                .as_ref()
                .and_then(|s| s.container_status.as_ref())
                .and_then(|c| c.container_id.as_ref())
                .is_some();
            if !has_container || !started.insert(id.clone()) {
                continue;
            }
            let prefix = prefix(&request.service, &task, &hosts);
            // Tasks that start while following: all of their log is new.
            let mut options = request.options.clone();
            if !first {
                options.tail = None;
                options.since = None;
            }
            readers.push(tokio::spawn(read_task(
                engine.clone(),
                id,
                prefix,
                options,
                lines.clone(),
            )));
        }
        first = false;
        if !request.options.follow {
            for r in readers {
                let _ = r.await;
            }
            return Ok(());
        }
        if lines.is_closed() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn list_tasks(engine: &Engine, service: &str) -> Result<Vec<Task>, String> {
    let options = bollard::query_parameters::ListTasksOptionsBuilder::default()
        .filters(&HashMap::from([(
            "service".to_string(),
            vec![service.to_string()],
        )]))
        .build();
    engine
        .docker
        .list_tasks(Some(options))
        .await
        .map_err(|e| format!("listing the tasks of {service}: {e}"))
}

async fn node_hosts(engine: &Engine) -> HashMap<String, String> {
    engine
        .docker
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| Some((n.id?, n.description?.hostname?)))
        .collect()
}

/// `web.2.k3j4l5m6n7o8@dev3`, as `docker service logs` names a task.
fn prefix(service: &str, task: &Task, hosts: &HashMap<String, String>) -> String {
    let id: String = task
        .id
        .as_deref()
        .unwrap_or_default()
        .chars()
        .take(12)
        .collect();
    let node = task.node_id.clone().unwrap_or_default();
    let slot = match task.slot {
        Some(s) if s > 0 => s.to_string(),
        _ => node.clone(),
    };
    let host = hosts.get(&node).cloned().unwrap_or(node);
    format!("{service}.{slot}.{id}@{host}")
}

async fn read_task(
    engine: Engine,
    task: String,
    prefix: String,
    o: LogOptions,
    lines: mpsc::Sender<String>,
) {
    let mut options = bollard::query_parameters::LogsOptionsBuilder::default()
        .follow(o.follow)
        .stdout(true)
        .stderr(true)
        .timestamps(o.timestamps)
        .tail(
            &o.tail
                .map(|t| t.to_string())
                .unwrap_or_else(|| "all".into()),
        );
    if let Some(since) = &o.since {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        if let Ok(t) = since_seconds(since, now) {
            options = options.since(t.clamp(0, i32::MAX as i64) as i32);
        }
    }
    let mut stream = engine.docker.task_logs(&task, Some(options.build()));
    let mut partial = String::new();
    while let Some(item) = stream.next().await {
        let bytes = match item {
            Ok(LogOutput::StdOut { message })
            | Ok(LogOutput::StdErr { message })
            | Ok(LogOutput::Console { message }) => message,
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                let _ = lines.send(format!("{prefix}    | (log ended: {e})")).await;
                return;
            }
        };
        partial.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = partial.find('\n') {
            let line: String = partial.drain(..=end).collect();
            let text = line.trim_end_matches(['\n', '\r']);
            if lines.send(format!("{prefix}    | {text}")).await.is_err() {
                return;
            }
        }
    }
    if !partial.is_empty() {
        let _ = lines.send(format!("{prefix}    | {partial}")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_named_as_docker_names_them() {
        let task: Task = serde_json::from_value(serde_json::json!({
            "ID": "k3j4l5m6n7o8p9q0", "NodeID": "node1", "Slot": 2
        }))
        .expect("task");
        let hosts = HashMap::from([("node1".to_string(), "dev3".to_string())]);
        assert_eq!(prefix("web", &task, &hosts), "web.2.k3j4l5m6n7o8@dev3");
        let global: Task =
            serde_json::from_value(serde_json::json!({"ID": "abc", "NodeID": "n9"})).expect("task");
        assert_eq!(prefix("mon", &global, &hosts), "mon.n9.abc@n9");
    }
}
