//! The checker on hand-made histories, linearizable and not.

use super::checker::{check, check_history, linearizable, RegOp};
use super::history::{History, LifeEvent, LifeKind, Op, OpKind, Outcome};

fn op(kind: OpKind, value: Option<&str>, invoke: u64, ret: Option<u64>) -> Op {
    Op {
        client: 1,
        process: 1,
        lost_with: None,
        kind,
        page: "P1".into(),
        value: value.map(str::to_string),
        invoke_ns: invoke,
        return_ns: ret,
        outcome: if ret.is_some() { Outcome::Ok } else { Outcome::Unknown },
        epoch: None,
        error: None,
        last: false,
    }
}

fn w(value: &str, invoke: u64, ret: u64) -> Op {
    op(OpKind::Write, Some(value), invoke, Some(ret))
}

fn r(value: Option<&str>, invoke: u64, ret: u64) -> Op {
    op(OpKind::Read, value, invoke, Some(ret))
}

#[test]
fn sequential_history_is_clean() {
    let h = [r(None, 0, 1), w("a", 2, 3), r(Some("a"), 4, 5), w("b", 6, 7), r(Some("b"), 8, 9)];
    let v = check(&h);
    assert!(v.clean(), "{v:?}");
}

#[test]
fn stale_read_is_not_linearizable() {
    let h = [w("a", 0, 10), w("b", 20, 30), r(Some("a"), 40, 50)];
    let v = check(&h);
    assert_eq!(v.not_linearizable, vec!["P1".to_string()]);
    assert!(!v.clean());
}

#[test]
fn concurrent_operations_may_go_either_way() {
    // The read overlaps both writes, so either value is fine.
    for seen in ["a", "b"] {
        let h = [w("a", 0, 10), w("b", 5, 30), r(Some(seen), 8, 40)];
        assert!(check(&h).clean(), "read of {seen}");
    }
}

#[test]
fn unknown_writes_may_apply_late_or_never() {
    let maybe = op(OpKind::Write, Some("a"), 0, None);
    // Not yet applied, then applied: fine.
    assert!(check(&[maybe.clone(), r(None, 5, 6), r(Some("a"), 50, 60)]).clean());
    // Never applied: fine.
    assert!(check(&[maybe.clone(), r(None, 5, 6)]).clean());
    // Applied, then gone again: not linearizable.
    let v = check(&[maybe, r(Some("a"), 5, 6), r(None, 50, 60)]);
    assert!(!v.not_linearizable.is_empty());
}

#[test]
fn lost_acknowledged_write_is_named() {
    let mut last = r(Some("a"), 100, 110);
    last.last = true;
    let v = check(&[w("a", 0, 10), w("b", 20, 30), last]);
    assert_eq!(v.lost_acknowledged_writes, 1);
    assert!(v.details.iter().any(|d| d.contains("[\"b\"]")), "{:?}", v.details);
}

#[test]
fn phantom_value_is_named() {
    let v = check(&[w("a", 0, 10), r(Some("zzz"), 20, 30)]);
    assert_eq!(v.phantom_values, 1);
    assert!(!v.clean());
}

#[test]
fn value_seen_again_is_a_duplicate() {
    let h = [w("a", 0, 1), w("b", 2, 3), r(Some("a"), 4, 5), r(Some("b"), 6, 7), r(Some("a"), 8, 9)];
    let v = check(&h);
    assert_eq!(v.duplicate_applications, 1);
    assert!(!v.not_linearizable.is_empty());
}

#[test]
fn epoch_going_back_is_a_regression() {
    let mut a = r(None, 0, 1);
    a.epoch = Some(3);
    let mut b = r(None, 5, 6);
    b.epoch = Some(2);
    let v = check(&[a, b]);
    assert_eq!(v.epoch_regressions, 1);
}

