//! Table tests for loading configs: defaults, and every kind of mistake an
//! operator makes, each reported with the file, the line or key, and a fix.

use super::*;

const GOOD: &str = r#"
shutdown_grace = "10s"

[[listener]]
name = "rw"
listen = "127.0.0.1:3306"
pool = "main"
max_connections = 100

[pool.main]
balance = "weighted-round-robin"
connect_timeout = "500ms"
connect_attempts = 2

[pool.main.check]
kind = "tcp"
interval = "1s"
timeout = "300ms"
rise = 1
fall = 2

[[pool.main.backend]]
address = "10.0.0.11:3306"
name = "db1"
weight = 3

[[pool.main.backend]]
address = "db2.example:3306"
tier = "standby"
"#;

fn fake_resolver(address: &Address) -> Result<SocketAddr, String> {
    match address.host.as_str() {
        "db2.example" => Ok(SocketAddr::from(([10, 0, 0, 12], address.port))),
        "nowhere.invalid" => Err("host \"nowhere.invalid\" cannot be resolved".into()),
        host => host
            .parse()
            .map(|ip| SocketAddr::new(ip, address.port))
            .map_err(|_| "unknown host".into()),
    }
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(Path::new("/etc/dbsplice/test.toml"), text, &fake_resolver)
}

fn error_text(text: &str) -> String {
    load(text)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn a_full_config_loads() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    let l = &c.listeners[0];
    assert_eq!(
        (l.name.as_str(), l.max_connections, l.pool.as_str()),
        ("rw", 100, "main")
    );
    let p = &c.pools["main"];
    assert_eq!(p.balance, Balance::WeightedRoundRobin);
    assert_eq!(
        (p.connect_timeout, p.connect_attempts),
        (Duration::from_millis(500), 2)
    );
    assert_eq!(
        (p.check.rise, p.check.fall, p.check.timeout),
        (1, 2, Duration::from_millis(300))
    );
    assert_eq!(p.backends[0].name, "db1");
    assert_eq!(p.backends[0].weight, 3);
    assert_eq!(
        p.backends[1].name, "db2.example:3306",
        "name defaults to the address"
    );
    assert_eq!(
        p.backends[1].addr,
        "10.0.0.12:3306".parse().unwrap(),
        "host names are resolved"
    );
    assert_eq!(p.backends[1].tier, Tier::Standby);
    assert!(c.summary().contains("pool main"));
}

#[test]
fn defaults_fill_what_is_left_out() {
    let c = load(
        "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\n[pool.p.check]\nuser = \"check\"\n\
         [[pool.p.backend]]\naddress = \"127.0.0.1:3306\"\n",
    )
    .unwrap();
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.workers, None);
    assert_eq!(c.listeners[0].max_connections, 10_000);
    assert_eq!(c.listeners[0].idle_timeout, None);
    let p = &c.pools["p"];
    assert_eq!(p.balance, Balance::LeastConnections);
    assert_eq!(
        (p.connect_timeout, p.connect_attempts),
        (Duration::from_secs(1), 3)
    );
    let check = &p.check;
    assert_eq!(
        check.kind,
        CheckKind::Mysql,
        "the MySQL-protocol check is the default"
    );
    assert_eq!(
        (check.interval, check.timeout, check.rise, check.fall),
        (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
    );
    assert_eq!(
        (check.fast_interval, check.down_interval),
        (check.interval, check.interval)
    );
    let mysql = check.mysql.as_ref().unwrap();
    assert_eq!(
        (mysql.user.as_str(), mysql.password.expose()),
        ("check", "")
    );
    assert_eq!(
        (mysql.tls, mysql.verify, mysql.lag, mysql.galera),
        (TlsSetting::Disabled, Verify::Full, false, false)
    );
    assert_eq!(
        (p.backends[0].weight, p.backends[0].tier),
        (1, Tier::Primary)
    );
    assert!(
        p.routing.greeting_gate,
        "with the MySQL check no client waits on a server that never greets"
    );
    assert_eq!(
        (p.routing.hold_timeout, p.routing.hold_max),
        (Duration::from_secs(5), 1000),
        "a client waits through a failover rather than see an error"
    );
    let tcp = load(
        "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\n[pool.p.check]\nkind = \"tcp\"\n\
         [[pool.p.backend]]\naddress = \"127.0.0.1:3306\"\n",
    )
    .unwrap();
    assert!(
        !tcp.pools["p"].routing.greeting_gate,
        "a TCP check may front something that is not MySQL"
    );
}

