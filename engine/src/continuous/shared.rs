//! Work the rules of one drain share: many rules filter the same batch the same way
//! (`log_level = 'ERROR'`) and group the survivors by the same expressions (`source`,
//! `attr(attributes, 'service')`). Each such result is computed once per batch, by the
//! first rule that needs it, and reused by the others — on whichever thread they run.
//!
//! Results are keyed by the expressions' text (DataFusion prints a bound column with its
//! index, `log_level@2`), so two rules share a result only when they evaluate the same
//! expressions over the same batch. Only successes are kept: a rule whose evaluation fails
//! computes again by itself and reports its own error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{ArrayRef, RecordBatch};

use super::plan::RowOp;

type Slot<T> = Arc<OnceLock<Option<T>>>;

/// Shared results over one input batch; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct SharedEval {
    batches: Mutex<HashMap<String, Slot<RecordBatch>>>,
    arrays: Mutex<HashMap<String, Slot<ArrayRef>>>,
}

/// The text a run of row steps is known by.
pub(crate) fn ops_key(ops: &[RowOp]) -> String {
    let mut key = String::new();
    for op in ops {
        match op {
            RowOp::Filter(e) => key.push_str(&format!("WHERE {e};")),
            RowOp::Project(exprs, _) => {
                key.push_str("SELECT ");
                for e in exprs {
                    key.push_str(&format!("{e},"));
                }
                key.push(';');
            }
        }
    }
    key
}

fn slot<T>(map: &Mutex<HashMap<String, Slot<T>>>, key: &str) -> Slot<T> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    match map.get(key) {
        Some(s) => Arc::clone(s),
        None => {
            let s = Slot::default();
            map.insert(key.to_string(), Arc::clone(&s));
            s
        }
    }
}

impl SharedEval {
    /// The batch `key` names, computed by `compute` if no rule did yet (`None`: it failed).
    pub(crate) fn batch(
        &self,
        key: &str,
        compute: impl FnOnce() -> Option<RecordBatch>,
    ) -> Option<RecordBatch> {
        slot(&self.batches, key).get_or_init(compute).clone()
    }

    /// The array `key` names, computed by `compute` if no rule did yet (`None`: it failed).
    pub(crate) fn array(
        &self,
        key: &str,
        compute: impl FnOnce() -> Option<ArrayRef>,
    ) -> Option<ArrayRef> {
        slot(&self.arrays, key).get_or_init(compute).clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use arrow::array::Int64Array;

    use super::*;

    #[test]
    fn each_result_is_computed_once_across_threads() {
        let shared = SharedEval::default();
        let calls = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let a = shared.array("k", || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Some(Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef)
                    });
                    assert_eq!(a.map(|a| a.len()), Some(2));
                });
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A failure is remembered as one: the caller computes again by itself.
        assert!(shared.array("bad", || None).is_none());
        assert!(shared.array("bad", || unreachable!()).is_none());
    }
}
