//! Candidate sampling for one user: negatives the user has not seen, drawn from a pool of items.
//!
//! Items are dense indices (`u32`). A user's draws come only from its own stream (`rng`), its
//! history and the sampler's configuration, so they do not depend on batching or threads.
//! Uniform draws reject seen items while most of the pool is unseen and otherwise draw from the
//! list of unseen items; popularity draws use Vose's alias table (O(1) a draw) with rejection,
//! falling back to exact weighted sampling without replacement (Efraimidis–Spirakis keys) when
//! rejection keeps failing. Items with zero weight are never drawn.

use crate::rng::Rng;

/// Vose's alias table over positive weights.
#[derive(Debug, Clone)]
pub struct AliasTable {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl AliasTable {
    /// Builds the table; `weights` are finite, positive and at least one.
    pub fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Leftovers are 1 up to rounding.
        AliasTable { prob, alias }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let i = rng.below(self.prob.len() as u64) as usize;
        if rng.unit() < self.prob[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

/// A set of item indices with O(1) insert and test; cleared item by item after each user.
#[derive(Debug, Clone)]
pub struct Marks {
    words: Vec<u64>,
}

impl Marks {
    pub fn new(n_items: usize) -> Self {
        Marks {
            words: vec![0; n_items.div_ceil(64)],
        }
    }

    /// Marks `item`; true if it was not marked before.
    pub fn insert(&mut self, item: u32) -> bool {
        let (word, bit) = ((item / 64) as usize, 1u64 << (item % 64));
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        fresh
    }

    pub fn contains(&self, item: u32) -> bool {
        self.words[(item / 64) as usize] & (1u64 << (item % 64)) != 0
    }

    pub fn remove(&mut self, item: u32) {
        self.words[(item / 64) as usize] &= !(1u64 << (item % 64));
    }
}

/// How negatives are drawn.
#[derive(Debug, Clone)]
pub enum Strategy {
    Uniform,
    /// Weight per pool position (e.g. interaction count raised to a smoothing exponent).
    Popularity(AliasTable),
}

/// Draws candidates from a fixed pool of items.
#[derive(Debug, Clone)]
pub struct Sampler {
    pool: Vec<u32>,
    in_pool: Marks,
    strategy: Strategy,
    weights: Vec<f64>,
}

/// What one user asks for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The user's history in time order; every item in it counts as seen.
    pub history: &'a [u32],
    /// Further seen items (e.g. another domain's history).
    pub also_seen: &'a [u32],
    /// Candidates from an upstream retriever: kept first, in order, without repeats.
    pub provided: Option<&'a [u32]>,
    /// Candidates wanted in all.
    pub count: usize,
    /// Evaluation: hold the last history item out and place it among the candidates.
    pub hold_out_last: bool,
}

/// What one user gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Drawn {
    pub candidates: Vec<u32>,
    /// The held-out item and its position among the candidates (evaluation).
    pub held_out: Option<(u32, usize)>,
    /// Fewer unseen items existed than were asked for.
    pub short: bool,
}

impl Drawn {
    /// The `order`-th of `orders` balanced presentation orders: the drawn list shifted cyclically
    /// right by `order * len / orders` places. Order 0 is the drawn list; with `orders == len`
    /// every candidate stands at every position exactly once over the orders.
    pub fn rotate(&mut self, order: usize, orders: usize) {
        let len = self.candidates.len();
        if len == 0 || orders <= 1 {
            return;
        }
        let shift = order % orders * len / orders;
        self.candidates.rotate_right(shift);
        if let Some((_, position)) = &mut self.held_out {
            *position = (*position + shift) % len;
        }
    }
}

impl Sampler {
    /// A sampler over `pool`; `weights` (one per pool item) select popularity sampling, and
    /// pool items of zero weight are dropped. `n_items` bounds every item index.
    pub fn new(pool: Vec<u32>, weights: Option<Vec<f64>>, n_items: usize) -> Self {
        let (pool, weights, strategy) = match weights {
            None => (pool, Vec::new(), Strategy::Uniform),
            Some(weights) => {
                let (pool, weights): (Vec<u32>, Vec<f64>) = pool
                    .into_iter()
                    .zip(weights)
                    .filter(|&(_, w)| w > 0.0)
                    .unzip();
                let alias = AliasTable::new(&weights);
                (pool, weights, Strategy::Popularity(alias))
            }
        };
        let mut in_pool = Marks::new(n_items);
        for &item in &pool {
            in_pool.insert(item);
        }
        Sampler {
            pool,
            in_pool,
            strategy,
            weights,
        }
    }

