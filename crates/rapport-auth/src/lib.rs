//! Who may call Rapport: bearer tokens, each with scopes and communities.
//!
//! The tokens file (`--tokens-file`, usually a Kubernetes secret mount) holds
//! the SHA-256 of each token, never the token itself, so a leaked file or
//! secret grants nothing. A token is high-entropy (`openssl rand -hex 32`), so
//! one unsalted SHA-256 is enough: there is no dictionary to try.
//!
//! ```toml
//! [[tokens]]
//! name = "discord-bridge"     # shows in logs, never the token
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! scopes = ["ingest"]         # ingest | read | admin
//! communities = ["acme"]      # or ["*"] for every community
//! ```
//!
//! Pure: parsing and decisions only; reading and watching the file is the
//! server's job.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token may do. Scopes do not imply one another: a token that must
/// both write and read lists both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Record interactions.
    Ingest,
    /// Read the log, timelines, scores.
    Read,
    /// Change policies and roles, rebuild projections.
    Admin,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        })
    }
}

/// The communities a token may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Communities {
    All,
    Only(BTreeSet<String>),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name from the tokens file, for logs.
    pub name: String,
    scopes: BTreeSet<Scope>,
    communities: Communities,
}

/// Why an authenticated caller may not do something: PERMISSION_DENIED.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("token {token:?} lacks the {scope} scope")]
    Scope { token: String, scope: Scope },
    #[error("token {token:?} may not access community {community:?}")]
    Community { token: String, community: String },
    #[error("token {token:?} may not access every community (this call spans all of them)")]
    AllCommunities { token: String },
}

impl Principal {
    pub fn new(name: impl Into<String>, scopes: &[Scope], communities: Communities) -> Self {
        Principal {
            name: name.into(),
            scopes: scopes.iter().copied().collect(),
            communities,
        }
    }

    pub fn require_scope(&self, scope: Scope) -> Result<(), Denied> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(Denied::Scope {
                token: self.name.clone(),
                scope,
            })
        }
    }

    pub fn require_community(&self, community: &str) -> Result<(), Denied> {
        match &self.communities {
            Communities::All => Ok(()),
            Communities::Only(set) if set.contains(community) => Ok(()),
            Communities::Only(_) => Err(Denied::Community {
                token: self.name.clone(),
                community: community.to_owned(),
            }),
        }
    }

    /// For calls that span every community (the whole log, projections).
    pub fn require_all_communities(&self) -> Result<(), Denied> {
        match self.communities {
            Communities::All => Ok(()),
            Communities::Only(_) => Err(Denied::AllCommunities {
                token: self.name.clone(),
            }),
        }
    }
}

