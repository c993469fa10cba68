use super::*;

fn tracker() -> (OffsetTracker, Arc<PartitionOffsets>) {
    let (holds, _rx) = HoldIndex::new();
    let t = OffsetTracker::new(Arc::new(Budget::new(1000, 1 << 20)), holds);
    t.assign([("events", 0)]);
    let p = t.partition("events", 0).unwrap();
    (t, p)
}

#[test]
fn nothing_read_nothing_to_commit() {
    let (t, p) = tracker();
    assert_eq!(p.watermark(), None);
    assert!(t.commit_candidates().is_empty());
}

#[test]
fn watermark_waits_for_the_slowest_record() {
    let (t, p) = tracker();
    let a = Ticket::issue(p.clone(), 10, 2, 100);
    let b = Ticket::issue(p.clone(), 11, 1, 100);
    let c = Ticket::issue(p.clone(), 12, 1, 100);
    assert_eq!(p.watermark(), Some(10));

    // Later records finishing first do not move the watermark past 10.
    c.finish_one();
    b.finish_one();
    a.finish_one();
    assert_eq!(
        p.watermark(),
        Some(10),
        "offset 10 still has one delivery out"
    );
    assert_eq!(t.commit_candidates(), vec![("events".into(), 0, 10)]);
    t.confirm(&[("events".into(), 0, 10)]);

    a.finish_one();
    assert_eq!(p.watermark(), Some(13));
    assert_eq!(t.commit_candidates(), vec![("events".into(), 0, 13)]);
    t.confirm(&[("events".into(), 0, 13)]);
    assert!(
        t.commit_candidates().is_empty(),
        "confirmed positions are not committed again"
    );
}

#[test]
fn a_commit_the_broker_did_not_confirm_is_offered_again() {
    let (t, p) = tracker();
    let a = Ticket::issue(p.clone(), 0, 1, 10);
    a.finish_one();
    assert_eq!(t.commit_candidates(), vec![("events".into(), 0, 1)]);
    // The commit failed: nothing confirmed, so the next round retries it.
    assert_eq!(t.commit_candidates(), vec![("events".into(), 0, 1)]);
    assert_eq!(t.positions(), vec![("events".into(), 0, 1)]);
}

#[test]
fn unrouted_records_are_final_at_once_and_gaps_are_fine() {
    let (t, p) = tracker();
    let _a = Ticket::issue(p.clone(), 5, 0, 10);
    // Offsets may have gaps (compaction, transaction markers).
    let b = Ticket::issue(p.clone(), 9, 1, 10);
    let _c = Ticket::issue(p.clone(), 20, 0, 10);
    assert_eq!(p.watermark(), Some(9));
    assert_eq!(
        t.budget().records(),
        1,
        "only the routed record holds memory"
    );
    b.finish_one();
    assert_eq!(p.watermark(), Some(21));
    assert_eq!(t.budget().records(), 0);
    assert_eq!(t.budget().bytes(), 0);
}

#[test]
fn a_dropped_ticket_gives_its_memory_back_but_never_completes() {
    let (t, p) = tracker();
    let a = Ticket::issue(p.clone(), 0, 3, 1000);
    let b = Ticket::issue(p.clone(), 1, 1, 1000);
    assert_eq!(t.budget().records(), 2);
    a.finish_one(); // one of three deliveries done
    drop(a); // the other two abandoned, e.g. a held record dropped on revoke
    assert_eq!(
        t.budget().records(),
        1,
        "the abandoned record's place is free"
    );
    b.finish_one();
    assert_eq!(t.budget().records(), 0);
    assert_eq!(t.budget().bytes(), 0, "every byte charged came back");
    assert_eq!(
        p.watermark(),
        Some(0),
        "an abandoned record must be read again"
    );
}

#[test]
fn budget_counts_bytes_and_wakes_at_low_water() {
    let budget = Arc::new(Budget::new(1000, 10_000));
    budget.charge(1, 9_000);
    assert!(!budget.full());
    budget.charge(1, 2_000);
    assert!(budget.full(), "over the byte limit");
    budget.release(1, 2_000);
    assert!(!budget.low(), "9,000 bytes is above three quarters");
    budget.release(1, 9_000);
    assert!(budget.low());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(5), budget.drained())
            .await
            .expect("crossing low water left a wake-up");
    });
}

