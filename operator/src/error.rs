//! One error type for the operator, with enough context to act on from a log line or a
//! status condition.

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be turned into objects; fixing the spec is the only remedy.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// A referenced object (BinaryCache, Secret) is absent or not usable yet.
    #[error("{0}")]
    Dependency(String),

    /// An API call failed.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    /// Key generation or token minting failed.
    #[error("{context}: {source}")]
    Token {
        context: String,
        #[source]
        source: garret_core::token::Error,
    },

    /// The finalizer helper failed (boxed: it wraps this type).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    #[error("serialize: {0}")]
    Serialize(String),

    #[error("leader election: {0}")]
    Leader(String),
}

impl Error {
    /// Wrap a kube error with what was being done.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            action: action.into(),
            source,
        }
    }

    /// Condition reason for this failure (PascalCase, as Kubernetes expects).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Dependency(_) => "DependencyNotReady",
            Error::Kube { .. } => "ApiError",
            Error::Token { .. } => "TokenError",
            Error::Finalizer(_) => "FinalizerError",
            Error::Serialize(_) => "InternalError",
            Error::Leader(_) => "LeaderElection",
        }
    }
}

/// Why a spec cannot be turned into objects, for the user (the `validate` steps return it;
/// fixing the spec is the only remedy).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

impl From<InvalidSpec> for Error {
    fn from(e: InvalidSpec) -> Self {
        Error::InvalidSpec(e.0)
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