    /// Draws one user's candidates; `marks` is scratch space, left empty.
    pub fn draw(&self, request: &Request<'_>, rng: &mut Rng, marks: &mut Marks) -> Drawn {
        let held_out = if request.hold_out_last {
            request.history.last().copied()
        } else {
            None
        };
        let mut excluded_in_pool = 0;
        for &item in request.history.iter().chain(request.also_seen) {
            if marks.insert(item) && self.in_pool.contains(item) {
                excluded_in_pool += 1;
            }
        }
        let wanted = request
            .count
            .saturating_sub(usize::from(held_out.is_some()));
        let mut candidates = Vec::with_capacity(request.count);
        for &item in request.provided.unwrap_or_default() {
            if candidates.len() == wanted {
                break;
            }
            if Some(item) == held_out || candidates.contains(&item) {
                continue;
            }
            candidates.push(item);
            if marks.insert(item) && self.in_pool.contains(item) {
                excluded_in_pool += 1;
            }
        }
        let needed = wanted - candidates.len();
        let available = self.pool.len() - excluded_in_pool;
        let short = needed > available;
        if needed > 0 {
            self.draw_unmarked(
                needed.min(available),
                available,
                rng,
                marks,
                &mut candidates,
            );
        }
        // Leave the scratch marks empty for the next user.
        for &item in request.history.iter().chain(request.also_seen) {
            marks.remove(item);
        }
        for &item in &candidates {
            marks.remove(item);
        }
        let held_out = held_out.map(|item| {
            let position = rng.below(candidates.len() as u64 + 1) as usize;
            candidates.insert(position, item);
            (item, position)
        });
        Drawn {
            candidates,
            held_out,
            short,
        }
    }

    /// Appends `needed` distinct unmarked pool items (`needed <= available`), marking them.
    fn draw_unmarked(
        &self,
        needed: usize,
        available: usize,
        rng: &mut Rng,
        marks: &mut Marks,
        out: &mut Vec<u32>,
    ) {
        match &self.strategy {
            Strategy::Uniform if 2 * available >= self.pool.len() => {
                let target = out.len() + needed;
                while out.len() < target {
                    let item = self.pool[rng.below(self.pool.len() as u64) as usize];
                    if marks.insert(item) {
                        out.push(item);
                    }
                }
            }
            Strategy::Uniform => {
                let mut unseen = self.unmarked(marks);
                for i in 0..needed {
                    let j = i + rng.below((unseen.len() - i) as u64) as usize;
                    unseen.swap(i, j);
                    marks.insert(unseen[i]);
                    out.push(unseen[i]);
                }
            }
            Strategy::Popularity(alias) => {
                let start = out.len();
                let mut attempts = 64 * needed + 64;
                while out.len() - start < needed && attempts > 0 {
                    attempts -= 1;
                    let item = self.pool[alias.sample(rng)];
                    if marks.insert(item) {
                        out.push(item);
                    }
                }
                let missing = needed - (out.len() - start);
                if missing > 0 {
                    self.weighted_without_replacement(missing, rng, marks, out);
                }
            }
        }
    }

    /// Efraimidis–Spirakis: the `k` unmarked pool items with the largest `ln(u) / w` keys.
    fn weighted_without_replacement(
        &self,
        k: usize,
        rng: &mut Rng,
        marks: &mut Marks,
        out: &mut Vec<u32>,
    ) {
        let mut keyed: Vec<(f64, u32)> = self
            .pool
            .iter()
            .zip(&self.weights)
            .filter(|(&item, _)| !marks.contains(item))
            .map(|(&item, &w)| ((1.0 - rng.unit()).ln() / w, item))
            .collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, item) in keyed.iter().take(k) {
            marks.insert(item);
            out.push(item);
        }
    }

