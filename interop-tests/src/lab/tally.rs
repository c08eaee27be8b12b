//! Counting what an application was handed: per sender and send, which numbers arrived, how
//! many came twice, how many came after a later one.

use std::collections::{HashMap, HashSet};

use super::agent::Received;

/// What one receiver was handed, message by message.
#[derive(Debug, Default)]
pub struct Tally {
    /// Per (sender node, send tag): the numbers seen with their message ids, and the highest.
    sends: HashMap<(String, String), Send>,
    /// Messages handed to the application again under a new message id (or without one).
    pub duplicates: u64,
    /// Messages handed over after a later message of the same send.
    pub order_violations: u64,
    /// Messages handed over again under the same message id: a durable mailbox's redelivery
    /// of what was printed but not yet acknowledged when its process was killed (the
    /// application tells it by the id).
    pub redelivered: u64,
}

#[derive(Debug, Default)]
struct Send {
    ids: HashMap<u64, String>,
    highest: Option<u64>,
}

impl Tally {
    /// Counts one message.
    pub fn record(&mut self, message: &Received) {
        let send = self
            .sends
            .entry((message.from.clone(), message.tag.clone()))
            .or_default();
        match send.ids.get(&message.number) {
            Some(id) if *id == message.id && id != "-" => self.redelivered += 1,
            Some(_) => self.duplicates += 1,
            None => {
                if send.highest.is_some_and(|highest| message.number < highest) {
                    self.order_violations += 1;
                }
                send.ids.insert(message.number, message.id.clone());
                send.highest = send.highest.max(Some(message.number));
            }
        }
    }

    /// How many different messages of `from`'s send `tag` arrived.
    pub fn received(&self, from: &str, tag: &str) -> u64 {
        self.sends
            .get(&(from.to_string(), tag.to_string()))
            .map_or(0, |send| send.ids.len() as u64)
    }

    /// How many of the first `acknowledged` messages of `from`'s send `tag` never arrived:
    /// acknowledged to the sender, lost to the application.
    pub fn lost(&self, from: &str, tag: &str, acknowledged: u64) -> u64 {
        let empty = HashMap::new();
        let ids = self
            .sends
            .get(&(from.to_string(), tag.to_string()))
            .map_or(&empty, |send| &send.ids);
        let seen: HashSet<u64> = ids.keys().copied().filter(|n| *n < acknowledged).collect();
        acknowledged - seen.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: &str, number: u64, id: &str) -> Received {
        Received {
            from: "a".to_string(),
            id: id.to_string(),
            tag: tag.to_string(),
            number,
        }
    }

    #[test]
    fn counts_losses_duplicates_reorderings_and_redeliveries() {
        let mut tally = Tally::default();
        for (number, id) in [(0, "x0"), (2, "x2"), (1, "x1"), (2, "x2"), (0, "y0")] {
            tally.record(&message("t", number, id));
        }
        tally.record(&message("u", 0, "-"));
        tally.record(&message("u", 0, "-"));
        assert_eq!(tally.order_violations, 1);
        assert_eq!(tally.redelivered, 1);
        assert_eq!(tally.duplicates, 2);
        assert_eq!(tally.received("a", "t"), 3);
        assert_eq!(tally.lost("a", "t", 5), 2);
        assert_eq!(tally.lost("a", "u", 1), 0);
        assert_eq!(tally.lost("b", "t", 3), 3);
    }
}