/// The lowercase hex SHA-256 of a token, as the tokens file holds it.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The tokens of one version of the tokens file.
#[derive(Debug, Default)]
pub struct TokenSet {
    by_hash: HashMap<[u8; 32], Arc<Principal>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("tokens file is not valid TOML: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("tokens[{index}] ({name:?}): {problem}")]
    Entry {
        index: usize,
        name: String,
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    sha256: String,
    scopes: Vec<Scope>,
    communities: Vec<String>,
}

impl TokenSet {
    /// Parses a tokens file. Every entry must be usable: a typo must not
    /// quietly leave a caller locked out or let it in too far.
    pub fn parse(text: &str) -> Result<TokenSet, TokensFileError> {
        let file: File = toml::from_str(text)?;
        let mut by_hash = HashMap::new();
        let mut names = BTreeSet::new();
        for (index, entry) in file.tokens.into_iter().enumerate() {
            let problem = |problem: &str| TokensFileError::Entry {
                index,
                name: entry.name.clone(),
                problem: problem.to_owned(),
            };
            if entry.name.trim().is_empty() {
                return Err(problem("name is required"));
            }
            if !names.insert(entry.name.clone()) {
                return Err(problem("name is used by another token"));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(entry.sha256.trim(), &mut hash)
                .map_err(|_| problem("sha256 must be 64 hex digits"))?;
            if entry.scopes.is_empty() {
                return Err(problem(
                    "scopes must name at least one of ingest, read, admin",
                ));
            }
            let communities = if entry.communities.iter().any(|c| c == "*") {
                if entry.communities.len() > 1 {
                    return Err(problem(
                        "\"*\" already means every community; list it alone",
                    ));
                }
                Communities::All
            } else if entry.communities.is_empty() {
                return Err(problem(
                    "communities must list at least one community, or \"*\"",
                ));
            } else {
                Communities::Only(entry.communities.into_iter().collect())
            };
            let principal = Principal::new(entry.name.clone(), &entry.scopes, communities);
            if by_hash.insert(hash, Arc::new(principal)).is_some() {
                return Err(problem("sha256 is the same as another token's"));
            }
        }
        Ok(TokenSet { by_hash })
    }

    /// The caller a bearer token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Principal>> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The token of an `authorization` header value: `Bearer <token>`, the
/// scheme case-insensitive (RFC 6750 via RFC 9110).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &str) -> Result<TokenSet, TokensFileError> {
        TokenSet::parse(entries)
    }

    fn entry(name: &str, token: &str, scopes: &str, communities: &str) -> String {
        format!(
            "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = {scopes}\ncommunities = {communities}\n",
            hash_token(token)
        )
    }

    #[test]
    fn a_token_authenticates_by_its_hash_only() {
        let set = file(&entry("bridge", "s3cret", r#"["ingest"]"#, r#"["acme"]"#)).unwrap();
        let principal = set.authenticate("s3cret").expect("known token");
        assert_eq!(principal.name, "bridge");
        assert!(set.authenticate("s3cret ").is_none());
        assert!(
            set.authenticate(&hash_token("s3cret")).is_none(),
            "the hash is not a token"
        );
    }

    #[test]
    fn scopes_and_communities_are_checked_separately() {
        let set = file(&entry(
            "bridge",
            "t",
            r#"["ingest", "read"]"#,
            r#"["acme", "globex"]"#,
        ))
        .unwrap();
        let p = set.authenticate("t").unwrap();
        assert_eq!(p.require_scope(Scope::Ingest), Ok(()));
        assert_eq!(p.require_scope(Scope::Read), Ok(()));
        assert!(matches!(
            p.require_scope(Scope::Admin),
            Err(Denied::Scope { .. })
        ));
        assert_eq!(p.require_community("globex"), Ok(()));
        assert!(matches!(
            p.require_community("initech"),
            Err(Denied::Community { .. })
        ));
        assert!(matches!(
            p.require_all_communities(),
            Err(Denied::AllCommunities { .. })
        ));
    }

    #[test]
    fn a_star_grants_every_community() {
        let set = file(&entry("ops", "t", r#"["admin"]"#, r#"["*"]"#)).unwrap();
        let p = set.authenticate("t").unwrap();
        assert_eq!(p.require_community("anything"), Ok(()));
        assert_eq!(p.require_all_communities(), Ok(()));
    }

    #[test]
    fn mistakes_in_the_file_are_errors_naming_the_entry() {
        let cases = [
            (entry("a", "t", r#"["write"]"#, r#"["acme"]"#), "unknown variant"),
            (entry("a", "t", "[]", r#"["acme"]"#), "scopes must name"),
            (entry("a", "t", r#"["read"]"#, "[]"), "communities must list"),
            (entry("a", "t", r#"["read"]"#, r#"["*", "acme"]"#), "list it alone"),
            (entry("", "t", r#"["read"]"#, r#"["acme"]"#), "name is required"),
            (
                entry("a", "t", r#"["read"]"#, r#"["acme"]"#) + &entry("a", "u", r#"["read"]"#, r#"["acme"]"#),
                "name is used",
            ),
            (
                entry("a", "t", r#"["read"]"#, r#"["acme"]"#) + &entry("b", "t", r#"["read"]"#, r#"["acme"]"#),
                "same as another",
            ),
            (
                "[[tokens]]\nname = \"a\"\nsha256 = \"xyz\"\nscopes = [\"read\"]\ncommunities = [\"*\"]\n".to_owned(),
                "64 hex digits",
            ),
            (
                entry("a", "t", r#"["read"]"#, r#"["acme"]"#) + "token = \"plain\"\n",
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let error = file(&text).expect_err(&text).to_string();
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn an_empty_file_has_no_tokens() {
        assert!(file("").unwrap().is_empty());
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