#[test]
fn search_handles_many_overlapping_operations() {
    // 14 mutually overlapping writes and a read of one of them: linearizable.
    let mut ops: Vec<RegOp> =
        (0..14).map(|i| RegOp { invoke: i, ret: 1000 + i, write: true, value: i as u32 + 70 }).collect();
    ops.push(RegOp { invoke: 5000, ret: 5001, write: false, value: 77 });
    assert_eq!(linearizable(&ops, 5_000_000), Some(true));
    ops.push(RegOp { invoke: 6000, ret: 6001, write: false, value: 78 });
    assert_eq!(linearizable(&ops, 5_000_000), Some(false), "77 then 78 with no write between");
}

#[test]
fn an_operation_refused_as_stale_is_a_violation() {
    let mut refused = op(OpKind::Write, Some("b"), 30, Some(40));
    refused.outcome = Outcome::Fail;
    refused.error = Some("request 3 of client 1 is older than its last applied request 4".into());
    let ops = vec![op(OpKind::Write, Some("a"), 10, Some(20)), refused];
    let v = check_history(&History { ops, faults: vec![], lives: vec![] });
    assert_eq!(v.stale_refusals, 1, "{v:?}");
    assert!(!v.clean());
}

/// The history of a page lost with client 3, which wrote "a" at epoch 1, read
/// by client 5; client 3 then wrote "b" in `second`, at epoch `second_epoch`,
/// was paused and evicted (it came back as client 7, unless `evicted` is
/// false), and client 6 saw the page lost at epoch `lost_at` in `[40, 200]`.
fn lost_page(second: (u64, u64), second_epoch: u64, lost_at: u64, evicted: bool) -> History {
    let by = |process: u64, epoch: u64, mut op: Op| {
        op.process = process;
        op.epoch = Some(epoch);
        op
    };
    let mut seen = r(None, 40, 200);
    seen.lost_with = Some(3);
    let ops = vec![
        by(3, 1, w("a", 0, 10)),
        by(5, 1, r(Some("a"), 20, 30)),
        by(6, lost_at, seen),
        by(3, second_epoch, w("b", second.0, second.1)),
    ];
    let life = |at_ns, client, kind| LifeEvent { at_ns, slot: 0, client, kind };
    let mut lives = vec![
        life(0, 3, LifeKind::Registered { was: None }),
        life(0, 5, LifeKind::Registered { was: None }),
        life(0, 6, LifeKind::Registered { was: None }),
    ];
    if evicted {
        lives.push(life(300, 7, LifeKind::Registered { was: Some(3) }));
    }
    History { ops, faults: Vec::new(), lives }
}

#[test]
fn a_page_lost_while_a_survivor_held_it_is_named() {
    // Client 5 read the last write's value before the loss was seen, and no
    // write came between: it held a copy and should have been promoted.
    let v = check_history(&lost_page((250, 260), 2, 1, true));
    assert_eq!(v.lost_with_survivors, 1, "{v:?}");
    assert!(!v.clean());
}

#[test]
fn a_write_overlapping_the_loss_read_may_have_taken_the_survivors_copy() {
    // Client 3's write "b" (epoch 2) began after the read that saw the loss
    // began and ended before it returned, and the page was lost at its epoch:
    // it took effect first, invalidating client 5 and leaving client 3 owner
    // with no copy, so the loss is legal.
    let v = check_history(&lost_page((50, 60), 2, 2, true));
    assert!(v.clean(), "{v:?}");
}

#[test]
fn a_write_that_started_the_page_afresh_after_the_loss_excuses_nothing() {
    // The overlapping write names epoch 2, past the epoch 1 the page was lost
    // at: it came after the loss, so client 5 still held the lost epoch's copy.
    let v = check_history(&lost_page((50, 60), 2, 1, true));
    assert_eq!(v.lost_with_survivors, 1, "{v:?}");
}

#[test]
fn a_page_lost_with_a_client_never_removed_is_named() {
    let v = check_history(&lost_page((50, 60), 2, 2, false));
    assert_eq!(v.lost_with_survivors, 1, "{v:?}");
}