#[test]
fn revoke_returns_final_positions_and_forgets() {
    let (t, p) = tracker();
    t.assign([("events", 1)]);
    let a = Ticket::issue(p.clone(), 0, 1, 10);
    let b = Ticket::issue(p.clone(), 1, 1, 10);
    a.finish_one();
    let revoked = t.revoke([("events", 0)]);
    assert_eq!(revoked, vec![("events".into(), 0, 1)]);
    assert!(t.partition("events", 0).is_none());
    assert!(t.partition("events", 1).is_some());
    // Late completions on a revoked partition are harmless.
    b.finish_one();
    assert!(t.commit_candidates().is_empty());
    // Re-assignment starts from a clean slate.
    t.assign([("events", 0)]);
    let again = t.partition("events", 0).unwrap();
    assert_eq!(again.watermark(), None);
    assert!(!t.is_current(&p), "the old state is not the current one");
    assert!(t.is_current(&again));
}

#[test]
fn concurrent_finishers_complete_exactly_once() {
    let (t, p) = tracker();
    let tickets: Vec<_> = (0..200)
        .map(|o| Ticket::issue(p.clone(), o, 4, 10))
        .collect();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let tickets = &tickets;
            s.spawn(move || tickets.iter().rev().for_each(|t| t.finish_one()));
        }
    });
    assert_eq!(p.watermark(), Some(200));
    assert_eq!(p.pending(), 0);
    assert_eq!(t.budget().bytes(), 0);
}

fn internal() -> (
    OffsetTracker,
    Arc<PartitionOffsets>,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    let (holds, rx) = HoldIndex::new();
    let t = OffsetTracker::new(Arc::new(Budget::new(1000, 1 << 20)), holds);
    t.assign([("dispatcher.spill", 0)]);
    let p = t.partition("dispatcher.spill", 0).unwrap();
    (t, p, rx)
}

#[test]
fn a_record_given_back_opens_a_hold_and_the_main_reader_moves_past() {
    let (t, p, mut started) = internal();
    const SLOW: usize = 7;
    const FAST: usize = 3;
    // Offset 0 is the slow endpoint's; its lane has no room: the job is
    // dropped, which puts the record under a hold.
    let t0 = p.read_internal(0, SLOW, 100, 1_000).expect("no hold yet");
    drop(t0);
    assert_eq!(started.try_recv().ok(), Some(SLOW), "its reader must start");
    assert!(p.has_open_hold(SLOW));
    // Later records of the slow endpoint are left to that hold; the fast
    // endpoint's records are handed over.
    assert!(p.read_internal(1, SLOW, 100, 1_001).is_none());
    let t2 = p
        .read_internal(2, FAST, 100, 1_002)
        .expect("the fast one flows");
    assert!(p.read_internal(3, SLOW, 100, 1_003).is_none());
    t2.finish_one();
    assert_eq!(
        p.watermark(),
        Some(0),
        "nothing the hold covers may be committed"
    );
    assert_eq!(p.backlog(SLOW), Some((3, Some(1_000))));

    // The reader reads from the hold's cursor: takes 0, skips 2 (not its
    // own), takes 1 and 3, and stops where the main reader is.
    assert_eq!(p.reader_position(SLOW), Some(0));
    assert_eq!(p.reader_step(SLOW, 0, true), ReaderStep::Take);
    let r0 = Ticket::issue_held(p.clone(), 0, SLOW, 100, 1_000);
    assert_eq!(p.reader_step(SLOW, 1, true), ReaderStep::Take);
    let r1 = Ticket::issue_held(p.clone(), 1, SLOW, 100, 1_001);
    assert_eq!(p.reader_step(SLOW, 2, false), ReaderStep::Skip);
    assert_eq!(p.reader_step(SLOW, 3, true), ReaderStep::Take);
    let r3 = Ticket::issue_held(p.clone(), 3, SLOW, 100, 1_003);
    assert_eq!(p.reader_step(SLOW, 4, true), ReaderStep::Stop, "caught up");
    assert!(!p.has_open_hold(SLOW));
    assert_eq!(p.watermark(), Some(0));
    r1.finish_one();
    r3.finish_one();
    assert_eq!(p.watermark(), Some(0));
    r0.finish_one();
    assert_eq!(p.watermark(), Some(4));
    assert_eq!(t.budget().bytes(), 0);

    // Caught up, the main reader hands the slow endpoint's records over again.
    let t4 = p.read_internal(4, SLOW, 100, 1_004).expect("flowing again");
    t4.finish_one();
    assert_eq!(p.watermark(), Some(5));
}

