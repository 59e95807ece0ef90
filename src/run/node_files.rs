//! The node's and the record's files in the log collection, as Go's crunch-run writes them
//! just before the record goes Running: `node-info.txt` (node_info.rs, timestamped like the
//! other logs, but not in the logs table), `container.json` (the record as fetched,
//! indented by four spaces) and, when arvados-dispatch-cloud passed one, `node.json` (its
//! `InstanceType`, as given). Failing to write them is not the container's fault: the run
//! goes back to the queue.

use std::thread::JoinHandle;

use serde_json::Value;

use crate::logging::pipeline::LogPipeline;
use crate::node_info::node_info;

use super::{ContainerRun, Step};

impl ContainerRun<'_> {
    /// Start gathering node-info.txt (a few commands) beside the other steps.
    pub(super) fn gather_node_info(&self) -> Option<JoinHandle<Vec<String>>> {
        let tmp = self.config.spool_dir.clone();
        std::thread::Builder::new()
            .name("node-info".into())
            .spawn(move || node_info(&tmp))
            .ok()
    }

    /// Write node-info.txt, container.json and node.json into the log collection.
    pub(super) fn log_node_files(
        &self,
        record: &Value,
        gathering: Option<JoinHandle<Vec<String>>>,
        pipeline: &LogPipeline,
    ) -> Step<()> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            self.not_its_fault(format!("cannot write {what} in the log collection: {e}"))
        };
        let lines = gathering
            .and_then(|gathering| gathering.join().ok())
            .unwrap_or_else(|| node_info(&self.config.spool_dir));
        // Timestamped like the other logs, but kept out of the logs table: /proc/cpuinfo
        // alone is hundreds of lines, which would crowd the container's own out of it.
        let now = crate::rfc3339::format_timestamp(std::time::SystemTime::now());
        let text: String = lines.iter().map(|l| format!("{now} {l}\n")).collect();
        pipeline
            .write_file("node-info.txt", text.as_bytes())
            .map_err(|e| failed("node-info.txt", &e))?;
        let mut json = Vec::new();
        let indent = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut json, indent);
        serde::Serialize::serialize(record, &mut ser).map_err(|e| failed("container.json", &e))?;
        // Secrets are never in a record; a token that somehow were would be masked.
        let json = self.secrets.redact(&String::from_utf8_lossy(&json)) + "\n";
        pipeline
            .write_file("container.json", json.as_bytes())
            .map_err(|e| failed("container.json", &e))?;
        if let Some(instance_type) = &self.config.node.instance_type {
            pipeline
                .write_file("node.json", instance_type.as_bytes())
                .map_err(|e| failed("node.json", &e))?;
        }
        Ok(())
    }
}
