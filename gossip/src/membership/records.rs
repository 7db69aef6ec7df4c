//! The member records a node accepts: bounds on their fields and on the member set,
//! and foca's custom-broadcast handler that merges them into the shared set.

use std::sync::{Arc, Mutex};

use foca::{BroadcastHandler, Invalidates};

use super::Identity;
use crate::record::{Members, NodeRecord};

/// Longest node id, address or zone accepted in a record.
pub const MAX_RECORD_FIELD_BYTES: usize = 128;
/// Most records of members not removed a member set may hold; records of new
/// members beyond it are refused.
pub const MAX_MEMBERS: usize = 1024;
/// Most records of removed members kept (removal is final only while the record is
/// kept): beyond it the oldest are forgotten. Removed records do not count toward
/// [`MAX_MEMBERS`], so disk replacements never use up the member set (review A7).
pub const MAX_REMOVED: usize = 4 * MAX_MEMBERS;

/// Key of a record broadcast: a newer record of a node replaces an older one in
/// foca's dissemination backlog.
#[derive(Clone, Debug)]
pub struct RecordKey {
    node_id: String,
    record: NodeRecord,
}

impl Invalidates for RecordKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node_id == other.node_id
            && (self.record == other.record || self.record.supersedes(&other.record))
    }
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Bytes that do not decode as a record.
    #[error("undecodable member record: {0}")]
    Decode(#[from] postcard::Error),
    /// A field over [`MAX_RECORD_FIELD_BYTES`] or an empty node id.
    #[error("member record with an empty id or a field over {MAX_RECORD_FIELD_BYTES} bytes")]
    BadField,
    /// The member set is full.
    #[error("member set full ({MAX_MEMBERS} members that are not removed)")]
    Full,
}

pub(super) fn check_record(r: &NodeRecord) -> Result<(), RecordError> {
    if r.node_id.is_empty()
        || [&r.node_id, &r.address, &r.zone]
            .iter()
            .any(|f| f.len() > MAX_RECORD_FIELD_BYTES)
    {
        return Err(RecordError::BadField);
    }
    Ok(())
}

/// Merges one record into the shared set, within bounds.
pub(super) fn apply_record(members: &mut Members, r: NodeRecord) -> Result<bool, RecordError> {
    check_record(&r)?;
    let new_member =
        members.get(&r.node_id).is_none() && r.status != crate::record::Status::Removed;
    if new_member && members.live_len() >= MAX_MEMBERS {
        return Err(RecordError::Full);
    }
    let changed = members.apply(r);
    if changed {
        members.forget_oldest_removed(MAX_REMOVED);
    }
    Ok(changed)
}

/// foca's custom-broadcast handler: records merge into the shared member set.
pub struct RecordHandler {
    pub(super) members: Arc<Mutex<Members>>,
}

impl BroadcastHandler<Identity> for RecordHandler {
    type Key = RecordKey;
    type Error = RecordError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&Identity>,
    ) -> Result<Option<RecordKey>, RecordError> {
        let record: NodeRecord = postcard::from_bytes(data)?;
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if apply_record(&mut members, record.clone())? {
            Ok(Some(RecordKey {
                node_id: record.node_id.clone(),
                record,
            }))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Status;

    fn member(id: String, status: Status, version: u64) -> NodeRecord {
        NodeRecord {
            version,
            status,
            node_id: id,
            address: "127.0.0.1:7400".into(),
            zone: String::new(),
        }
    }

    #[test]
    fn removed_records_never_use_up_the_member_set() {
        // Review A7: every wipe of a node uses a new id; removals must not fill the
        // set for good.
        let mut m = Members::new();
        for i in 0..MAX_MEMBERS {
            apply_record(&mut m, member(format!("gone-{i:05}"), Status::Removed, 1))
                .expect("removed records always fit");
        }
        assert!(apply_record(&mut m, member("new".into(), Status::Joining, 1)).expect("fits"));
        // Live members are still bounded.
        for i in 1..MAX_MEMBERS {
            apply_record(&mut m, member(format!("live-{i:05}"), Status::Active, 1)).expect("fits");
        }
        assert!(matches!(
            apply_record(&mut m, member("one-too-many".into(), Status::Joining, 1)),
            Err(RecordError::Full)
        ));
        // A member that is removed frees its place.
        apply_record(&mut m, member("live-00001".into(), Status::Removed, 2)).expect("fits");
        assert!(
            apply_record(&mut m, member("one-too-many".into(), Status::Joining, 1)).expect("fits")
        );
        // Removed records are bounded too: the oldest are forgotten, the same ones
        // on every node.
        for i in 0..MAX_REMOVED {
            apply_record(&mut m, member(format!("later-{i:05}"), Status::Removed, 5))
                .expect("fits");
        }
        let removed = m.iter().filter(|r| r.status == Status::Removed).count();
        assert_eq!(removed, MAX_REMOVED);
        assert!(m.get("gone-00000").is_none(), "the oldest were forgotten");
        assert!(m.get("later-00000").is_some());
        assert_eq!(m.live_len(), MAX_MEMBERS);
    }
}
