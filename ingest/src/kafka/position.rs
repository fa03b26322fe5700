//! Where reading a partition stands, as a pure state machine: the offset the worker expects
//! next (the table's position, then one past each record taken) and where a seek to it stands.
//!
//! A seek runs off the worker loop; until librdkafka confirms it, records of the partition may
//! still come from the old position and are dropped. After it, the first record is the first
//! the broker has at or past the position: a gap before it is real (compacted or
//! transactional offsets), and only then is a gap accepted.

/// Where a seek stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// None asked for since the last record taken.
    No,
    /// Asked for (its id); not yet confirmed.
    Pending(u64),
    /// Confirmed, or the partition was just assigned at its start: the next record is the
    /// first the broker has there.
    Done,
}

/// One partition: the offset expected next (`None`: the table holds nothing of it, so reading
/// starts at its beginning) and the state of a seek.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub next: Option<i64>,
    pub seek: Seek,
}

/// What to do with the record at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Drop it: a seek is pending, or it lies below the expected offset (already committed or
    /// already buffered).
    Skip,
    /// Drop it and seek the partition to this offset (`None`: its beginning): Kafka started
    /// the partition elsewhere than the table's position.
    SeekTo(Option<i64>),
    /// Take it; the batch starts the partition from `expected`.
    Take { expected: Option<i64> },
    /// Take it although the offsets `expected..offset` are missing: right after a confirmed
    /// seek, the broker has nothing in between.
    TakeAfterGap { expected: i64 },
}

impl Part {
    /// A partition whose position was read from the table but not sought to yet.
    pub fn at(next: Option<i64>) -> Part {
        Part {
            next,
            seek: Seek::No,
        }
    }

    /// A partition the assignment started at `next` (the table's position, or its beginning).
    pub fn assigned(next: Option<i64>) -> Part {
        Part {
            next,
            seek: Seek::Done,
        }
    }

    /// A partition whose batch was fenced: another worker moved the table's position to
    /// `stored`; reading restarts there, once the seek `id` is confirmed.
    pub fn fenced(stored: Option<i64>, id: u64) -> Part {
        Part {
            next: stored,
            seek: Seek::Pending(id),
        }
    }

    /// What to do with the record at `offset`.
    pub fn verdict(&self, offset: i64) -> Verdict {
        if matches!(self.seek, Seek::Pending(_)) {
            return Verdict::Skip;
        }
        match self.next {
            Some(n) if offset < n => Verdict::Skip,
            Some(n) if offset > n && self.seek != Seek::Done => Verdict::SeekTo(Some(n)),
            Some(n) if offset > n => Verdict::TakeAfterGap { expected: n },
            None if self.seek != Seek::Done => Verdict::SeekTo(None),
            next => Verdict::Take { expected: next },
        }
    }

    /// The record at `offset` was taken.
    pub fn took(&mut self, offset: i64) {
        self.next = Some(offset + 1);
        self.seek = Seek::No;
    }

    /// A seek was asked for (`id`).
    pub fn seeking(&mut self, id: u64) {
        self.seek = Seek::Pending(id);
    }

    /// The seek `id` ended; a failed one is asked for again by the next record.
    pub fn seek_ended(&mut self, id: u64, ok: bool) {
        if self.seek == Seek::Pending(id) {
            self.seek = if ok { Seek::Done } else { Seek::No };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_at_the_position_are_taken_and_move_it() {
        let mut p = Part::assigned(Some(10));
        assert_eq!(p.verdict(10), Verdict::Take { expected: Some(10) });
        p.took(10);
        assert_eq!(
            p,
            Part {
                next: Some(11),
                seek: Seek::No
            }
        );
        assert_eq!(p.verdict(11), Verdict::Take { expected: Some(11) });
    }

    #[test]
    fn records_below_the_position_are_skipped() {
        // Already in the table (a replay after a crash) or already buffered.
        let p = Part::at(Some(10));
        assert_eq!(p.verdict(3), Verdict::Skip);
        assert_eq!(p.verdict(9), Verdict::Skip);
    }

    #[test]
    fn a_record_past_the_position_makes_the_worker_seek_back() {
        // Kafka's committed offset (advisory) was ahead of the table.
        let p = Part::at(Some(10));
        assert_eq!(p.verdict(15), Verdict::SeekTo(Some(10)));
        // The table holds nothing of the partition: from its beginning.
        let p = Part::at(None);
        assert_eq!(p.verdict(15), Verdict::SeekTo(None));
    }

    #[test]
    fn while_a_seek_is_pending_everything_is_skipped() {
        let mut p = Part::at(Some(10));
        p.seeking(7);
        for offset in [5, 10, 15] {
            assert_eq!(p.verdict(offset), Verdict::Skip);
        }
        // Another seek's end changes nothing.
        p.seek_ended(6, true);
        assert_eq!(p.seek, Seek::Pending(7));
        // A failed seek is asked for again by the next record.
        p.seek_ended(7, false);
        assert_eq!(p.verdict(15), Verdict::SeekTo(Some(10)));
    }

    #[test]
    fn a_gap_right_after_a_confirmed_seek_is_real() {
        let mut p = Part::at(Some(10));
        p.seeking(1);
        p.seek_ended(1, true);
        // Offsets 10..13 are gone (compaction, transaction markers): take 13.
        assert_eq!(p.verdict(13), Verdict::TakeAfterGap { expected: 10 });
        p.took(13);
        // Past the first record, a gap is Kafka's doing again: seek back.
        assert_eq!(p.verdict(20), Verdict::SeekTo(Some(14)));
        // An assignment is as good as a confirmed seek.
        let p = Part::assigned(Some(10));
        assert_eq!(p.verdict(12), Verdict::TakeAfterGap { expected: 10 });
        let p = Part::assigned(None);
        assert_eq!(p.verdict(12), Verdict::Take { expected: None });
    }

    #[test]
    fn a_fenced_partition_restarts_at_the_tables_position_after_its_seek() {
        // The worker buffered up to 20, but another worker committed up to 30 meanwhile.
        let mut p = Part::at(Some(10));
        p.took(19);
        let mut p = Part::fenced(Some(30), 4);
        assert_eq!(p.verdict(20), Verdict::Skip, "records from before the seek");
        p.seek_ended(4, true);
        assert_eq!(p.verdict(25), Verdict::Skip);
        assert_eq!(p.verdict(30), Verdict::Take { expected: Some(30) });
        // Fenced where the table holds nothing: from the beginning.
        let mut p = Part::fenced(None, 5);
        p.seek_ended(5, true);
        assert_eq!(p.verdict(0), Verdict::Take { expected: None });
    }
}