#[test]
fn check_settings_are_validated() {
    let with_check = |check: &str| {
        format!(
            "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\n[pool.p.check]\n{check}\n\
             [[pool.p.backend]]\naddress = \"127.0.0.1:3306\"\n"
        )
    };
    let table = [
        ("", "pool.p.check.user", "kind = \"tcp\""),
        (
            "user = \"c\"\npassword = \"x\"\npassword_file = \"/p\"",
            "pool.p.check.password_file",
            "not both",
        ),
        (
            "user = \"c\"\ntls = \"required\"",
            "pool.p.check.ca_file",
            "verify = \"none\"",
        ),
        (
            "kind = \"tcp\"\nuser = \"c\"",
            "pool.p.check.user",
            "only the \"mysql\" check",
        ),
        (
            "user = \"c\"\nfast_interval = \"0s\"",
            "pool.p.check.fast_interval",
            "not usable",
        ),
    ];
    for (check, key, words) in table {
        let err = error_text(&with_check(check));
        assert!(
            err.contains(&format!("key `{key}`")) && err.contains(words),
            "{check}: {err}"
        );
    }
    let err = error_text(&with_check("user = \"c\"\ntls = \"sometimes\""));
    assert!(
        err.contains("sometimes") && err.contains("required"),
        "{err}"
    );
    let ok = load(&with_check(
        "user = \"c\"\ntls = \"required\"\nverify = \"none\"\nlag = true",
    ))
    .unwrap();
    assert!(ok.pools["p"].check.mysql.as_ref().unwrap().lag);
    let debug = format!(
        "{:?}",
        load(&with_check("user = \"c\"\npassword = \"hunter2\"")).unwrap()
    );
    assert!(
        !debug.contains("hunter2"),
        "passwords never reach Debug output"
    );
}

