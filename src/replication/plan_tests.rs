//! Table tests of the switchover planner: each refusal, and the choice of
//! candidate.

use super::*;

fn pos(text: &str) -> Gtid {
    Gtid::mariadb(text).unwrap()
}

fn primary(id: u32, at: &str) -> Seen {
    Seen::Answered(ServerFacts {
        flavour: Flavour::MariaDb,
        server_uuid: String::new(),
        server_id: id,
        read_only: false,
        binlog_pos: pos(at),
        current_pos: pos(at),
        binlog_state: pos(at),
        source: None,
        semi_sync: false,
    })
}

fn replica(id: u32, of: u32, at: &str) -> Seen {
    Seen::Answered(ServerFacts {
        flavour: Flavour::MariaDb,
        server_uuid: String::new(),
        server_id: id,
        read_only: true,
        binlog_pos: Gtid::default(),
        current_pos: pos(at),
        binlog_state: pos(at),
        source: Some(Source {
            host: "127.0.0.1".into(),
            port: 3300 + u16::try_from(of).unwrap(),
            server_id: of,
            io_running: true,
            sql_running: true,
            using_gtid: true,
            io_pos: pos(at),
        }),
        semi_sync: false,
    })
}

/// A server named `dbN` listens on port 3300 + N.
fn server(name: &str, seen: Seen) -> Server {
    Server {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: 3300 + name[2..].parse::<u16>().unwrap(),
        tier: Tier::Primary,
        candidate: true,
        seen,
        last_server_id: None,
        last_semi_sync: None,
    }
}

fn three() -> Vec<Server> {
    vec![
        server("db1", primary(1, "0-1-100")),
        server("db2", replica(2, 1, "0-1-98")),
        server("db3", replica(3, 1, "0-1-100")),
    ]
}

#[test]
fn the_most_advanced_replica_is_chosen_and_the_rest_re_pointed() {
    let plan = switchover(&three(), None).unwrap();
    assert_eq!(
        plan,
        SwitchoverPlan {
            old: 0,
            new: 2,
            others: vec![1]
        }
    );
    // Level: tier first, then config order.
    let mut level = three();
    level[1].seen = replica(2, 1, "0-1-100");
    assert_eq!(switchover(&level, None).unwrap().new, 1, "config order");
    level[1].tier = Tier::Standby;
    assert_eq!(
        switchover(&level, None).unwrap().new,
        2,
        "tier before order"
    );
    // A named target need not be the most advanced: it catches up first.
    assert_eq!(switchover(&three(), Some("db2")).unwrap().new, 1);
}

#[test]
fn every_refusal_says_why() {
    type Edit = fn(&mut Vec<Server>);
    let table: [(&str, Edit, Option<&str>, &str); 10] = [
        (
            "no primary",
            |s| s[0].seen = replica(1, 9, "0-1-100"),
            None,
            "no reachable server is writable",
        ),
        (
            "two writers",
            |s| s[1].seen = primary(2, "0-1-98"),
            None,
            "db1, db2 are all writable",
        ),
        (
            "unknown name",
            |_| {},
            Some("db9"),
            "no backend named \"db9\"",
        ),
        ("already primary", |_| {}, Some("db1"), "primary already"),
        (
            "not a candidate",
            |s| s[1].candidate = false,
            Some("db2"),
            "candidate = false",
        ),
        (
            "unreachable",
            |s| s[1].seen = Seen::Unreachable("connection refused".into()),
            Some("db2"),
            "unreachable (connection refused)",
        ),
        (
            "replicates elsewhere",
            |s| s[1].seen = replica(2, 7, "0-1-98"),
            Some("db2"),
            "server id 7",
        ),
        (
            "errant",
            |s| s[1].seen = replica(2, 1, "0-1-98,4-2-3"),
            Some("db2"),
            "3 transaction(s) the primary lacks",
        ),
        (
            "sql stopped",
            |s| {
                if let Seen::Answered(f) = &mut s[1].seen {
                    f.source.as_mut().unwrap().sql_running = false;
                }
            },
            Some("db2"),
            "SQL thread is stopped",
        ),
        (
            "none at all",
            |s| {
                s[1].candidate = false;
                s[2].seen = Seen::Unreachable("timeout".into());
            },
            None,
            "db2: candidate = false in the config; db3: unreachable (timeout)",
        ),
    ];
    for (what, edit, to, words) in table {
        let mut servers = three();
        edit(&mut servers);
        let err = switchover(&servers, to).expect_err(what).to_string();
        assert!(err.contains(words), "{what}: {err}");
    }
}

