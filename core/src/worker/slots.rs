//! Heap slots for a worker's request futures, kept for reuse.
//!
//! Each request runs as a boxed future (so the connection's own future stays small while it is
//! idle, see `conn`). That future is about 3 KiB: above glibc's per-thread cache (1 KiB
//! blocks), so every `malloc` and `free` of it took the allocator's slow path, about 400
//! instructions a request (callgrind). A worker keeps the slots of finished requests and hands
//! them to the next ones instead.

use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::ptr::NonNull;

/// Slots kept per worker; more requests than this finishing at once free the rest.
const KEPT: usize = 64;

/// Spare allocations of one layout (the first one recycled), for [`FutureSlots::boxed`].
pub struct FutureSlots {
    layout: Cell<Option<Layout>>,
    free: RefCell<Vec<NonNull<u8>>>,
    /// The fewest slots kept at any time since the last [`FutureSlots::trim`]: that many were
    /// not needed in the meantime.
    low: Cell<usize>,
}

impl Default for FutureSlots {
    fn default() -> Self {
        FutureSlots {
            layout: Cell::new(None),
            free: RefCell::new(Vec::new()),
            low: Cell::new(0),
        }
    }
}

impl FutureSlots {
    /// `Box::pin(make())`, in a kept slot when one fits. The future is written straight into
    /// its heap slot: `Box::pin` of a ready-made future would copy the whole of it (most of it
    /// state not yet in use: ~300 instructions of memcpy per request), while allocating first
    /// lets the compiler build its few initial fields in place.
    #[inline(always)]
    pub fn boxed<F: Future>(&self, make: impl FnOnce() -> F) -> Pin<Box<F>> {
        let slot = match self.take(Layout::new::<F>()) {
            // SAFETY: the pointer was allocated by the global allocator with exactly
            // `Layout::new::<F>()` (`take` checks), and nothing else owns it.
            Some(p) => unsafe { Box::from_raw(p.as_ptr().cast::<MaybeUninit<F>>()) },
            None => Box::new_uninit(),
        };
        Box::into_pin(Box::write(slot, make()))
    }

    /// Drops a finished (or abandoned) future and keeps its slot for the next [`boxed`].
    ///
    /// [`boxed`]: FutureSlots::boxed
    pub fn recycle<F>(&self, fut: Pin<Box<F>>) {
        let layout = Layout::new::<F>();
        // SAFETY: the future is dropped in place before its memory is reused, which is all
        // pinning asks; it is not touched again.
        let raw = Box::into_raw(unsafe { Pin::into_inner_unchecked(fut) });
        unsafe { std::ptr::drop_in_place(raw) };
        // SAFETY: `raw` is non-null (it came from a Box) and its value is gone; as a
        // `MaybeUninit` box it only frees its memory.
        let empty = unsafe { Box::from_raw(raw.cast::<MaybeUninit<F>>()) };
        if layout.size() == 0 {
            return;
        }
        if self.layout.get().is_none() {
            self.layout.set(Some(layout));
        }
        let mut free = self.free.borrow_mut();
        if self.layout.get() == Some(layout) && free.len() < KEPT {
            free.push(NonNull::from(Box::leak(empty)).cast());
        }
    }

    fn take(&self, layout: Layout) -> Option<NonNull<u8>> {
        if self.layout.get() != Some(layout) {
            return None;
        }
        let mut free = self.free.borrow_mut();
        let p = free.pop();
        self.low.set(self.low.get().min(free.len()));
        p
    }

    /// Frees the slots no request needed since the last call (the worker's housekeeping
    /// calls it every second), so a worker that had a burst of requests does not keep their
    /// slots once it is quiet.
    pub fn trim(&self) {
        self.free_oldest(self.low.get());
        self.low.set(self.free.borrow().len());
    }

    /// Frees the `n` longest-kept slots (all, if fewer are kept).
    fn free_oldest(&self, n: usize) {
        let mut free = self.free.borrow_mut();
        if let Some(layout) = self.layout.get() {
            let n = n.min(free.len());
            for p in free.drain(..n) {
                // SAFETY: every kept pointer was allocated with `layout` and is owned here.
                unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
            }
        }
    }

    /// Slots kept now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.borrow().len()
    }
}

impl Drop for FutureSlots {
    fn drop(&mut self) {
        self.free_oldest(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::task::{Context, Poll, Waker};

    /// A future that counts its drops and owns heap memory, so a slot reused without its old
    /// value dropped, or dropped twice, shows (in the count, or to a leak or double-free
    /// checker).
    fn job(drops: &Rc<Cell<u32>>, n: u32) -> impl Future<Output = u32> + use<> {
        struct OnDrop(Rc<Cell<u32>>, Vec<u8>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let guard = OnDrop(drops.clone(), vec![n as u8; 100]);
        async move {
            let g = &guard;
            std::future::ready(()).await;
            n + g.1.len() as u32
        }
    }

    fn run<F: Future>(f: Pin<&mut F>) -> F::Output {
        match f.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("pending"),
        }
    }

    #[test]
    fn reuses_the_slot_of_a_finished_future_and_drops_each_value_once() {
        let slots = FutureSlots::default();
        let drops = Rc::new(Cell::new(0));
        let mut a = slots.boxed(|| job(&drops, 1));
        let first = &*a as *const _ as usize;
        assert_eq!(run(a.as_mut()), 101);
        slots.recycle(a);
        assert_eq!((drops.get(), slots.kept()), (1, 1));

        let mut b = slots.boxed(|| job(&drops, 2));
        assert_eq!(&*b as *const _ as usize, first, "the kept slot is reused");
        assert_eq!(slots.kept(), 0);
        assert_eq!(run(b.as_mut()), 102);
        // A future recycled before it finished is dropped all the same.
        let c = slots.boxed(|| job(&drops, 3));
        slots.recycle(b);
        slots.recycle(c);
        assert_eq!((drops.get(), slots.kept()), (3, 2));
        drop(slots);
    }

    #[test]
    fn keeps_one_layout_and_at_most_kept_slots() {
        let slots = FutureSlots::default();
        let drops = Rc::new(Cell::new(0));
        let many: Vec<_> = (0..KEPT + 5)
            .map(|i| slots.boxed(|| job(&drops, i as u32)))
            .collect();
        for f in many {
            slots.recycle(f);
        }
        assert_eq!(slots.kept(), KEPT);
        // Another layout neither takes a kept slot nor is kept.
        let other = slots.boxed(|| async { [7u8; 3000] });
        slots.recycle(other);
        assert_eq!(slots.kept(), KEPT);
        assert_eq!(drops.get(), KEPT as u32 + 5);
    }

    #[test]
    fn trim_frees_the_slots_not_needed_since_the_last_trim() {
        let slots = FutureSlots::default();
        let drops = Rc::new(Cell::new(0));
        let burst: Vec<_> = (0..10).map(|i| slots.boxed(|| job(&drops, i))).collect();
        for f in burst {
            slots.recycle(f);
        }
        slots.trim();
        assert_eq!(slots.kept(), 10, "the first trim only starts the count");
        // Three requests at a time since: seven slots were never needed.
        let three: Vec<_> = (0..3).map(|i| slots.boxed(|| job(&drops, i))).collect();
        for f in three {
            slots.recycle(f);
        }
        slots.trim();
        assert_eq!(slots.kept(), 3);
        // A quiet second gives back the rest.
        slots.trim();
        assert_eq!(slots.kept(), 0);
        let again = slots.boxed(|| job(&drops, 1));
        slots.recycle(again);
        assert_eq!((slots.kept(), drops.get()), (1, 14));
    }
}
