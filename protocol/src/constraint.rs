//! Placement constraints in Docker's grammar (`node.labels.sensor==1`,
//! `node.platform.arch!=armv7l`), parsed once here for the CLI, the server
//! and the agent.
//!
//! Follows swarmkit's parser: the first `==` or `!=` splits key from value;
//! keys are letters, digits, `-`, `_` and `.`, starting with a letter or `_`;
//! values may not contain operator characters (`<`, `>`, `~`, `=`, `!`).
//! Stricter than swarmkit on keys: an unknown key is an error here, where
//! swarmkit would accept it and then never match.

use std::fmt;

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintKey {
    NodeId,
    NodeHostname,
    /// `manager` or `worker`.
    NodeRole,
    /// What `uname -s` says, lower case: `linux`.
    PlatformOs,
    /// What `uname -m` says: `x86_64`, `aarch64`, `armv7l`.
    PlatformArch,
    NodeLabel(String),
    EngineLabel(String),
}

impl fmt::Display for ConstraintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintKey::NodeId => f.write_str("node.id"),
            ConstraintKey::NodeHostname => f.write_str("node.hostname"),
            ConstraintKey::NodeRole => f.write_str("node.role"),
            ConstraintKey::PlatformOs => f.write_str("node.platform.os"),
            ConstraintKey::PlatformArch => f.write_str("node.platform.arch"),
            ConstraintKey::NodeLabel(k) => write!(f, "node.labels.{k}"),
            ConstraintKey::EngineLabel(k) => write!(f, "engine.labels.{k}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equal,
    NotEqual,
}

/// One parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub key: ConstraintKey,
    pub operator: Operator,
    pub value: String,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.operator {
            Operator::Equal => "==",
            Operator::NotEqual => "!=",
        };
        write!(f, "{}{op}{}", self.key, self.value)
    }
}

/// A refused expression: where (1-based column) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("constraint {expression:?}, column {column}: expected {expected}")]
pub struct ConstraintError {
    pub expression: String,
    pub column: usize,
    pub expected: String,
}

const KEYS: &str = "node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.KEY or engine.labels.KEY";

impl Constraint {
    /// Parses one expression.
    pub fn parse(expression: &str) -> Result<Constraint, ConstraintError> {
        let err = |column: usize, expected: &str| ConstraintError {
            expression: expression.to_string(),
            column,
            expected: expected.to_string(),
        };
        // The first operator in the expression, as swarmkit finds it.
        let (at, operator) = match (expression.find("=="), expression.find("!=")) {
            (Some(e), Some(n)) if n < e => (n, Operator::NotEqual),
            (Some(e), _) => (e, Operator::Equal),
            (None, Some(n)) => (n, Operator::NotEqual),
            (None, None) => {
                let column = expression
                    .char_indices()
                    .find(|(_, c)| matches!(c, '=' | '!' | '<' | '>' | '~'))
                    .map(|(i, _)| i + 1)
                    .unwrap_or(expression.chars().count() + 1);
                return Err(err(column, "an operator, == or !="));
            }
        };
        let raw_key = &expression[..at];
        let key = raw_key.trim();
        let key_start = raw_key.len() - raw_key.trim_start().len();
        if key.is_empty() {
            return Err(err(1, &format!("a key: {KEYS}")));
        }
        if let Some((i, _)) = key.char_indices().find(|(i, c)| {
            !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                || (*i == 0 && !(c.is_ascii_alphabetic() || *c == '_'))
        }) {
            return Err(err(
                key_start + i + 1,
                "a key of letters, digits, '-', '_' and '.', starting with a letter",
            ));
        }
        let key = match key {
            "node.id" => ConstraintKey::NodeId,
            "node.hostname" => ConstraintKey::NodeHostname,
            "node.role" => ConstraintKey::NodeRole,
            "node.platform.os" => ConstraintKey::PlatformOs,
            "node.platform.arch" => ConstraintKey::PlatformArch,
            k => match (
                k.strip_prefix("node.labels."),
                k.strip_prefix("engine.labels."),
            ) {
                (Some(label), _) if !label.is_empty() => {
                    ConstraintKey::NodeLabel(label.to_string())
                }
                (_, Some(label)) if !label.is_empty() => {
                    ConstraintKey::EngineLabel(label.to_string())
                }
                _ => return Err(err(key_start + 1, &format!("a known key: {KEYS}"))),
            },
        };
        let value_offset = at + 2;
        let raw_value = &expression[value_offset..];
        let value = raw_value.trim();
        let value_start = value_offset + (raw_value.len() - raw_value.trim_start().len());
        if value.is_empty() {
            return Err(err(value_offset + 1, "a value after the operator"));
        }
        if let Some((i, _)) = value.char_indices().find(|(_, c)| {
            !(c.is_ascii_alphanumeric() || c.is_whitespace() || ":-_.*()?+[]\\^$|/".contains(*c))
        }) {
            return Err(err(
                value_start + i + 1,
                "a value of letters, digits, spaces and :-_.*()?+[]\\^$|/ (no second operator)",
            ));
        }
        if key == ConstraintKey::NodeRole
            && !matches!(value.to_ascii_lowercase().as_str(), "manager" | "worker")
        {
            return Err(err(value_start + 1, "manager or worker"));
        }
        Ok(Constraint {
            key,
            operator,
            value: value.to_string(),
        })
    }

