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

/// A MySQL GTID set (`@@gtid_executed`, `Retrieved_Gtid_Set`): for each
/// source's `server_uuid`, the transaction numbers it holds, as intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet {
    /// By uuid (lowercase): sorted, disjoint, non-adjacent closed intervals.
    sets: BTreeMap<String, Vec<(u64, u64)>>,
}

impl GtidSet {
    /// Parses a set as MySQL writes it: `uuid:1-5:7,uuid2:3`, with any
    /// whitespace (MySQL puts a newline after each comma).
    pub fn parse(text: &str) -> Result<GtidSet, String> {
        let mut set = GtidSet::default();
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        for part in compact.split(',').filter(|p| !p.is_empty()) {
            let mut pieces = part.split(':');
            let uuid = pieces.next().unwrap_or_default().to_ascii_lowercase();
            let bad = || format!("\"{part}\" is not a GTID set (uuid:N-M)");
            if uuid.len() != 36 || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(bad());
            }
            for range in pieces {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                let (a, b): (u64, u64) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a == 0 || b < a {
                    return Err(bad());
                }
                set.add(&uuid, a, b);
            }
        }
        Ok(set)
    }

    fn add(&mut self, uuid: &str, a: u64, b: u64) {
        let list = self.sets.entry(uuid.to_owned()).or_default();
        list.push((a, b));
        list.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(list.len());
        for &(x, y) in list.iter() {
            match merged.last_mut() {
                Some(last) if x <= last.1.saturating_add(1) => last.1 = last.1.max(y),
                _ => merged.push((x, y)),
            }
        }
        *list = merged;
    }

    /// Every transaction of either set.
    pub fn union(&self, other: &GtidSet) -> GtidSet {
        let mut out = self.clone();
        for (uuid, list) in &other.sets {
            for &(a, b) in list {
                out.add(uuid, a, b);
            }
        }
        out
    }

    /// How many transactions of this set `other` lacks, leaving out those of
    /// source `except` (a uuid) when given.
    pub fn missing_from(&self, other: &GtidSet, except: Option<&str>) -> u64 {
        let mut n = 0u64;
        for (uuid, list) in &self.sets {
            if except.is_some_and(|e| e.eq_ignore_ascii_case(uuid)) {
                continue;
            }
            let theirs = other.sets.get(uuid).map(Vec::as_slice).unwrap_or_default();
            for &(a, b) in list {
                let mut covered = 0u64;
                for &(x, y) in theirs {
                    let (lo, hi) = (a.max(x), b.min(y));
                    if lo <= hi {
                        covered = covered.saturating_add(hi - lo + 1);
                    }
                }
                n = n.saturating_add((b - a + 1).saturating_sub(covered));
            }
        }
        n
    }

    /// The transactions of source `uuid` alone.
    pub fn only(&self, uuid: &str) -> GtidSet {
        let mut out = GtidSet::default();
        if let Some((k, v)) = self.sets.get_key_value(&uuid.to_ascii_lowercase()) {
            out.sets.insert(k.clone(), v.clone());
        }
        out
    }

    /// Whether this set holds every transaction of `other`.
    pub fn contains(&self, other: &GtidSet) -> bool {
        other.missing_from(self, None) == 0
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (uuid, list) in &self.sets {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(uuid)?;
            for (a, b) in list {
                if a == b {
                    write!(f, ":{a}")?;
                } else {
                    write!(f, ":{a}-{b}")?;
                }
            }
        }
        Ok(())
    }
}

/// A server's position in either flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gtid {
    /// MariaDB's per-domain position, or binlog state.
    MariaDb(GtidPos),
    /// MySQL's set.
    MySql(GtidSet),
}

impl Default for Gtid {
    fn default() -> Gtid {
        Gtid::MariaDb(GtidPos::default())
    }
}

impl Gtid {
    /// A MariaDB position or state.
    pub fn mariadb(text: &str) -> Result<Gtid, String> {
        GtidPos::parse(text).map(Gtid::MariaDb)
    }

