//! Retention: deleting, oldest first, the closed segments that are old enough and that every
//! consumer group of `retention_groups` has committed. [`EventLog::enforce_retention`] runs one
//! pass over every partition; this is the pass over one.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::record::{list_segments, segment_path};
use super::{EventLog, FileEventLog};
use crate::error::Result;

impl FileEventLog {
    /// Deletes, oldest first, the closed segments of one partition that every retention group
    /// has committed and that were last written before `cutoff`.
    pub(super) fn retain_partition(&self, partition: u32, cutoff: SystemTime) -> Result<u64> {
        let part = self.partition(partition)?;
        let mut consumed = None::<u64>;
        for group in &self.options.retention_groups {
            let c = self.committed(group, partition)?;
            consumed = Some(consumed.map_or(c, |m| m.min(c)));
        }
        let consumed = consumed.unwrap_or(0);
        let active = part.active.load(Ordering::Acquire);
        let bases = list_segments(&part.dir)?;
        let mut deleted = 0;
        for pair in bases.windows(2) {
            let (base, end) = (pair[0], pair[1]);
            let path = segment_path(&part.dir, base);
            if base >= active || end > consumed || std::fs::metadata(&path)?.modified()? > cutoff {
                break;
            }
            // Readers stop finding it first; one that already chose it retries (see `read`).
            part.index.write().retain(|p| p.base != base);
            std::fs::remove_file(&path)?;
            // Oldest first, each deletion durable before the next: the log never has a gap.
            File::open(&part.dir)?.sync_all()?;
            tracing::info!(
                partition,
                first_offset = base,
                end_offset = end,
                "deleted an event log segment every consumer is done with"
            );
            deleted += 1;
        }
        Ok(deleted)
    }
}
