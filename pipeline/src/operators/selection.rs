//! Which operators run: `[dataflow] operators = [...]` in the config,
//! `--operators a,b` on `replay` (default: all six). An operator that reads
//! another's outputs pulls it in: `team` reads what `conflicts` derives, and
//! `alerts` read the flow state `sessions` derive. Running fewer operators
//! changes nothing in what the chosen ones derive (each reads the input and
//! its dependencies only), it only leaves out the others' work and outputs.

use serde::Deserialize;

/// One operator, by its config section name (`[wpm]`, `[sessions]`, ...);
/// the file/core names (`live_wpm`, `conflict_windows`, `team_metrics`,
/// `alert_windows`) are accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorName {
    #[serde(alias = "live_wpm")]
    Wpm,
    Sessions,
    Presence,
    #[serde(alias = "conflict_windows")]
    Conflicts,
    #[serde(alias = "team_metrics")]
    Team,
    #[serde(alias = "alert_windows")]
    Alerts,
}

impl OperatorName {
    /// Every operator, in the order the dataflow wires them.
    pub const ALL: [OperatorName; 6] = [
        OperatorName::Wpm,
        OperatorName::Sessions,
        OperatorName::Presence,
        OperatorName::Conflicts,
        OperatorName::Team,
        OperatorName::Alerts,
    ];

    /// The name in the config and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorName::Wpm => "wpm",
            OperatorName::Sessions => "sessions",
            OperatorName::Presence => "presence",
            OperatorName::Conflicts => "conflicts",
            OperatorName::Team => "team",
            OperatorName::Alerts => "alerts",
        }
    }

    /// The operator whose outputs this one reads, if any.
    pub fn needs(self) -> Option<OperatorName> {
        match self {
            OperatorName::Team => Some(OperatorName::Conflicts),
            OperatorName::Alerts => Some(OperatorName::Sessions),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::fmt::Display for OperatorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operators that run, dependencies included (default: all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperatorSet {
    bits: u8,
    /// Operators pulled in only as dependencies (for the log).
    implied: u8,
}

impl Default for OperatorSet {
    fn default() -> Self {
        OperatorSet::all()
    }
}

impl OperatorSet {
    pub fn all() -> OperatorSet {
        OperatorSet::of(OperatorName::ALL)
    }

    /// `names` and what they need (transitively).
    pub fn of(names: impl IntoIterator<Item = OperatorName>) -> OperatorSet {
        let mut chosen = 0u8;
        for n in names {
            chosen |= n.bit();
        }
        let mut bits = chosen;
        loop {
            let before = bits;
            for n in OperatorName::ALL {
                if bits & n.bit() != 0
                    && let Some(d) = n.needs()
                {
                    bits |= d.bit();
                }
            }
            if bits == before {
                break;
            }
        }
        OperatorSet {
            bits,
            implied: bits & !chosen,
        }
    }

    pub fn contains(&self, op: OperatorName) -> bool {
        self.bits & op.bit() != 0
    }

    pub fn is_all(&self) -> bool {
        self.bits == OperatorSet::all().bits
    }

    /// The operators that run, in wiring order.
    pub fn iter(&self) -> impl Iterator<Item = OperatorName> + '_ {
        OperatorName::ALL.into_iter().filter(|n| self.contains(*n))
    }

    /// What runs, for logs: `sessions, alerts (sessions needed by alerts)`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.iter().map(OperatorName::as_str).collect();
        let mut s = names.join(", ");
        let implied: Vec<String> = self
            .iter()
            .filter(|n| self.implied & n.bit() != 0)
            .map(|d| {
                let by: Vec<&str> = self
                    .iter()
                    .filter(|n| n.needs() == Some(d))
                    .map(OperatorName::as_str)
                    .collect();
                format!("{d} needed by {}", by.join(", "))
            })
            .collect();
        if !implied.is_empty() {
            s.push_str(&format!(" ({})", implied.join("; ")));
        }
        s
    }
}

impl<'de> Deserialize<'de> for OperatorSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<OperatorName>::deserialize(d)?;
        if names.is_empty() {
            return Err(serde::de::Error::custom(
                "choose at least one operator (wpm, sessions, presence, conflicts, team, alerts)",
            ));
        }
        Ok(OperatorSet::of(names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_pulled_in_and_named() {
        let s = OperatorSet::of([OperatorName::Alerts]);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [OperatorName::Sessions, OperatorName::Alerts]
        );
        assert_eq!(s.describe(), "sessions, alerts (sessions needed by alerts)");
        let s = OperatorSet::of([OperatorName::Team, OperatorName::Wpm]);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [
                OperatorName::Wpm,
                OperatorName::Conflicts,
                OperatorName::Team
            ]
        );
        let s = OperatorSet::of([OperatorName::Sessions]);
        assert_eq!(s.describe(), "sessions");
        assert!(!s.contains(OperatorName::Alerts));
        assert!(OperatorSet::default().is_all());
    }

    #[test]
    fn names_parse_from_the_config_with_aliases_and_unknown_ones_fail() {
        #[derive(Deserialize)]
        struct T {
            operators: OperatorSet,
        }
        let t: T = toml::from_str(r#"operators = ["live_wpm", "alert_windows"]"#).unwrap();
        assert_eq!(
            t.operators,
            OperatorSet::of([OperatorName::Wpm, OperatorName::Alerts])
        );
        let e = toml::from_str::<T>(r#"operators = ["sessions", "wmp"]"#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown variant `wmp`"), "{e}");
        assert!(e.contains("`sessions`"), "{e}");
        let e = toml::from_str::<T>("operators = []")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("at least one operator"), "{e}");
    }
}