#[test]
fn unreachable_replicas_are_left_out_of_the_re_pointing() {
    let mut servers = three();
    servers[1].seen = Seen::Unreachable("timeout".into());
    let plan = switchover(&servers, None).unwrap();
    assert_eq!((plan.new, plan.others), (2, vec![]));
}

/// The primary db1 is dead; db2 and db3 replicated from it.
fn dead_primary() -> Vec<Server> {
    let mut servers = three();
    servers[0].seen = Seen::Unreachable("connection refused".into());
    for s in &mut servers[1..] {
        if let Seen::Answered(f) = &mut s.seen {
            f.source.as_mut().unwrap().io_running = false;
        }
    }
    servers
}

fn source_of(s: &mut Server) -> &mut Source {
    match &mut s.seen {
        Seen::Answered(f) => f.source.as_mut().unwrap(),
        Seen::Unusable(_) | Seen::Unreachable(_) => panic!("unreachable"),
    }
}

#[test]
fn a_failover_promotes_what_received_most_and_applies_it_first() {
    let mut servers = dead_primary();
    // db2 received more than it applied; db3 applied all it received.
    source_of(&mut servers[1]).io_pos = pos("0-1-101");
    let plan = failover(&servers, 0).unwrap();
    assert_eq!((plan.new, plan.others.clone()), (1, vec![2]));
    assert_eq!(plan.apply, pos("0-1-101"), "it applies its relay log first");
    // The dead primary's port differs from the replicas' Master_Port (a
    // name the config does not use): its last server id still ties them.
    for s in &mut servers[1..] {
        source_of(s).port = 9999;
    }
    assert!(failover(&servers, 0).is_err(), "no follower known");
    servers[0].last_server_id = Some(1);
    assert_eq!(failover(&servers, 0).unwrap().new, 1);
}

#[test]
fn a_failover_is_blocked_while_anything_still_sees_the_primary() {
    type Edit = fn(&mut Vec<Server>);
    let table: [(&str, Edit, &str, &str); 7] = [
        (
            "dbsplice reaches it",
            |s| s[0].seen = primary(1, "0-1-100"),
            "primary_answers",
            "db1 still answers",
        ),
        (
            "it lets the login in",
            |s| s[0].seen = Seen::Unusable("access denied".into()),
            "primary_answers",
            "db1 still answers",
        ),
        (
            "a replica sees it",
            |s| source_of(&mut s[2]).io_running = true,
            "replica_sees_primary",
            "replica db3 still sees the primary",
        ),
        (
            "a replica's link cannot be read",
            |s| s[1].seen = Seen::Unusable("SHOW SLAVE STATUS failed: denied".into()),
            "replica_unknown",
            "replica db2 answers but its replication cannot be read",
        ),
        (
            "promoted already",
            |s| {
                if let Seen::Answered(f) = &mut s[1].seen {
                    f.read_only = false;
                }
            },
            "another_writer",
            "db2 is writable already",
        ),
        (
            "errant",
            |s| {
                if let Seen::Answered(f) = &mut s[1].seen {
                    f.current_pos = pos("0-2-101");
                }
                s[2].candidate = false;
            },
            "no_candidate",
            "db2: it has 3 transaction(s) of its own",
        ),
        (
            "no one left",
            |s| {
                s[1].seen = Seen::Unreachable("timeout".into());
                s[2].seen = Seen::Unreachable("timeout".into());
            },
            "no_candidate",
            "db3: unreachable (timeout)",
        ),
    ];
    for (what, edit, label, words) in table {
        let mut servers = dead_primary();
        edit(&mut servers);
        let blocked = failover(&servers, 0).expect_err(what);
        assert_eq!(blocked.label(), label, "{what}");
        assert!(blocked.to_string().contains(words), "{what}: {blocked}");
    }
}

