//! The update a publisher sends.

/// An update as accepted from a publisher, before the engine stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// The SSE `id`; the hub generates one when the publisher gave none.
    pub id: String,
    /// One or more topics; the first is the canonical one.
    pub topics: Vec<String>,
    pub data: String,
    /// The SSE `event` type.
    pub event_type: Option<String>,
    /// The SSE `retry` in milliseconds.
    pub retry: Option<u64>,
    /// Private updates reach only subscribers authorized for one of the topics.
    pub private: bool,
}

/// Why an update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("missing topic")]
    MissingTopic,
    #[error("empty topic")]
    EmptyTopic,
    #[error("topic contains a control character")]
    TopicControlCharacter,
    #[error("id must not contain CR, LF or NUL")]
    InvalidId,
    #[error("id \"earliest\" is reserved")]
    ReservedId,
    #[error("type must not contain CR, LF or NUL")]
    InvalidType,
    #[error("retry must be a non-negative integer")]
    InvalidRetry,
    #[error("too many topics (at most {0})")]
    TooManyTopics(usize),
}

/// The `Last-Event-ID` value that asks for all retained history.
pub const EARLIEST: &str = "earliest";

impl Update {
    /// Checks the fields against the event-stream rules; `id` may still be
    /// empty here (the hub generates one).
    pub fn validate(&self, max_topics: usize) -> Result<(), UpdateError> {
        if self.topics.is_empty() {
            return Err(UpdateError::MissingTopic);
        }
        if self.topics.len() > max_topics {
            return Err(UpdateError::TooManyTopics(max_topics));
        }
        for t in &self.topics {
            if t.is_empty() {
                return Err(UpdateError::EmptyTopic);
            }
            if t.chars().any(char::is_control) {
                return Err(UpdateError::TopicControlCharacter);
            }
        }
        if !crate::sse::is_valid_field_value(&self.id) {
            return Err(UpdateError::InvalidId);
        }
        if self.id == EARLIEST {
            return Err(UpdateError::ReservedId);
        }
        if let Some(t) = &self.event_type {
            if !crate::sse::is_valid_field_value(t) {
                return Err(UpdateError::InvalidType);
            }
        }
        Ok(())
    }

    /// Parses a `retry` field: ASCII digits only, as the SSE parser accepts.
    pub fn parse_retry(s: &str) -> Result<u64, UpdateError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UpdateError::InvalidRetry);
        }
        s.parse().map_err(|_| UpdateError::InvalidRetry)
    }
}
