//! The config's contact with the outside world: reading the file and the
//! files it names (passwords, certificates, the admin token), and resolving
//! host names through the system resolver. Everything else in [`super`] is
//! pure and takes these as inputs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use super::{Address, Config, ConfigError, MysqlCheck, Problem, Secret};

impl Config {
    /// Reads, parses, validates and resolves the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::from_file_text(path, &text)
    }

    /// Parses and validates `text` read from `path`, and reads the files the
    /// config names (relative to its directory).
    pub fn from_file_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let lookup = lookup_of(text);
        let mut config = Config::from_toml(path, text, &|a| resolve_with(&lookup, a))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut problems: Vec<Problem> = config
            .pools
            .values_mut()
            .filter_map(|p| Some((format!("pool.{}.check", p.name), p.check.mysql.as_mut()?)))
            .flat_map(|(key, mysql)| mysql.load_files(&key, base))
            .collect();
        problems.extend(replication_files(&mut config, base));
        problems.extend(expand_sources(&mut config, &lookup));
        let Some(admin) = config.admin.as_mut() else {
            return finish(path, config, problems);
        };
        if let (Some(cert), Some(key)) = (&admin.cert_file, &admin.key_file) {
            let read = |field: &str, file: &Path| {
                std::fs::read(base.join(file)).map_err(|e| Problem {
                    key: format!("admin.{field}"),
                    message: format!(
                        "cannot read {}: {e}; fix the path or the file's permissions",
                        base.join(file).display()
                    ),
                })
            };
            match (read("cert_file", cert), read("key_file", key)) {
                (Ok(c), Ok(k)) => {
                    admin.tls_pem = Some((c, Secret::new(String::from_utf8_lossy(&k).into_owned())))
                }
                (c, k) => problems.extend(c.err().into_iter().chain(k.err())),
            }
        }
        if let Some(file) = &admin.token_file {
            let full = base.join(file);
            match std::fs::read_to_string(&full) {
                Ok(t) if !t.trim().is_empty() => admin.token = Some(Secret::new(t.trim())),
                Ok(_) => problems.push(Problem {
                    key: "admin.token_file".into(),
                    message: format!(
                        "{} is empty; write a long random token into it",
                        full.display()
                    ),
                }),
                Err(e) => problems.push(Problem {
                    key: "admin.token_file".into(),
                    message: format!(
                        "cannot read {}: {e}; fix the path or the file's permissions",
                        full.display()
                    ),
                }),
            }
        }
        finish(path, config, problems)
    }
}

/// The config, or every problem found in it.
fn finish(path: &Path, config: Config, problems: Vec<Problem>) -> Result<Config, ConfigError> {
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            file: path.to_owned(),
            problems,
        })
    }
}

impl MysqlCheck {
    /// Reads the files this check names, relative to `base`; `key` is the
    /// check's key path for error messages.
    fn load_files(&mut self, key: &str, base: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut read = |field: &str, path: &Path| {
            let full = base.join(path);
            std::fs::read(&full)
                .map_err(|e| {
                    problems.push(Problem {
                        key: format!("{key}.{field}"),
                        message: format!(
                            "cannot read {}: {e}; fix the path or the file's permissions",
                            full.display()
                        ),
                    });
                })
                .ok()
        };
        if let Some(path) = self.password_file.clone() {
            if let Some(bytes) = read("password_file", &path) {
                let text = String::from_utf8_lossy(&bytes);
                self.password = Secret::new(text.trim_end_matches(['\n', '\r']));
            }
        }
        if let Some(path) = self.ca_file.clone() {
            self.ca_pem = read("ca_file", &path);
        }
        if let Some(path) = self.server_public_key_file.clone() {
            self.server_public_key = read("server_public_key_file", &path);
        }
        problems
    }
}

/// Reads the password files of every pool's `[replication]` table.
fn replication_files(config: &mut Config, base: &Path) -> Vec<Problem> {
    config
        .pools
        .values_mut()
        .filter_map(|p| {
            Some((
                format!("pool.{}.replication", p.name),
                p.replication.as_mut()?,
            ))
        })
        .flat_map(|(key, r)| r.load_files(&key, base))
        .collect()
}

impl super::replication::ReplicationConfig {
    /// Reads the password files, relative to `base`; `key` is the table's
    /// key path for error messages.
    fn load_files(&mut self, key: &str, base: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (field, path, secret) in [
            (
                "password_file",
                self.password_file.clone(),
                &mut self.password,
            ),
            (
                "replication_password_file",
                self.replication_password_file.clone(),
                &mut self.replication_password,
            ),
        ] {
            let Some(path) = path else { continue };
            let full = base.join(&path);
            match std::fs::read(&full) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    *secret = Secret::new(text.trim_end_matches(['\n', '\r']));
                }
                Err(e) => problems.push(Problem {
                    key: format!("{key}.{field}"),
                    message: format!(
                        "cannot read {}: {e}; fix the path or the file's permissions",
                        full.display()
                    ),
                }),
            }
        }
        problems
    }
}

/// Looks up every pool's sources (`resolve = "all"` names, SRV records)
/// and puts the members they give in place; a source that fails is a
/// problem of the file.
fn expand_sources(config: &mut Config, lookup: &super::resolve::Lookup) -> Vec<Problem> {
    let mut problems = Vec::new();
    for pool in config.pools.values_mut() {
        for source in pool.sources.clone() {
            match lookup.members_blocking(&source) {
                Ok(members) => {
                    super::expand::replace(pool, &source.key, members);
                }
                Err(why) => problems.push(Problem {
                    key: source.config_key.clone(),
                    message: format!(
                        "{why}; fix the name or its DNS records (resolver: {})",
                        lookup
                            .server
                            .map_or("the system's".to_owned(), |s| s.to_string())
                    ),
                }),
            }
        }
    }
    problems
}

/// How the file `text` has names resolved: with `resolver = "IP:PORT"`, by
/// asking that server (the key itself is checked with the rest of the file).
fn lookup_of(text: &str) -> super::resolve::Lookup {
    let server = text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("resolver")?.as_str()?.parse().ok());
    super::resolve::Lookup { server }
}

/// Resolves through `lookup` (the first address, IPv4 first); literal IPs
/// never touch DNS.
pub fn resolve_with(
    lookup: &super::resolve::Lookup,
    address: &Address,
) -> Result<SocketAddr, String> {
    let found = lookup.addresses_blocking(&address.host, address.port);
    match (found, lookup.server) {
        (Ok(addrs), _) => addrs
            .first()
            .copied()
            .ok_or_else(|| format!("host \"{}\" resolved to no address", address.host)),
        (Err(e), None) => Err(format!(
            "host \"{}\" cannot be resolved ({e}); write an IP address or a name this host can resolve",
            address.host
        )),
        (Err(e), Some(server)) => Err(format!(
            "host \"{}\" cannot be resolved by the resolver {server} ({e}); write an IP address, a name it answers for, or remove the resolver key",
            address.host
        )),
    }
}

/// Resolves through the system resolver; literal IPs never touch DNS.
pub fn resolve_system(address: &Address) -> Result<SocketAddr, String> {
    if let Ok(ip) = address.host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, address.port));
    }
    match (address.host.as_str(), address.port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("host \"{}\" resolved to no address", address.host)),
        Err(e) => Err(format!(
            "host \"{}\" cannot be resolved ({e}); write an IP address or a name this host can resolve",
            address.host
        )),
    }
}