    fn unmarked(&self, marks: &Marks) -> Vec<u32> {
        self.pool
            .iter()
            .copied()
            .filter(|&item| !marks.contains(item))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(history: &[u32], count: usize) -> Request<'_> {
        Request {
            history,
            also_seen: &[],
            provided: None,
            count,
            hold_out_last: false,
        }
    }

    fn uniform(n: u32) -> Sampler {
        Sampler::new((0..n).collect(), None, n as usize)
    }

    fn draw(sampler: &Sampler, request: &Request<'_>, seed: u64) -> Drawn {
        let mut marks = Marks::new(1000);
        let drawn = sampler.draw(request, &mut Rng::from_seed(seed), &mut marks);
        assert!(
            marks.words.iter().all(|&w| w == 0),
            "scratch marks left behind"
        );
        drawn
    }

    #[test]
    fn golden_uniform_draw() {
        let drawn = draw(&uniform(100), &request(&[3, 5, 7], 5), 11);
        assert_eq!(drawn.candidates, GOLDEN_UNIFORM);
        assert!(!drawn.short);
    }

    const GOLDEN_UNIFORM: [u32; 5] = [85, 80, 96, 60, 26];

    #[test]
    fn negatives_are_unseen_and_distinct() {
        for (n, history_len) in [(50u32, 5u32), (50, 40), (1000, 900)] {
            let history: Vec<u32> = (0..history_len).map(|i| (i * 7) % n).collect();
            for seed in 0..50 {
                let drawn = draw(&uniform(n), &request(&history, 10), seed);
                assert_eq!(drawn.candidates.len(), 10);
                let mut sorted = drawn.candidates.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), 10);
                assert!(drawn.candidates.iter().all(|c| !history.contains(c)));
            }
        }
    }

    #[test]
    fn too_few_unseen_items_gives_what_exists_and_a_flag() {
        let history: Vec<u32> = (0..17).collect();
        let drawn = draw(&uniform(20), &request(&history, 10), 1);
        let mut got = drawn.candidates.clone();
        got.sort_unstable();
        assert_eq!(got, vec![17, 18, 19]);
        assert!(drawn.short);
    }

    #[test]
    fn provided_candidates_pass_through_then_top_up_or_truncate() {
        let sampler = uniform(100);
        let provided = [9, 3, 9, 42];
        let mut req = request(&[3, 5], 6);
        req.provided = Some(&provided);
        let drawn = draw(&sampler, &req, 2);
        // A provided item passes even if seen; repeats are dropped; the rest is sampled.
        assert_eq!(&drawn.candidates[..3], &[9, 3, 42]);
        assert!(drawn.candidates[3..]
            .iter()
            .all(|c| ![3, 5, 9, 42].contains(c)));
        req.count = 2;
        assert_eq!(draw(&sampler, &req, 2).candidates, vec![9, 3]);
    }

    #[test]
    fn held_out_item_is_placed_among_negatives() {
        let history = [4, 8, 15, 16];
        let mut req = request(&history, 10);
        req.hold_out_last = true;
        let mut positions = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let drawn = draw(&uniform(500), &req, seed);
            let (item, position) = drawn.held_out.unwrap();
            assert_eq!(item, 16);
            assert_eq!(drawn.candidates.len(), 10);
            assert_eq!(drawn.candidates[position], 16);
            assert_eq!(drawn.candidates.iter().filter(|&&c| c == 16).count(), 1);
            positions.insert(position);
        }
        assert_eq!(positions.len(), 10, "every position is reachable");
    }

    #[test]
    fn orders_put_every_candidate_at_every_position_once() {
        let history = [4, 8, 15, 16];
        let mut req = request(&history, 6);
        req.hold_out_last = true;
        let drawn = draw(&uniform(500), &req, 3);
        let mut seen = vec![std::collections::BTreeSet::new(); 6];
        for order in 0..6 {
            let mut rotated = drawn.clone();
            rotated.rotate(order, 6);
            let (item, position) = rotated.held_out.unwrap();
            assert_eq!(rotated.candidates[position], item);
            for (position, &item) in rotated.candidates.iter().enumerate() {
                assert!(seen[position].insert(item), "{item} twice at {position}");
            }
        }
        assert!(seen.iter().all(|items| items.len() == 6));
        let mut first = drawn.clone();
        first.rotate(0, 3);
        assert_eq!(first, drawn, "order 0 is the drawn list");
    }

    #[test]
    fn fewer_orders_spread_the_shifts_evenly() {
        let mut drawn = Drawn {
            candidates: (0..10).collect(),
            held_out: Some((0, 0)),
            short: false,
        };
        let starts: Vec<u32> = (0..3)
            .map(|order| {
                let mut rotated = drawn.clone();
                rotated.rotate(order, 3);
                rotated.held_out.unwrap().1 as u32
            })
            .collect();
        assert_eq!(starts, vec![0, 3, 6]);
        drawn.rotate(1, 1);
        assert_eq!(
            drawn.candidates,
            (0..10).collect::<Vec<_>>(),
            "one order: as drawn"
        );
    }

    #[test]
    fn same_seed_same_draw() {
        let sampler = uniform(300);
        let history: Vec<u32> = (0..30).collect();
        assert_eq!(
            draw(&sampler, &request(&history, 20), 5),
            draw(&sampler, &request(&history, 20), 5)
        );
        assert_ne!(
            draw(&sampler, &request(&history, 20), 5),
            draw(&sampler, &request(&history, 20), 6)
        );
    }

    #[test]
    fn pool_restricts_draws_and_zero_weights_never_come() {
        // Pool = even items; item 10 has zero weight.
        let pool: Vec<u32> = (0..20).step_by(2).collect();
        let weights: Vec<f64> = pool
            .iter()
            .map(|&i| if i == 10 { 0.0 } else { 1.0 })
            .collect();
        let sampler = Sampler::new(pool, Some(weights), 20);
        for seed in 0..100 {
            let drawn = draw(&sampler, &request(&[0, 1], 8), seed);
            assert!(drawn
                .candidates
                .iter()
                .all(|c| c % 2 == 0 && *c != 10 && *c != 0));
            assert_eq!(drawn.candidates.len(), 8);
            assert!(!drawn.short);
        }
        let drawn = draw(&sampler, &request(&[0, 1], 9), 0);
        assert!(drawn.short);
        assert_eq!(drawn.candidates.len(), 8);
    }

    #[test]
    fn popularity_follows_the_weights() {
        let weights = vec![1.0, 2.0, 3.0, 4.0];
        let sampler = Sampler::new((0..4).collect(), Some(weights), 4);
        let mut counts = [0u32; 4];
        for seed in 0..20_000 {
            let drawn = draw(&sampler, &request(&[], 1), seed);
            counts[drawn.candidates[0] as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let expected = 20_000.0 * (i + 1) as f64 / 10.0;
            assert!(
                (f64::from(c) - expected).abs() < 0.05 * expected,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn popularity_falls_back_when_rejection_keeps_failing() {
        // Item 0 carries almost all the weight and is seen: rejection alone would stall.
        let mut weights = vec![1e-9; 50];
        weights[0] = 1e9;
        let sampler = Sampler::new((0..50).collect(), Some(weights), 50);
        let drawn = draw(&sampler, &request(&[0], 49), 3);
        let mut got = drawn.candidates.clone();
        got.sort_unstable();
        assert_eq!(got, (1..50).collect::<Vec<u32>>());
    }

    #[test]
    fn alias_table_reproduces_distribution() {
        let table = AliasTable::new(&[5.0, 1.0, 0.5, 3.5]);
        let mut rng = Rng::from_seed(1);
        let mut counts = [0u32; 4];
        for _ in 0..100_000 {
            counts[table.sample(&mut rng)] += 1;
        }
        for (c, w) in counts.iter().zip([5.0, 1.0, 0.5, 3.5]) {
            let expected = 100_000.0 * w / 10.0;
            assert!(
                (f64::from(*c) - expected).abs() < 0.03 * expected,
                "{counts:?}"
            );
        }
    }
}
