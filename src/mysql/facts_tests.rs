//! Table tests: result sets to roles, lag and Galera verdicts.

use super::*;
use crate::mysql::probe::TlsMode;

fn vars(pairs: &[(&str, &str)]) -> TextResult {
    TextResult {
        columns: vec!["Variable_name".into(), "Value".into()],
        rows: pairs
            .iter()
            .map(|(k, v)| vec![Some((*k).to_owned()), Some((*v).to_owned())])
            .collect(),
    }
}

#[test]
fn roles() {
    let table: [(&[(&str, &str)], Role); 6] = [
        (&[("read_only", "OFF")], Role::Writable),
        (&[("read_only", "ON")], Role::ReadOnly),
        (
            &[("read_only", "OFF"), ("super_read_only", "ON")],
            Role::ReadOnly,
        ),
        (&[("read_only", "NO_LOCK")], Role::ReadOnly),
        (&[("read_only", "0")], Role::Writable),
        (&[], Role::Unknown),
    ];
    for (rows, want) in table {
        assert_eq!(role(&vars(rows)), want, "{rows:?}");
    }
}

#[test]
fn galera_verdicts() {
    let opts = |donor_ok| ProbeOptions {
        user: String::new(),
        password: String::new(),
        tls: TlsMode::Disabled,
        lag: false,
        galera: true,
        galera_donor_ok: donor_ok,
        group_replication: false,
        server_public_key: None,
        get_server_public_key: false,
    };
    let facts = |ready: &str, state: &str, status: &str| Facts {
        galera: Some(galera(&vars(&[
            ("wsrep_ready", ready),
            ("wsrep_local_state", state),
            ("wsrep_cluster_status", status),
        ]))),
        ..Facts::default()
    };
    assert!(facts("ON", "4", "Primary").verdict(&opts(false)).is_ok());
    assert!(
        facts("ON", "2", "Primary").verdict(&opts(false)).is_err(),
        "a donor only when allowed"
    );
    assert!(facts("ON", "2", "Primary").verdict(&opts(true)).is_ok());
    let err = facts("OFF", "4", "Primary")
        .verdict(&opts(false))
        .unwrap_err();
    assert!(err.to_string().contains("wsrep_ready=OFF"), "{err}");
    assert!(
        facts("ON", "4", "non-Primary")
            .verdict(&opts(false))
            .is_err(),
        "outside the quorum"
    );
    assert!(
        facts("ON", "1", "Primary").verdict(&opts(false)).is_err(),
        "joining"
    );
    let no_wsrep = Facts {
        galera: Some(galera(&vars(&[]))),
        ..Facts::default()
    };
    assert!(no_wsrep.verdict(&opts(false)).is_err(), "not a Galera node");

    // Settings an operator changes on a running node.
    let with = |reject: &str, desync: &str, state: &str| {
        let mut f = facts("ON", state, "Primary");
        f.learn(
            Query::GaleraSettings,
            QueryOutcome::Rows(vars(&[
                ("wsrep_desync", desync),
                ("wsrep_reject_queries", reject),
            ])),
        )
        .unwrap();
        f
    };
    assert!(with("NONE", "OFF", "4").verdict(&opts(false)).is_ok());
    for reject in ["ALL", "ALL_KILL"] {
        let err = with(reject, "OFF", "4").verdict(&opts(true)).unwrap_err();
        assert!(
            err.to_string().contains("refuses clients' queries"),
            "{err}"
        );
    }
    let err = with("NONE", "ON", "2").verdict(&opts(true)).unwrap_err();
    assert!(
        err.to_string().contains("wsrep_desync=ON"),
        "desynced on purpose is no donor, even with galera_donor_ok: {err}"
    );
    assert!(
        with("NONE", "OFF", "2").verdict(&opts(true)).is_ok(),
        "a real donor"
    );
}

#[test]
fn group_replication_verdicts() {
    let opts = ProbeOptions {
        user: String::new(),
        password: String::new(),
        tls: TlsMode::Disabled,
        lag: false,
        galera: false,
        galera_donor_ok: false,
        group_replication: true,
        server_public_key: None,
        get_server_public_key: false,
    };
    let member = |state: &str, online: &str, members: &str| {
        let rows = TextResult {
            columns: ["state", "role", "online", "members"]
                .map(String::from)
                .to_vec(),
            rows: vec![vec![
                Some(state.to_owned()),
                Some("SECONDARY".to_owned()),
                Some(online.to_owned()),
                Some(members.to_owned()),
            ]],
        };
        Facts {
            group: Some(group(&rows)),
            ..Facts::default()
        }
        .verdict(&opts)
    };
    assert!(member("ONLINE", "3", "3").is_ok());
    assert!(member("ONLINE", "2", "3").is_ok(), "a majority is enough");
    let err = member("ONLINE", "1", "3").unwrap_err();
    assert!(err.to_string().contains("no majority"), "{err}");
    assert!(member("RECOVERING", "3", "3").is_err());
    // Counts near u32::MAX from a hostile server: a verdict, not an overflow.
    assert!(member("ONLINE", "4294967295", "4294967295").is_ok());
    assert!(member("ONLINE", "2147483648", "4294967295").is_ok());
    assert!(member("ONLINE", "2147483647", "4294967295").is_err());
    let none = TextResult {
        columns: ["state", "role", "online", "members"]
            .map(String::from)
            .to_vec(),
        rows: vec![vec![None, None, Some("0".into()), Some("0".into())]],
    };
    let err = Facts {
        group: Some(group(&none)),
        ..Facts::default()
    }
    .verdict(&opts)
    .unwrap_err();
    assert!(err.to_string().contains("not in a group"), "{err}");
}