#[test]
fn a_reader_never_passes_a_record_the_main_reader_holds_until_due() {
    let (_t, p, _rx) = internal();
    const LANE: usize = 1;
    let given_back = p.read_internal(0, LANE, 10, 0).unwrap();
    drop(given_back);
    // Offset 1 is not due: the main reader holds it undecided.
    let held = Ticket::issue_internal(p.clone(), 1, LANE, 10, 0, true);
    assert_eq!(p.reader_step(LANE, 0, true), ReaderStep::Take);
    let _r0 = Ticket::issue_held(p.clone(), 0, LANE, 10, 0);
    assert_eq!(
        p.reader_step(LANE, 1, true),
        ReaderStep::Stop,
        "offset 1 is the main reader's until it is due"
    );
    p.release_undecided();
    held.finish_one();
}

#[test]
fn a_record_handed_over_twice_is_skipped_and_a_dropped_one_is_read_again() {
    let (_t, p, _rx) = internal();
    const LANE: usize = 2;
    drop(p.read_internal(0, LANE, 10, 0).unwrap());
    assert_eq!(p.reader_step(LANE, 0, true), ReaderStep::Take);
    let r0 = Ticket::issue_held(p.clone(), 0, LANE, 10, 0);
    // A later record the main reader left to the hold.
    assert!(p.read_internal(1, LANE, 10, 0).is_none());
    let _next = Ticket::issue(p.clone(), 2, 1, 10);
    // The lane gives 0 back (paused, say): the cursor returns to it, and
    // the reader may take nothing later before it read from there again.
    drop(r0);
    assert_eq!(p.reader_step(LANE, 1, true), ReaderStep::Rewind);
    assert_eq!(p.reader_position(LANE), Some(0));
    assert_eq!(p.reader_step(LANE, 0, true), ReaderStep::Take);
    let r0 = Ticket::issue_held(p.clone(), 0, LANE, 10, 0);
    assert_eq!(p.reader_step(LANE, 1, true), ReaderStep::Take);
    let r1 = Ticket::issue_held(p.clone(), 1, LANE, 10, 0);
    r0.finish_one();
    r1.finish_one();
    assert_eq!(p.watermark(), Some(2));
}

#[test]
fn a_hold_on_a_quiet_partition_closes_once_its_reader_has_seen_everything() {
    let (t, p, _rx) = internal();
    const LANE: usize = 2;
    drop(p.read_internal(0, LANE, 10, 1_000).unwrap());
    assert!(p.read_internal(1, LANE, 10, 1_001).is_none());
    // Nothing after offset 1: no record will ever show the reader it
    // caught up.
    assert_eq!(p.reader_position(LANE), Some(0));
    assert_eq!(p.reader_step(LANE, 0, true), ReaderStep::Take);
    let r0 = Ticket::issue_held(p.clone(), 0, LANE, 10, 1_000);
    assert!(!p.reader_idle(LANE), "offset 1 is still to be read");
    assert!(p.has_open_hold(LANE));
    assert_eq!(p.reader_step(LANE, 1, true), ReaderStep::Take);
    let r1 = Ticket::issue_held(p.clone(), 1, LANE, 10, 1_001);
    assert!(p.reader_idle(LANE), "everything decided was seen");
    assert!(!p.has_open_hold(LANE));
    assert_eq!(p.backlog(LANE), None);
    assert!(t.holds().take_lost().is_empty(), "nothing was lost");
    r0.finish_one();
    r1.finish_one();
    assert_eq!(p.watermark(), Some(2));
    // Caught up, the main reader hands the endpoint's records over again.
    assert!(p.read_internal(2, LANE, 10, 1_002).is_some());
}

