//! Table tests of the switchover planner: each refusal, and the choice of
//! candidate.

use super::*;

fn pos(text: &str) -> GtidPos {
    GtidPos::parse(text).unwrap()
}

fn primary(id: u32, at: &str) -> Seen {
    Seen::Answered(ServerFacts {
        server_id: id,
        read_only: false,
        binlog_pos: pos(at),
        current_pos: pos(at),
        source: None,
    })
}

fn replica(id: u32, of: u32, at: &str) -> Seen {
    Seen::Answered(ServerFacts {
        server_id: id,
        read_only: true,
        binlog_pos: GtidPos::default(),
        current_pos: pos(at),
        source: Some(Source {
            host: "127.0.0.1".into(),
            port: 3306,
            server_id: of,
            io_running: true,
            sql_running: true,
            using_gtid: true,
        }),
    })
}

fn server(name: &str, seen: Seen) -> Server {
    Server {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: 3306,
        tier: Tier::Primary,
        candidate: true,
        seen,
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
