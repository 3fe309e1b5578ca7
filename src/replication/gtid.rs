//! MariaDB GTID positions (`@@gtid_binlog_pos`, `@@gtid_slave_pos`,
//! `@@gtid_current_pos`): per replication domain, the last transaction
//! applied, as `domain-server-seq` separated by commas. Sequence numbers only
//! grow within a domain, so one position contains another when it is at or
//! past it in every domain the other names.
//!
//! A binlog state (`@@gtid_binlog_state`) names the last transaction of each
//! server in each domain. Comparing states server by server tells what a
//! position cannot: whether a server's own last transactions ever reached
//! another one, whose later transactions (written by a new primary) carry
//! the same sequence numbers or higher.

use std::collections::BTreeMap;
use std::fmt;

/// One server's position, or its binlog state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos {
    /// By domain and server id: the last sequence number (one server per
    /// domain in a position, any number in a state).
    entries: BTreeMap<(u32, u32), u64>,
}

impl GtidPos {
    /// Parses a position or state as the server writes it; an empty text is
    /// the empty position.
    pub fn parse(text: &str) -> Result<GtidPos, String> {
        let mut entries = BTreeMap::new();
        for gtid in text.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            let mut parts = gtid.split('-');
            let (Some(d), Some(s), Some(n), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("\"{gtid}\" is not a GTID (domain-server-seq)"));
            };
            let bad = |_| format!("\"{gtid}\" is not a GTID (domain-server-seq)");
            let domain: u32 = d.parse().map_err(bad)?;
            let server: u32 = s.parse().map_err(bad)?;
            let seq: u64 = n.parse().map_err(bad)?;
            if entries.insert((domain, server), seq).is_some() {
                return Err(format!("{domain}-{server} appears twice in \"{text}\""));
            }
        }
        Ok(GtidPos { entries })
    }

    /// The last sequence number in each domain.
    fn domains(&self) -> BTreeMap<u32, u64> {
        let mut out = BTreeMap::new();
        for (&(d, _), &seq) in &self.entries {
            let last = out.entry(d).or_insert(seq);
            *last = (*last).max(seq);
        }
        out
    }

    /// Whether this position is at or past `other` in every domain `other`
    /// names: a server here has applied everything `other` has.
    pub fn contains(&self, other: &GtidPos) -> bool {
        let mine = self.domains();
        other
            .domains()
            .iter()
            .all(|(d, seq)| mine.get(d).is_some_and(|m| m >= seq))
    }

    /// How many transactions this position has past `other`, summed over
    /// domains: what a server here has that one at `other` lacks.
    pub fn ahead_of(&self, other: &GtidPos) -> u64 {
        let theirs = other.domains();
        self.domains()
            .iter()
            .map(|(d, seq)| seq.saturating_sub(theirs.get(d).copied().unwrap_or(0)))
            .fold(0u64, u64::saturating_add)
    }

    /// For binlog states: how many of the transactions logged here the
    /// state `other` lacks, server by server.
    pub fn state_ahead_of(&self, other: &GtidPos) -> u64 {
        self.entries
            .iter()
            .map(|(key, seq)| seq.saturating_sub(other.entries.get(key).copied().unwrap_or(0)))
            .fold(0u64, u64::saturating_add)
    }

    /// [`GtidPos::state_ahead_of`], leaving out server `except`'s own
    /// transactions: a replica read a moment after its primary may have
    /// more of the primary's stream, never any that is not its.
    pub fn state_ahead_of_except(&self, other: &GtidPos, except: u32) -> u64 {
        self.entries
            .iter()
            .filter(|((_, server), _)| *server != except)
            .map(|(key, seq)| seq.saturating_sub(other.entries.get(key).copied().unwrap_or(0)))
            .fold(0u64, u64::saturating_add)
    }

    /// Whether no transaction is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for ((d, s), n) in &self.entries {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{d}-{s}-{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(text: &str) -> GtidPos {
        GtidPos::parse(text).unwrap()
    }

    #[test]
    fn positions_parse_and_print_back() {
        assert!(pos("").is_empty());
        assert_eq!(pos("0-1-42, 1-2-7").to_string(), "0-1-42,1-2-7");
        assert_eq!(pos("0-1-2,0-3-4").to_string(), "0-1-2,0-3-4", "a state");
        for bad in ["0-1", "a-1-2", "0-1-2-3", "0-1-2,0-1-4", "-1-2"] {
            assert!(GtidPos::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn containment_is_per_domain() {
        let (primary, replica) = (pos("0-1-42,1-2-7"), pos("0-1-40,1-2-7"));
        assert!(primary.contains(&replica) && !replica.contains(&primary));
        assert_eq!(primary.ahead_of(&replica), 2);
        assert_eq!(replica.ahead_of(&primary), 0);
        assert!(primary.contains(&pos("")), "everything contains nothing");
        assert!(
            !pos("0-1-42").contains(&pos("2-3-1")),
            "a domain it never saw"
        );
        // A transaction written on a replica in its own domain: errant.
        let errant = pos("0-1-42,5-3-1");
        assert!(!primary.contains(&errant));
        assert_eq!(errant.ahead_of(&primary), 1);
    }

    #[test]
    fn states_compare_server_by_server() {
        // The old primary logged 0-1-121, which never left it; the new
        // primary received up to 0-1-120 and wrote on from 0-2-121.
        let (old, new) = (pos("0-1-121"), pos("0-1-120,0-2-150"));
        assert!(new.contains(&old), "as positions, 150 is past 121");
        assert_eq!(old.state_ahead_of(&new), 1, "but 0-1-121 is missing");
        assert_eq!(pos("0-1-120").state_ahead_of(&new), 0);
        // Read a moment after its primary, a replica has more of the
        // primary's own stream: that is not errant; its own writes are.
        let replica = pos("0-1-125,0-3-2");
        assert_eq!(replica.state_ahead_of_except(&new, 1), 2);
        assert_eq!(pos("0-1-125").state_ahead_of_except(&new, 1), 0);
    }
}