#[test]
fn records_deleted_under_a_hold_are_reported_lost_and_do_not_keep_it_open() {
    let (t, p, _rx) = internal();
    const SLOW: usize = 7;
    const FAST: usize = 3;
    drop(p.read_internal(0, SLOW, 10, 1_000).unwrap());
    assert!(p.read_internal(1, SLOW, 10, 1_001).is_none());
    p.read_internal(2, FAST, 10, 1_002).unwrap().finish_one();
    assert!(p.read_internal(3, SLOW, 10, 1_003).is_none());
    assert!(p.read_internal(4, SLOW, 10, 1_004).is_none());
    assert_eq!(p.backlog(SLOW), Some((4, Some(1_000))));
    // Retention deleted offsets 0 to 3 before the reader came: its
    // consumer starts at 4, the first offset still there.
    assert_eq!(p.reader_position(SLOW), Some(0));
    assert_eq!(p.reader_step(SLOW, 4, true), ReaderStep::Take);
    let r4 = Ticket::issue_held(p.clone(), 4, SLOW, 10, 1_004);
    assert!(p.reader_idle(SLOW));
    assert_eq!(
        t.holds().take_lost(),
        vec![Lost {
            lane: Some(SLOW),
            topic: "dispatcher.spill".into(),
            partition: 0,
            deliveries: 3,
        }],
        "offsets 0, 1 and 3 were the slow endpoint's and never came back"
    );
    assert_eq!(p.backlog(SLOW), None, "no backlog left to show");
    r4.finish_one();
    assert_eq!(p.watermark(), Some(5), "the commit moves past the gap");
    assert!(t.holds().take_lost().is_empty(), "reported once");
}

#[test]
fn a_gap_the_main_reader_finds_in_an_internal_topic_is_reported() {
    let (t, p, _rx) = internal();
    p.check_gap(0);
    p.read_internal(0, 1, 10, 0).unwrap().finish_one();
    p.check_gap(1);
    assert!(t.holds().take_lost().is_empty(), "no gap yet");
    // Offsets 1 to 9 were deleted before the main reader came to them.
    p.check_gap(10);
    assert_eq!(
        t.holds().take_lost(),
        vec![Lost {
            lane: None,
            topic: "dispatcher.spill".into(),
            partition: 0,
            deliveries: 9,
        }]
    );
}

#[test]
fn a_spilled_copy_is_superseded_only_once_its_record_was_read_again() {
    let (t, p) = tracker();
    let at = |offset: i64| SourceRef {
        topic: "events".into(),
        partition: 0,
        offset,
    };
    let before = p.epoch().wrapping_add(1);
    // Nothing read yet in this assignment: not known.
    assert_eq!(t.returned(&at(5), before), Returned::NotYet);
    // The reader starts at 3, reads 3 and 4, then 7: 5 and 6 are gone
    // from the topic (compacted), so never read again.
    let _kept: Vec<_> = [3, 4, 7]
        .into_iter()
        .map(|o| Ticket::issue(p.clone(), o, 0, 10))
        .collect();
    assert_eq!(t.returned(&at(4), before), Returned::Superseded);
    assert_eq!(t.returned(&at(7), before), Returned::Superseded);
    assert_eq!(t.returned(&at(5), before), Returned::Deliver, "a gap");
    assert_eq!(
        t.returned(&at(2), before),
        Returned::Deliver,
        "before the start"
    );
    assert_eq!(
        t.returned(&at(8), before),
        Returned::NotYet,
        "not there yet"
    );
    // Spilled by this assignment itself: its only copy.
    assert_eq!(t.returned(&at(4), p.epoch()), Returned::Deliver);
    // A partition this replica does not own: cannot be told.
    let elsewhere = SourceRef {
        topic: "events".into(),
        partition: 9,
        offset: 4,
    };
    assert_eq!(t.returned(&elsewhere, before), Returned::Deliver);
}

#[test]
fn too_many_gaps_and_none_counts_as_read() {
    let (t, p) = tracker();
    let _kept: Vec<_> = (0..=MAX_GAPS as i64 + 1)
        .map(|i| Ticket::issue(p.clone(), i * 2, 0, 10))
        .collect();
    let at = SourceRef {
        topic: "events".into(),
        partition: 0,
        offset: 2,
    };
    assert_eq!(
        t.returned(&at, p.epoch().wrapping_add(1)),
        Returned::Deliver,
        "the gaps are no longer all known"
    );
}