#[test]
fn password_and_key_files_are_read_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("dbsplice-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("check.pw"), "s3cret\n").unwrap();
    let text = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\n[pool.p.check]\n\
                user = \"c\"\npassword_file = \"check.pw\"\n[[pool.p.backend]]\naddress = \"127.0.0.1:3306\"\n";
    std::fs::write(dir.join("ok.toml"), text).unwrap();
    let c = Config::load(&dir.join("ok.toml")).unwrap();
    assert_eq!(
        c.pools["p"].check.mysql.as_ref().unwrap().password.expose(),
        "s3cret"
    );
    std::fs::write(
        dir.join("missing.toml"),
        text.replace("check.pw", "nope.pw"),
    )
    .unwrap();
    let err = Config::load(&dir.join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pool.p.check.password_file") && err.contains("nope.pw"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each mistake, whether it is reported by line (else by key) and words the
/// message must contain.
#[test]
fn each_mistake_is_named_with_a_fix() {
    let table: [(&str, &str, &str, bool, &[&str]); 24] = [
        (
            "no workers",
            "shutdown_grace = \"10s\"",
            "workers = 0",
            false,
            &[
                "workers",
                "0 is not a thread count from 1 to 1024",
                "one per CPU",
            ],
        ),
        (
            "workers as text",
            "shutdown_grace = \"10s\"",
            "workers = \"auto\"",
            true,
            &["invalid type", "integer"],
        ),
        (
            "unknown key",
            "weight = 3",
            "weigth = 3",
            true,
            &["unknown field `weigth`", "weight"],
        ),
        (
            "wrong type",
            "weight = 3",
            "weight = \"3\"",
            true,
            &["invalid type", "integer"],
        ),
        (
            "weight zero",
            "weight = 3",
            "weight = 0",
            true,
            &["weight 0", "1 to 256"],
        ),
        (
            "weight too big",
            "weight = 3",
            "weight = 300",
            true,
            &["weight 300", "1 to 256"],
        ),
        (
            "bad balance",
            "\"weighted-round-robin\"",
            "\"round-robin\"",
            true,
            &["round-robin", "least-connections"],
        ),
        (
            "bad tier",
            "tier = \"standby\"",
            "tier = \"backup\"",
            true,
            &["backup", "standby"],
        ),
        (
            "bare duration",
            "interval = \"1s\"",
            "interval = 1",
            true,
            &["no unit", "\"1s\""],
        ),
        (
            "bad unit",
            "\"500ms\"",
            "\"500us\"",
            true,
            &["unit", "500ms"],
        ),
        (
            "bad address",
            "\"10.0.0.11:3306\"",
            "\"10.0.0.11\"",
            true,
            &["host:port"],
        ),
        (
            "bad port",
            "\"10.0.0.11:3306\"",
            "\"10.0.0.11:x\"",
            true,
            &["invalid port"],
        ),
        (
            "not toml",
            "[pool.main]",
            "[pool.main",
            true,
            &["pool.main", ""],
        ),
        (
            "missing pool",
            "pool = \"main\"",
            "pool = \"mian\"",
            false,
            &["listener[0].pool", "\"mian\" is not defined", "main"],
        ),
        (
            "no primary",
            "weight = 3",
            "weight = 3\ntier = \"standby\"",
            false,
            &["pool.main.backend", "no primary", "tier = \"primary\""],
        ),
        (
            "duplicate name",
            "name = \"db1\"",
            "name = \"db2.example:3306\"",
            false,
            &["backend[1].name", "used twice"],
        ),
        (
            "unresolvable",
            "db2.example",
            "nowhere.invalid",
            false,
            &["backend[1].address", "cannot be resolved"],
        ),
        (
            "resolving too often",
            "connect_attempts = 2",
            "connect_attempts = 2\nresolve_interval = \"100ms\"",
            false,
            &["pool.main.resolve_interval", "\"1s\" or more"],
        ),
        (
            "forgetting at once",
            "connect_attempts = 2",
            "connect_attempts = 2\ndiscover = \"galera\"\nforget_after = \"0s\"",
            false,
            &["pool.main.forget_after", "\"10m\""],
        ),
        (
            "an SRV name with a space",
            "[[pool.main.backend]]",
            "[[pool.main.backend_srv]]\nname = \"_mysql._tcp. db\"\n[[pool.main.backend]]",
            false,
            &["pool.main.backend_srv[0].name", "not an SRV name"],
        ),
        (
            "a resolver that is not an address",
            "shutdown_grace = \"10s\"",
            "shutdown_grace = \"10s\"\nresolver = \"dns.example\"",
            false,
            &["resolver", "IP:port", "remove the key"],
        ),
        (
            "zero attempts",
            "connect_attempts = 2",
            "connect_attempts = 0",
            false,
            &["pool.main.connect_attempts", "1 or more"],
        ),
        (
            "limit as string",
            "max_connections = 100",
            "max_connections = \"100\"",
            true,
            &["whole number", "without quotes"],
        ),
        (
            "zero rise",
            "rise = 1",
            "rise = 0",
            false,
            &["pool.main.check.rise", "1 or more"],
        ),
    ];
    for (what, from, to, by_line, words) in table {
        let at = GOOD
            .find(from)
            .unwrap_or_else(|| panic!("{what}: the good config has no {from}"));
        let line = GOOD[..at].matches('\n').count() + 1;
        let err = error_text(&GOOD.replacen(from, to, 1));
        assert!(
            err.starts_with("/etc/dbsplice/test.toml"),
            "{what}: names the file: {err}"
        );
        if by_line {
            assert!(
                err.contains(&format!("test.toml:{line}:")),
                "{what}: names line {line}: {err}"
            );
        } else {
            assert!(err.contains("key `"), "{what}: names the key: {err}");
        }
        for w in words {
            assert!(err.contains(w), "{what}: mentions {w:?}: {err}");
        }
    }
}

#[test]
fn duplicate_listeners_and_empty_files_are_refused() {
    let twice = format!(
        "{GOOD}\n[[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:3306\"\npool = \"main\"\n"
    );
    let err = error_text(&twice);
    assert!(
        err.contains("listener[1].name") && err.contains("used twice"),
        "{err}"
    );
    assert!(
        err.contains("listener[1].listen") && err.contains("already used"),
        "{err}"
    );
    let err = error_text("");
    assert!(
        err.contains("no listener") && err.contains("no pool"),
        "{err}"
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let text = GOOD
        .replace("connect_attempts = 2", "connect_attempts = 0")
        .replace("pool = \"main\"", "pool = \"x\"");
    let ConfigError::Invalid { problems, .. } = load(&text).unwrap_err() else {
        panic!("expected Invalid")
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn a_missing_file_names_the_file() {
    let err = Config::load(Path::new("/nonexistent/dbsplice.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/dbsplice.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn routing_settings_are_validated() {
    let with = |pool: &str, check: &str| {
        format!(
            "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\n{pool}\n[pool.p.check]\n{check}\n\
             [[pool.p.backend]]\naddress = \"127.0.0.1:3306\"\n"
        )
    };
    let mysql = "user = \"c\"";
    let c = load(&with("role = \"writer\"", mysql)).unwrap();
    assert_eq!(
        c.pools["p"].routing.on_down,
        OnDown::Close,
        "writer pools close sessions by default"
    );
    let c = load(&with(
        "role = \"reader\"\nmax_lag = \"10s\"\non_down = \"drain:30s\"",
        mysql,
    ))
    .unwrap();
    let p = &c.pools["p"];
    assert_eq!(p.routing.on_down, OnDown::Drain(Duration::from_secs(30)));
    assert_eq!(
        p.routing.readmit_lag,
        Some(Duration::from_secs(10)),
        "readmit defaults to max_lag"
    );
    assert!(
        p.check.mysql.as_ref().unwrap().lag,
        "max_lag makes the check ask for lag"
    );
    let table = [
        ("role = \"writer\"", "kind = \"tcp\"", "pool.p.role"),
        ("max_lag = \"10s\"", mysql, "pool.p.max_lag"),
        (
            "role = \"reader\"\nmax_lag = \"5s\"\nreadmit_lag = \"9s\"",
            mysql,
            "pool.p.readmit_lag",
        ),
        (
            "role = \"reader\"\non_multiple_writers = \"refuse\"",
            mysql,
            "pool.p.on_multiple_writers",
        ),
    ];
    for (pool, check, key) in table {
        let err = error_text(&with(pool, check));
        assert!(err.contains(&format!("key `{key}`")), "{pool}: {err}");
    }
    let err = error_text(&with("on_down = \"later\"", mysql));
    assert!(err.contains("drain:<duration>"), "{err}");
}

/// A config that sets every key dbsplice knows (some in combinations the
/// validator refuses, such as both `password` and `password_file`): the
/// parser accepts each value's type.
const EVERY_KEY: &str = r#"
shutdown_grace = "30s"
reload_poll = "10s"
workers = 2
resolver = "127.0.0.53:53"

[admin]
listen = "127.0.0.1:9306"
token_file = "admin.token"
cert_file = "admin.crt"
key_file = "admin.key"
max_connections = 32
allowed_hosts = ["dbsplice-1.example.com"]

[[listener]]
name = "rw"
listen = "127.0.0.1:3306"
pool = "main"
max_connections = 10000
idle_timeout = "8h"
half_close_timeout = "30s"
allow = ["10.0.0.0/8", "127.0.0.1"]

[pool.main]
balance = "least-connections"
connect_timeout = "1s"
connect_attempts = 3
resolve_interval = "30s"
resolve = "first"
discover = "galera"
forget_after = "10m"
role = "writer"
on_multiple_writers = "keep"
max_lag = "10s"
readmit_lag = "5s"
lag_unknown = "exclude"
fallback = "writer"
on_down = "drain:5s"
greeting_gate = true
greeting_timeout = "1s"
hold_timeout = "5s"
hold_max = 1000
failback = "30s"
flap_threshold = 6
flap_window = "60s"
flap_hold = "10s"
flap_hold_max = "5m"
on_primary_return = "keep"
send_proxy = "v2"
on_remove = "keep"
slow_start = "30s"

[pool.main.check]
kind = "mysql"
user = "dbsplice_check"
password = "secret"
password_file = "check.password"
tls = "required"
ca_file = "ca.pem"
verify = "full"
server_public_key_file = "server-public-key.pem"
get_server_public_key = false
lag = true
galera = false
galera_donor_ok = false
group_replication = false
interval = "2s"
fast_interval = "500ms"
down_interval = "2s"
timeout = "1s"
rise = 2
fall = 3

[pool.main.replication]
user = "dbsplice_admin"
password = "secret"
password_file = "admin.password"
replication_user = "repl"
replication_password = "secret"
replication_password_file = "repl.password"
failover = "off"
failover_after = "10s"
rejoin = true
lock = "majority_of_all"
catch_up_timeout = "10s"

[[pool.main.backend]]
address = "10.0.0.11:3306"
name = "db1"
weight = 1
tier = "primary"
max_connections = 500
candidate = true

[[pool.main.backend_srv]]
name = "_mysql._tcp.db.example"
max_connections = 500
"#;

/// The keys the example config documents, set or commented out.
fn documented_keys(example: &str) -> std::collections::BTreeSet<String> {
    example
        .lines()
        .filter_map(|line| {
            let line = line.trim_start_matches('#').trim_start();
            let (key, rest) = line.split_once(" = ")?;
            let value = rest.trim_start();
            let is_value = value.starts_with(['"', '['])
                || value.starts_with(|c: char| c.is_ascii_digit())
                || value.starts_with("true")
                || value.starts_with("false");
            (is_value && !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                .then(|| key.to_owned())
        })
        .collect()
}

/// Every path to a plain value (not a table, not an array of tables).
fn leaves(value: &toml::Value, path: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table {
                path.push(PathStep::Key(key.clone()));
                leaves(v, path, out);
                path.pop();
            }
        }
        toml::Value::Array(items)
            if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
        {
            for (i, v) in items.iter().enumerate() {
                path.push(PathStep::Index(i));
                leaves(v, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn value_at<'a>(root: &'a mut toml::Value, path: &[PathStep]) -> &'a mut toml::Value {
    path.iter().fold(root, |v, step| match step {
        PathStep::Key(k) => v.get_mut(k.as_str()).expect("key on the path"),
        PathStep::Index(i) => v.get_mut(*i).expect("index on the path"),
    })
}

#[test]
fn every_key_with_a_value_of_the_wrong_type_is_refused_naming_its_line() {
    let example = include_str!("../../conf/dbsplice.toml");
    let documented = documented_keys(example);
    assert!(documented.len() > 50, "{documented:?}");
    for key in &documented {
        assert!(
            EVERY_KEY
                .lines()
                .any(|l| l.starts_with(&format!("{key} = "))),
            "EVERY_KEY lacks `{key}`, which conf/dbsplice.toml documents"
        );
    }
    toml::from_str::<raw::RawConfig>(EVERY_KEY).expect("EVERY_KEY's types are right");

    let root: toml::Value = toml::from_str(EVERY_KEY).unwrap();
    let mut paths = Vec::new();
    leaves(&root, &mut Vec::new(), &mut paths);
    let wrong = [
        toml::Value::String("x".into()),
        toml::Value::Integer(7),
        toml::Value::Float(1.5),
        toml::Value::Boolean(true),
        toml::Value::Array(vec![toml::Value::Integer(1)]),
        toml::Value::Table(toml::Table::new()),
    ];
    let mut tried = 0;
    for path in &paths {
        let Some(PathStep::Key(key)) = path.last() else {
            unreachable!("leaves end in a key")
        };
        for value in &wrong {
            let mut doc = root.clone();
            let slot = value_at(&mut doc, path);
            if slot.type_str() == value.type_str() {
                continue;
            }
            *slot = value.clone();
            let text = toml::to_string(&doc).unwrap();
            tried += 1;
            match load(&text) {
                Err(ConfigError::Parse {
                    file,
                    message,
                    source_line,
                    ..
                }) => {
                    assert_eq!(file, Path::new("/etc/dbsplice/test.toml"));
                    assert!(
                        source_line.contains(key.as_str()),
                        "{path:?} = {value}: the error shows `{source_line}`: {message}"
                    );
                }
                other => panic!("{path:?} = {value} was not refused as a type error: {other:?}"),
            }
        }
    }
    // Each value has exactly one of the six types.
    assert_eq!(tried, paths.len() * (wrong.len() - 1));
    assert!(paths.len() >= documented.len(), "{paths:?}");
}

#[test]
fn a_parse_error_on_a_line_holding_a_secret_never_shows_the_value() {
    let base = "[[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:3306\"\npool = \"main\"\n\
                [pool.main]\n[pool.main.check]\nuser = \"check\"\n";
    for line in [
        "password = hunter2-secret",
        "password = \"hunter2-secret",
        "password = 'hunter2-secret' trailing",
        "password = [\"hunter2-secret\", 1]",
        "\"password\" = hunter2-secret",
    ] {
        let text = format!("{base}{line}\n[[pool.main.backend]]\naddress = \"10.0.0.1:3306\"\n");
        let error = Config::from_toml(Path::new("t.toml"), &text, &|a| {
            Ok(std::net::SocketAddr::new([10, 0, 0, 1].into(), a.port))
        })
        .unwrap_err();
        let shown = error.to_string();
        assert!(!shown.contains("hunter2"), "{line}: {shown}");
        assert!(
            matches!(error, ConfigError::Parse { line: 8, .. }),
            "{line}: the line is still named: {shown}"
        );
        assert!(shown.contains("<value hidden"), "{shown}");
    }
    // Other lines are shown as written.
    let error = Config::from_toml(Path::new("t.toml"), "listen_x = nope\n", &|_| {
        Err(String::new())
    })
    .unwrap_err();
    assert!(error.to_string().contains("listen_x = nope"), "{error}");
}

#[test]
fn pools_sharing_a_server_must_agree_on_its_check_but_lag() {
    let text = |reader_check: &str| {
        format!(
            "[[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:3306\"\npool = \"writer\"\n\
             [pool.writer]\nrole = \"writer\"\n[pool.writer.check]\nuser = \"check\"\n\
             [[pool.writer.backend]]\naddress = \"10.0.0.1:3306\"\n\
             [pool.reader]\nrole = \"reader\"\n[pool.reader.check]\nuser = \"check\"\n{reader_check}\n\
             [[pool.reader.backend]]\naddress = \"10.0.0.1:3306\"\n"
        )
    };
    let load = |t: &str| {
        Config::from_toml(Path::new("t.toml"), t, &|a| {
            Ok(std::net::SocketAddr::new([10, 0, 0, 1].into(), a.port))
        })
    };
    assert!(load(&text("lag = true")).is_ok(), "lag may differ");
    let error = load(&text("galera = true\ngalera_donor_ok = true"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("pool.writer.check")
            && error.contains("pool 'reader'")
            && error.contains("galera, galera_donor_ok"),
        "{error}"
    );
}

const REPLICATED: &str = "[[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:3306\"\npool = \"main\"\n\
    [pool.main]\nrole = \"writer\"\n[pool.main.check]\nuser = \"check\"\n\
    [pool.main.replication]\nuser = \"admin\"\npassword = \"a\"\nreplication_user = \"repl\"\nreplication_password = \"r\"\n\
    [[pool.main.backend]]\naddress = \"10.0.0.11:3306\"\n[[pool.main.backend]]\naddress = \"10.0.0.12:3306\"\ncandidate = false\n";

#[test]
fn replication_settings_have_safe_defaults() {
    let c = load(REPLICATED).unwrap();
    let pool = &c.pools["main"];
    let r = pool.replication.as_ref().unwrap();
    assert_eq!(
        (
            r.user.as_str(),
            r.password.expose(),
            r.replication_user.as_str()
        ),
        ("admin", "a", "repl")
    );
    assert_eq!(
        r.failover,
        crate::vocabulary::FailoverMode::Off,
        "never promotes unless asked"
    );
    assert_eq!(r.failover_after, std::time::Duration::from_secs(10));
    assert!(r.rejoin);
    assert_eq!(r.lock, crate::vocabulary::LockScope::MajorityOfAll);
    assert_eq!(
        pool.backends
            .iter()
            .map(|b| b.candidate)
            .collect::<Vec<_>>(),
        [true, false]
    );
    assert!(load(GOOD).unwrap().pools["main"].replication.is_none());
}

#[test]
fn replication_mistakes_are_named_with_a_fix() {
    for (what, from, to, words) in [
        (
            "not a writer pool",
            "role = \"writer\"",
            "role = \"reader\"",
            &["pool.main.replication", "role = \"writer\""][..],
        ),
        (
            "no user",
            "user = \"admin\"\n",
            "",
            &["pool.main.replication.user"][..],
        ),
        (
            "two passwords",
            "password = \"a\"\n",
            "password = \"a\"\npassword_file = \"a.pw\"\n",
            &["pool.main.replication.password_file", "not both"][..],
        ),
        (
            "no replication password",
            "replication_password = \"r\"\n",
            "",
            &["pool.main.replication.replication_password_file"][..],
        ),
        (
            "zero failover_after",
            "replication_user",
            "failover_after = \"0s\"\nreplication_user",
            &["pool.main.replication.failover_after", "0s"][..],
        ),
        (
            "unknown failover mode",
            "replication_user",
            "failover = \"sometimes\"\nreplication_user",
            &["failover", "off", "auto"][..],
        ),
        (
            "unknown lock scope",
            "replication_user",
            "lock = \"any\"\nreplication_user",
            &["lock", "majority_of_all"][..],
        ),
    ] {
        let text = REPLICATED.replacen(from, to, 1);
        assert_ne!(text, REPLICATED, "{what}: the edit applies");
        let err = error_text(&text);
        for w in words {
            assert!(err.contains(w), "{what}: {w:?} missing from: {err}");
        }
    }
}
