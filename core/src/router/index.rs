//! A per-virtual-host index that finds the first matching route without trying every route.
//!
//! Envoy tries routes in order and takes the first whose matchers all pass, so a request for
//! the last of 1,000 prefix routes pays for 1,000 failed prefix compares. The index keeps that
//! rule but only tries the routes whose path could match:
//!
//! - a byte trie over the literal paths of `prefix` and `path` routes (one for case-sensitive
//!   routes, one over the lower-cased literals of case-insensitive ones). Walking the request
//!   path down a trie passes exactly the nodes of the prefixes it starts with, and ends on the
//!   node of its own full path;
//! - `safe_regex` routes, which are always candidates (tried last, and only those before the
//!   best literal match).
//!
//! Each candidate list is ascending, the caller's full match (path, headers, query) decides, and
//! the smallest index that passes wins: the same answer as the in-order scan (the randomized
//! test in `router::tests` checks this against it). Each node also records the smallest route
//! index at or below it, so the walk stops once nothing deeper can beat the best found so far.

/// Route indices are `u32`: a virtual host of more than 4 billion routes is not a config.
type Idx = u32;

#[derive(Debug, Clone, Default)]
struct Node {
    /// (byte, child node), sorted by byte.
    edges: Box<[(u8, Idx)]>,
    /// Routes whose prefix ends here, ascending.
    prefix: Box<[Idx]>,
    /// Routes whose whole path is the string ending here, ascending.
    exact: Box<[Idx]>,
    /// The smallest route index at this node or below it (`Idx::MAX` when none).
    least: Idx,
}

/// Which literal a route's path matcher contributes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Literal<'a> {
    Prefix(&'a [u8]),
    Path(&'a [u8]),
    /// Not indexable (regex): always tried.
    Always,
}

/// The compiled index of one virtual host's routes.
#[derive(Debug, Clone, Default)]
pub(super) struct RouteIndex {
    /// Both tries' nodes; `roots` says where each starts.
    nodes: Box<[Node]>,
    /// Root of the case-sensitive trie and of the case-insensitive one (`Idx::MAX`: empty).
    roots: [Idx; 2],
    /// Regex routes, ascending.
    always: Box<[Idx]>,
}

/// Builder node: growable lists, frozen into a [`Node`].
#[derive(Default)]
struct Open {
    edges: Vec<(u8, Idx)>,
    prefix: Vec<Idx>,
    exact: Vec<Idx>,
}

impl RouteIndex {
    /// Builds the index from each route's literal and case sensitivity, in route order.
    /// Case-insensitive literals must already be lower-case (as the router compiles them).
    pub(super) fn build<'a>(routes: impl IntoIterator<Item = (Literal<'a>, bool)>) -> RouteIndex {
        let mut open: Vec<Open> = Vec::new();
        let mut roots = [Idx::MAX; 2];
        let mut always = Vec::new();
        for (i, (lit, case_sensitive)) in routes.into_iter().enumerate() {
            let i = Idx::try_from(i).expect("fewer than 2^32 routes");
            let (key, exact) = match lit {
                Literal::Prefix(p) => (p, false),
                Literal::Path(p) => (p, true),
                Literal::Always => {
                    always.push(i);
                    continue;
                }
            };
            let root = &mut roots[usize::from(!case_sensitive)];
            if *root == Idx::MAX {
                *root = open.len() as Idx;
                open.push(Open::default());
            }
            let mut n = *root as usize;
            for &b in key {
                n = match open[n].edges.iter().find(|e| e.0 == b) {
                    Some(e) => e.1 as usize,
                    None => {
                        let child = open.len();
                        open[n].edges.push((b, child as Idx));
                        open.push(Open::default());
                        child
                    }
                };
            }
            if exact {
                open[n].exact.push(i);
            } else {
                open[n].prefix.push(i);
            }
        }
        // Children always come after their parent, so one backward pass settles `least`.
        let mut nodes: Vec<Node> = open
            .into_iter()
            .map(|mut o| {
                o.edges.sort_unstable_by_key(|e| e.0);
                let own = [o.prefix.first(), o.exact.first()]
                    .into_iter()
                    .flatten()
                    .copied()
                    .min()
                    .unwrap_or(Idx::MAX);
                Node {
                    edges: o.edges.into(),
                    prefix: o.prefix.into(),
                    exact: o.exact.into(),
                    least: own,
                }
            })
            .collect();
        for n in (0..nodes.len()).rev() {
            let below = nodes[n]
                .edges
                .iter()
                .map(|e| nodes[e.1 as usize].least)
                .min()
                .unwrap_or(Idx::MAX);
            nodes[n].least = nodes[n].least.min(below);
        }
        RouteIndex {
            nodes: nodes.into(),
            roots,
            always: always.into(),
        }
    }

    /// The smallest route index for which `full_match` passes, trying only routes whose path
    /// could match `path` (the request path without its query).
    pub(super) fn first(
        &self,
        path: &[u8],
        mut full_match: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let mut best = Idx::MAX;
        for (t, &root) in self.roots.iter().enumerate() {
            if root == Idx::MAX {
                continue;
            }
            let fold = t == 1;
            let mut node = &self.nodes[root as usize];
            let mut depth = 0;
            while node.least < best {
                try_list(&node.prefix, &mut best, &mut full_match);
                let Some(&b) = path.get(depth) else {
                    try_list(&node.exact, &mut best, &mut full_match);
                    break;
                };
                let b = if fold { b.to_ascii_lowercase() } else { b };
                match node.edges.binary_search_by_key(&b, |e| e.0) {
                    Ok(e) => node = &self.nodes[node.edges[e].1 as usize],
                    Err(_) => break,
                }
                depth += 1;
            }
        }
        // Regex routes last: only those before the best literal match are run.
        try_list(&self.always, &mut best, &mut full_match);
        (best != Idx::MAX).then_some(best as usize)
    }
}

/// Tries an ascending candidate list: stops at the first that passes (it becomes `best`) or at
/// the first not below `best`.
#[inline(always)]
fn try_list(list: &[Idx], best: &mut Idx, full_match: &mut impl FnMut(usize) -> bool) {
    for &i in list {
        if i >= *best {
            break;
        }
        if full_match(i as usize) {
            *best = i;
            break;
        }
    }
}
