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
        server_public_key: None,
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
}
