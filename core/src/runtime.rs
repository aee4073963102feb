//! The runtime catalogue: which `spec.runtime` names exist, which language each one runs, which
//! container image serves it on Kubernetes, and which interpreter serves it on one machine.
//!
//! The catalogue is deliberately a static table: adding a runtime is a code change reviewed with
//! its bootstrap and image, never a configuration surprise.

use std::fmt;

/// A language family. Each has one bootstrap (the small program that loads a handler and loops
/// over invocations), shared by every version of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Language {
    Python,
    Nodejs,
    Go,
}

impl Language {
    /// The catalogue name of the language's default runtime, as the earlier design spelled it.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Nodejs => "nodejs",
            Language::Go => "go",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runtime {
    /// The name users write in `spec.runtime`.
    pub name: &'static str,
    pub language: Language,
    /// Language version the runtime image ships.
    pub version: &'static str,
    /// Image repository and tag of the runtime container, relative to the configured image
    /// registry prefix.
    pub image: &'static str,
    /// Program that runs the bootstrap on one machine (standalone mode, local backend). Locally
    /// the host's interpreter is used whatever the version qualifier says.
    pub local_program: &'static str,
}

/// Every runtime kubefaas offers. The unqualified names (`python`, `nodejs`, `go`) are the earlier
/// design's and point at the current default version of each language.
pub const CATALOGUE: &[Runtime] = &[
    Runtime {
        name: "python",
        language: Language::Python,
        version: "3.13",
        image: "kubefaas/runtime-python:3.13",
        local_program: "python3",
    },
    Runtime {
        name: "python3.11",
        language: Language::Python,
        version: "3.11",
        image: "kubefaas/runtime-python:3.11",
        local_program: "python3",
    },
    Runtime {
        name: "python3.13",
        language: Language::Python,
        version: "3.13",
        image: "kubefaas/runtime-python:3.13",
        local_program: "python3",
    },
    Runtime {
        name: "nodejs",
        language: Language::Nodejs,
        version: "20",
        image: "kubefaas/runtime-nodejs:20",
        local_program: "node",
    },
    Runtime {
        name: "nodejs20",
        language: Language::Nodejs,
        version: "20",
        image: "kubefaas/runtime-nodejs:20",
        local_program: "node",
    },
    Runtime {
        name: "nodejs22",
        language: Language::Nodejs,
        version: "22",
        image: "kubefaas/runtime-nodejs:22",
        local_program: "node",
    },
    Runtime {
        name: "go",
        language: Language::Go,
        version: "1.22",
        image: "kubefaas/runtime-go:1.22",
        local_program: "go",
    },
    Runtime {
        name: "go1.22",
        language: Language::Go,
        version: "1.22",
        image: "kubefaas/runtime-go:1.22",
        local_program: "go",
    },
];

/// Looks a runtime up by the name used in `spec.runtime`.
pub fn lookup(name: &str) -> Option<&'static Runtime> {
    CATALOGUE.iter().find(|r| r.name == name)
}

/// Every runtime name, in catalogue order (for schemas and error messages).
pub fn names() -> impl Iterator<Item = &'static str> {
    CATALOGUE.iter().map(|r| r.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unqualified_names_of_the_earlier_design_are_in_the_catalogue() {
        for (name, language) in
            [("python", Language::Python), ("nodejs", Language::Nodejs), ("go", Language::Go)]
        {
            assert_eq!(lookup(name).map(|r| r.language), Some(language), "{name}");
        }
    }

    #[test]
    fn unknown_runtime_is_not_found() {
        assert!(lookup("ruby").is_none());
        assert!(lookup("Python").is_none(), "names are case-sensitive");
    }

    #[test]
    fn names_are_unique() {
        let mut seen: Vec<&str> = names().collect();
        seen.sort_unstable();
        let before = seen.len();
        seen.dedup();
        assert_eq!(before, seen.len());
    }
}