    /// Whether a node's value for the key satisfies the constraint; `None`
    /// for a label the node lacks. Comparison ignores case, as swarmkit's.
    pub fn matches(&self, actual: Option<&str>) -> bool {
        let equal = actual.is_some_and(|a| a.eq_ignore_ascii_case(&self.value));
        match self.operator {
            Operator::Equal => equal,
            Operator::NotEqual => !equal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dockers_forms() {
        let c = Constraint::parse("node.labels.temperature_sensor==1").expect("ok");
        assert_eq!(c.key, ConstraintKey::NodeLabel("temperature_sensor".into()));
        assert_eq!(c.operator, Operator::Equal);
        assert_eq!(c.value, "1");
        let c = Constraint::parse("  node.platform.arch != armv7l ").expect("ok");
        assert_eq!(
            (c.key.clone(), c.operator, c.value.as_str()),
            (ConstraintKey::PlatformArch, Operator::NotEqual, "armv7l")
        );
        assert_eq!(c.to_string(), "node.platform.arch!=armv7l");
        assert_eq!(
            Constraint::parse("node.role==Manager").expect("ok").key,
            ConstraintKey::NodeRole
        );
        assert_eq!(
            Constraint::parse("engine.labels.zone==a").expect("ok").key,
            ConstraintKey::EngineLabel("zone".into())
        );
        assert!(Constraint::parse("node.hostname==dev1").is_ok());
        assert!(Constraint::parse("node.id==abc123").is_ok());
        assert!(Constraint::parse("node.platform.os==linux").is_ok());
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = Constraint::parse("node.labels.sensor=1").expect_err("single =");
        assert_eq!(
            (e.column, e.expected.as_str()),
            (19, "an operator, == or !=")
        );
        let e = Constraint::parse("node.labels.sensor").expect_err("no operator");
        assert_eq!(e.column, 19);
        let e = Constraint::parse("node.label.sensor==1").expect_err("unknown key");
        assert!(e.expected.starts_with("a known key"), "{e}");
        assert_eq!(e.column, 1);
        let e = Constraint::parse("node.labels.se#nsor==1").expect_err("bad char");
        assert_eq!(e.column, 15);
        let e = Constraint::parse("node.labels.sensor==").expect_err("no value");
        assert_eq!(e.expected, "a value after the operator");
        let e = Constraint::parse("node.labels.a==b==c").expect_err("second operator");
        assert_eq!(e.column, 17);
        let e = Constraint::parse("node.role==boss").expect_err("role");
        assert_eq!((e.column, e.expected.as_str()), (12, "manager or worker"));
        let e = Constraint::parse("==x").expect_err("no key");
        assert_eq!(e.column, 1);
        let e = Constraint::parse("1node.labels.x==1").expect_err("starts with digit");
        assert_eq!(e.column, 1);
        assert!(e.to_string().contains("column 1"), "{e}");
    }

    #[test]
    fn matching_ignores_case_and_handles_missing_labels() {
        let eq = Constraint::parse("node.labels.zone==Hall-A").expect("ok");
        assert!(eq.matches(Some("hall-a")));
        assert!(!eq.matches(Some("hall-b")));
        assert!(!eq.matches(None));
        let ne = Constraint::parse("node.labels.zone!=hall-a").expect("ok");
        assert!(ne.matches(None));
        assert!(!ne.matches(Some("HALL-A")));
    }
}