    /// A MySQL set.
    pub fn mysql(text: &str) -> Result<Gtid, String> {
        GtidSet::parse(text).map(Gtid::MySql)
    }

    /// Whether a server here has applied everything one at `other` has
    /// (of two flavours: never).
    pub fn contains(&self, other: &Gtid) -> bool {
        match (self, other) {
            (Gtid::MariaDb(a), Gtid::MariaDb(b)) => a.contains(b),
            (Gtid::MySql(a), Gtid::MySql(b)) => a.contains(b),
            _ => false,
        }
    }

    /// How many transactions a server here has that one at `other` lacks,
    /// as positions (of two flavours: as many as can be).
    pub fn ahead_of(&self, other: &Gtid) -> u64 {
        match (self, other) {
            (Gtid::MariaDb(a), Gtid::MariaDb(b)) => a.ahead_of(b),
            (Gtid::MySql(a), Gtid::MySql(b)) => a.missing_from(b, None),
            _ => u64::MAX,
        }
    }

    /// As binlog states, server by server, leaving out the transactions of
    /// the server with id `server_id` (MariaDB) or uuid `server_uuid`
    /// (MySQL) when given.
    pub fn state_ahead_of(
        &self,
        other: &Gtid,
        server_id: Option<u32>,
        server_uuid: Option<&str>,
    ) -> u64 {
        match (self, other) {
            (Gtid::MariaDb(a), Gtid::MariaDb(b)) => match server_id {
                Some(id) => a.state_ahead_of_except(b, id),
                None => a.state_ahead_of(b),
            },
            (Gtid::MySql(a), Gtid::MySql(b)) => a.missing_from(b, server_uuid),
            _ => u64::MAX,
        }
    }
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gtid::MariaDb(p) => p.fmt(f),
            Gtid::MySql(s) => s.fmt(f),
        }
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

    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const B: &str = "4c7d2a3e-2f7b-11ee-a8f1-0242ac120002";

    #[test]
    fn mysql_sets_parse_merge_and_compare() {
        let set = GtidSet::parse(&format!("{A}:1-5:7,\n{B}:3, {A}:6")).unwrap();
        assert_eq!(
            set.to_string(),
            format!("{A}:1-7,{B}:3"),
            "merged and sorted"
        );
        let primary = GtidSet::parse(&format!("{A}:1-10")).unwrap();
        let replica = GtidSet::parse(&format!("{A}:1-8")).unwrap();
        assert!(primary.contains(&replica) && !replica.contains(&primary));
        assert_eq!(primary.missing_from(&replica, None), 2);
        // A gap is a transaction missing, whatever the highest number.
        let gap = GtidSet::parse(&format!("{A}:1-4:6-10")).unwrap();
        assert!(!gap.contains(&primary) && primary.contains(&gap));
        assert_eq!(primary.missing_from(&gap, None), 1);
        // A replica's own writes (its uuid), and leaving a uuid out.
        let errant = GtidSet::parse(&format!("{A}:1-8,{B}:1-2")).unwrap();
        assert_eq!(errant.missing_from(&primary, None), 2);
        assert_eq!(errant.missing_from(&primary, Some(B)), 0);
        assert_eq!(
            errant.union(&primary).to_string(),
            format!("{A}:1-10,{B}:1-2")
        );
        for bad in [
            "nope:1",
            &format!("{A}:0"),
            &format!("{A}:5-3"),
            &format!("{A}:x"),
        ] {
            assert!(GtidSet::parse(bad).is_err(), "{bad}");
        }
        assert!(GtidSet::parse("").unwrap().to_string().is_empty());
        assert_eq!(errant.only(B).to_string(), format!("{B}:1-2"));
        assert!(errant
            .only("00000000-0000-0000-0000-000000000000")
            .to_string()
            .is_empty());
        assert!(
            !Gtid::MySql(primary).contains(&Gtid::mariadb("0-1-1").unwrap()),
            "flavours never mix"
        );
    }
}
