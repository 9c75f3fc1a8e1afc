//! What a verified token grants, whichever protocol revision it belongs to.
//!
//! A draft-07 token's `mercure` claim lists topic selectors; a draft-08
//! access token carries authorization details. The rest of the hub does not
//! care which: it asks a [`Grants`] whether a topic may be published to or
//! received, and hands [`Allowed`] to each subscriber for its private
//! updates. Selectors are compiled once, when the token is verified, and
//! shared by every clone.

use std::sync::Arc;

use herald_protocol::authz::{Action, Authorization};
use herald_protocol::Selector;

use super::jwt::Claims;
use super::oauth::AccessToken;

/// What a verified token grants, whichever revision it belongs to. Cheap to
/// clone: the compiled selectors and authorization details are shared.
#[derive(Debug, Clone)]
pub enum Grants {
    /// A draft-07 token's `mercure` claim, its selectors compiled once.
    Claim(Arc<ClaimGrants>),
    /// A draft-08 access token.
    Access(AccessToken),
}

/// A draft-07 token's claims with `mercure.publish` and `mercure.subscribe`
/// compiled (invalid selectors in a token match nothing).
#[derive(Debug)]
pub struct ClaimGrants {
    pub claims: Claims,
    publish: Option<Vec<Selector>>,
    subscribe: Option<Arc<[Selector]>>,
}

impl ClaimGrants {
    pub(crate) fn new(claims: Claims) -> Self {
        let publish = claims.mercure.publish.as_deref().map(compile_selectors);
        let subscribe = claims
            .mercure
            .subscribe
            .as_deref()
            .map(|s| compile_selectors(s).into());
        Self {
            claims,
            publish,
            subscribe,
        }
    }
}

impl Grants {
    /// `exp`, seconds since the epoch; a stream closes then.
    pub fn exp(&self) -> Option<u64> {
        match self {
            Self::Claim(c) => c.claims.exp,
            Self::Access(a) => Some(a.exp),
        }
    }

    /// `nbf`, seconds since the epoch, when the token has one.
    fn nbf(&self) -> Option<u64> {
        match self {
            Self::Claim(c) => c.claims.nbf,
            Self::Access(_) => None,
        }
    }

    /// True for a draft-08 access token.
    pub fn is_access_token(&self) -> bool {
        matches!(self, Self::Access(_))
    }

    /// What the holder may receive of private updates.
    pub fn subscribe_rule(&self) -> Option<Allowed> {
        match self {
            Self::Claim(c) => c.subscribe.clone().map(Allowed::Selectors),
            Self::Access(a) => Some(Allowed::Access(a.authorization.clone())),
        }
    }

    /// True when the token may publish to `topic`.
    pub fn can_publish(&self, topic: &str) -> bool {
        match self {
            Self::Claim(c) => c
                .publish
                .as_deref()
                .is_some_and(|p| p.iter().any(|s| s.matches(topic))),
            Self::Access(a) => a.authorization.allows(Action::Publish, topic),
        }
    }

    /// True when the token may subscribe to `topic` (used for the
    /// subscriptions API, whose paths are authorized like topics).
    pub fn can_subscribe(&self, topic: &str) -> bool {
        self.subscribe_rule()
            .is_some_and(|a| a.allows(std::slice::from_ref(&topic.to_owned())))
    }

    /// True when the token carries some publish right at all.
    pub fn may_publish_somewhere(&self) -> bool {
        match self {
            Self::Claim(c) => c.publish.is_some(),
            Self::Access(a) => a
                .authorization
                .details()
                .iter()
                .any(|d| d.allows(Action::Publish)),
        }
    }

    /// True while the token is within its validity period at `now`
    /// (seconds since the epoch): for reusing an earlier verification.
    pub fn valid_at(&self, now: u64) -> bool {
        self.exp().is_none_or(|exp| now < exp) && self.nbf().is_none_or(|nbf| nbf <= now)
    }
}

/// The private updates a subscriber may receive.
#[derive(Debug, Clone)]
pub enum Allowed {
    /// Draft-07: one of the update's topics matches a selector of
    /// `mercure.subscribe`.
    Selectors(Arc<[Selector]>),
    /// Draft-08: the token grants `subscribe` on one of the update's topics.
    Access(Arc<Authorization>),
}

impl Allowed {
    /// True when an update with these topics may be delivered.
    pub fn allows(&self, topics: &[String]) -> bool {
        match self {
            Self::Selectors(s) => herald_protocol::selector::any_matches(s.iter(), topics),
            Self::Access(a) => topics.iter().any(|t| a.allows(Action::Subscribe, t)),
        }
    }
}

/// Compiled selectors from a claim; invalid selectors in a token match nothing.
fn compile_selectors(list: &[String]) -> Vec<Selector> {
    list.iter()
        .filter_map(|s| Selector::parse(s).ok())
        .collect()
}
