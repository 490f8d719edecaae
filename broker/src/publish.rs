//! The one publishing path. Every event that enters a broker — a producer's (the ingress), a
//! subscriber's reply, or Ferry's own (resource changes, sources, controllers) — goes through
//! [`Publisher`]: validated, checked against the size limit, stamped with its arrival time,
//! then appended, all of a call's events or none.

use crate::event::{AttrValue, Event};
use crate::log::{EventLog, LogError, Position, Topic};
use cloudevent::ext::{ARRIVAL_TIME, BROKER_TTL, DEFAULT_MAX_EVENT_SIZE, MAX_TTL};
use cloudevent::validate::ttl_of;
use cloudevent::InvalidEvent;
use std::sync::{Arc, Mutex};

/// Why events were not published. Nothing of the call was stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Event `index` of the call is not a valid CloudEvent.
    #[error("{source}")]
    Invalid {
        index: usize,
        #[source]
        source: InvalidEvent,
    },
    /// Event `index` of the call is above the size limit.
    #[error("event of {size} bytes is larger than the maximum of {max} bytes")]
    TooLarge {
        index: usize,
        size: usize,
        max: usize,
    },
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What became of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replied {
    /// Appended at this position.
    Stored(Position),
    /// Dropped by the loop guard: it would have reached the broker with a TTL of 0.
    Dropped,
}

/// Validates, limits, stamps and appends events (see the module doc).
pub struct Publisher {
    log: Arc<dyn EventLog>,
    max_event_size: usize,
    /// Why the last append failed in the log's storage, until one succeeds (or a probe does).
    failing: Mutex<Option<String>>,
}

impl Publisher {
    pub fn new(log: Arc<dyn EventLog>, max_event_size: usize) -> Self {
        Self {
            log,
            max_event_size,
            failing: Mutex::default(),
        }
    }

    /// Appends, noting whether the log's storage took the write.
    async fn append(&self, topic: &Topic, events: Vec<Event>) -> Result<Vec<Position>, LogError> {
        let result = self.log.append(topic, events).await;
        match &result {
            Ok(_) => self.set_failing(None),
            Err(e @ LogError::Storage(_)) => self.set_failing(Some(e.to_string())),
            // A broker that does not exist, or shutdown: the storage is not at fault.
            Err(_) => {}
        }
        result
    }

    fn set_failing(&self, reason: Option<String>) {
        if let Ok(mut f) = self.failing.lock() {
            if f.is_some() || reason.is_some() {
                *f = reason;
            }
        }
    }

    /// Why the log refuses writes, while it does: the last append failed in storage.
    pub fn failing(&self) -> Option<String> {
        self.failing.lock().ok().and_then(|f| f.clone())
    }

    /// While the log refuses writes, tries it: true (and no longer failing) if it answers.
    pub async fn probe(&self) -> bool {
        if self.failing().is_none() {
            return true;
        }
        match self.log.probe().await {
            Ok(()) => {
                self.set_failing(None);
                true
            }
            Err(_) => false,
        }
    }

    /// A publisher with the default size limit (1 MiB).
    pub fn with_default_limit(log: Arc<dyn EventLog>) -> Self {
        Self::new(log, DEFAULT_MAX_EVENT_SIZE)
    }

    /// The log it appends to (for readers that share it).
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn max_event_size(&self) -> usize {
        self.max_event_size
    }

    /// Validates, limits and stamps events in place: what [`publish`](Self::publish) does
    /// before it appends, for a caller that writes them elsewhere (a KafkaSink's topic).
    pub fn prepare(&self, events: &mut [Event]) -> Result<(), PublishError> {
        stamp(events, self.max_event_size)
    }

    /// Publishes one of Ferry's own events (a resource change): validated and stamped like
    /// any, but not held to the producers' size limit (a resource's JSON may be larger).
    pub async fn publish_own(
        &self,
        topic: &Topic,
        mut event: Event,
    ) -> Result<Position, PublishError> {
        stamp(std::slice::from_mut(&mut event), usize::MAX)?;
        first(self.append(topic, vec![event]).await?)
    }

    /// Publishes events to a broker's topic: all stored durably, or none (an error).
    pub async fn publish(
        &self,
        topic: &Topic,
        mut events: Vec<Event>,
    ) -> Result<Vec<Position>, PublishError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.prepare(&mut events)?;
        Ok(self.append(topic, events).await?)
    }

    /// Publishes one event.
    pub async fn publish_one(&self, topic: &Topic, event: Event) -> Result<Position, PublishError> {
        first(self.publish(topic, vec![event]).await?)
    }

    /// Publishes a subscriber's reply to `parent`: one step further along Knative's loop guard
    /// (`knativebrokerttl` one less than the parent's, 255 for a parent without one); a reply
    /// that would reach 0 is dropped, not stored.
    pub async fn reply(
        &self,
        topic: &Topic,
        parent: &Event,
        mut reply: Event,
    ) -> Result<Replied, PublishError> {
        let ttl = next_ttl(parent);
        if ttl <= 0 {
            return Ok(Replied::Dropped);
        }
        reply.set_attr(BROKER_TTL, AttrValue::String(ttl.to_string()));
        self.publish_one(topic, reply).await.map(Replied::Stored)
    }
}

/// Validates, limits (at `max` bytes) and stamps events in place.
fn stamp(events: &mut [Event], max: usize) -> Result<(), PublishError> {
    let arrival = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for (index, event) in events.iter_mut().enumerate() {
        cloudevent::validate(event).map_err(|source| PublishError::Invalid { index, source })?;
        let size = event.size();
        if size > max {
            return Err(PublishError::TooLarge { index, size, max });
        }
        event.set_attr(ARRIVAL_TIME, AttrValue::String(arrival.clone()));
    }
    Ok(())
}

/// The one position of a one-event append.
fn first(positions: Vec<Position>) -> Result<Position, PublishError> {
    positions.into_iter().next().ok_or_else(|| {
        LogError::Storage("the log returned no position for the event".into()).into()
    })
}

/// The loop guard of a reply to `parent`.
pub fn next_ttl(parent: &Event) -> i64 {
    parent
        .attr(BROKER_TTL)
        .and_then(ttl_of)
        .unwrap_or(MAX_TTL)
        .clamp(0, MAX_TTL)
        - 1
}