#[test]
fn a_returning_primary_is_fenced_then_rejoined_or_left_for_repair() {
    // db2 was promoted and db3 follows it; db1 is back, writable.
    let mut servers = vec![
        server("db1", primary(1, "0-1-100")),
        server("db2", primary(2, "0-2-105")),
        server("db3", replica(3, 2, "0-2-105")),
    ];
    // It logged what it received from db1 (log_slave_updates).
    if let Seen::Answered(f) = &mut servers[1].seen {
        f.binlog_state = pos("0-1-100,0-2-105");
    }
    assert_eq!(repairs(&servers, true), vec![Repair::Fence(0)]);
    // Fenced: read-only, and contained in the new primary's history.
    if let Seen::Answered(f) = &mut servers[0].seen {
        f.read_only = true;
    }
    assert_eq!(
        repairs(&servers, true),
        vec![Repair::Rejoin {
            server: 0,
            primary: 1
        }]
    );
    assert_eq!(
        repairs(&servers, false),
        vec![],
        "rejoin = false leaves it be"
    );
    // The new primary received db1's transactions up to 0-1-100 and wrote
    // on as server 2; db1 also logged 0-1-101, which never left it.
    if let Seen::Answered(f) = &mut servers[1].seen {
        f.binlog_state = pos("0-1-100,0-2-105");
    }
    assert_eq!(
        repairs(&servers, true),
        vec![Repair::Rejoin {
            server: 0,
            primary: 1
        }]
    );
    if let Seen::Answered(f) = &mut servers[0].seen {
        f.binlog_state = pos("0-1-101");
    }
    assert_eq!(
        repairs(&servers, true),
        vec![Repair::ManualRepair {
            server: 0,
            extra: 1
        }]
    );
    // Two writable and no replica following either: nothing is clear.
    let unclear = vec![
        server("db1", primary(1, "0-1-1")),
        server("db2", primary(2, "0-1-1")),
    ];
    assert_eq!(repairs(&unclear, true), vec![]);
}

const UA: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
const UB: &str = "4c7d2a3e-2f7b-11ee-a8f1-0242ac120002";
const UC: &str = "5d8e3b4f-3a8c-11ee-b9a2-0242ac120003";

/// A MySQL replica of server 1 (uuid UA) with this executed set.
fn mysql_replica(id: u32, uuid: &str, executed: &str) -> Seen {
    let set = Gtid::mysql(executed).unwrap();
    Seen::Answered(ServerFacts {
        flavour: Flavour::MySql,
        server_id: id,
        server_uuid: uuid.into(),
        read_only: true,
        binlog_pos: set.clone(),
        current_pos: set.clone(),
        binlog_state: set.clone(),
        source: Some(Source {
            host: "127.0.0.1".into(),
            port: 3301,
            server_id: 1,
            io_running: false,
            sql_running: true,
            using_gtid: true,
            io_pos: set,
        }),
        semi_sync: false,
    })
}

#[test]
fn a_mysql_replica_s_own_writes_no_one_else_has_are_errant() {
    let mut servers = vec![
        server("db1", Seen::Unreachable("refused".into())),
        server("db2", mysql_replica(2, UB, &format!("{UA}:1-10,{UB}:1-2"))),
        server("db3", mysql_replica(3, UC, &format!("{UA}:1-10"))),
    ];
    let plan = failover(&servers, 0).unwrap();
    assert_eq!(plan.new, 2, "db2 wrote two transactions of its own");
    // Both have db2's transactions (db2 was a primary once): not errant, and
    // db2, further along, is chosen.
    servers[2].seen = mysql_replica(3, UC, &format!("{UA}:1-10,{UB}:1-2"));
    servers[1].seen = mysql_replica(2, UB, &format!("{UA}:1-11,{UB}:1-2"));
    assert_eq!(failover(&servers, 0).unwrap().new, 1);
    // Alone with its own writes: blocked, saying why.
    servers[2].seen = Seen::Unreachable("timeout".into());
    servers[1].seen = mysql_replica(2, UB, &format!("{UA}:1-10,{UB}:1-2"));
    let blocked = failover(&servers, 0).unwrap_err().to_string();
    assert!(
        blocked.contains("db2: it has 2 transaction(s) of its own"),
        "{blocked}"
    );
}

#[test]
fn the_primary_is_known_by_who_the_replicas_follow() {
    assert_eq!(followed(&three()), Some(0));
    assert_eq!(followed(&dead_primary()), Some(0), "dead, by host and port");
    let mut split = dead_primary();
    source_of(&mut split[2]).port = 3302;
    source_of(&mut split[2]).server_id = 2;
    assert_eq!(followed(&split), None, "the replicas disagree");
    let mut unknown = dead_primary();
    source_of(&mut unknown[1]).port = 9999;
    assert_eq!(
        followed(&unknown),
        None,
        "one follows a server not in the pool"
    );
    let alone = vec![server("db1", primary(1, "0-1-1"))];
    assert_eq!(followed(&alone), None, "no replica");
}
