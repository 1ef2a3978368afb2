//! Data-parallel training over several processes (`specs/determinism.md` §5.6, micro-batches).
//!
//! Every worker holds the whole model and optimizer state and draws the same batch. Worker `r` of
//! `N` computes the gradients of parts `r·P/N .. (r+1)·P/N` of the step's `P` micro-batches,
//! sums them into the subtrees of the fixed reduction tree that its block covers, and the workers
//! exchange those sums (an all-gather: values are copied, never added by the library); each then
//! finishes the same tree and applies the same update. The result is the bits of one process
//! computing all `P` parts, for every `N` that divides `P`. Only the first worker writes the run.

use std::collections::BTreeMap;

/// The exchange between the workers of a data-parallel run.
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This worker's index, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of workers.
    fn size(&self) -> usize;
    /// Every worker's `mine` (lengths may differ), in worker order, on every worker.
    fn all_gather(&self, mine: &[f32]) -> Vec<Vec<f32>>;
    /// Wait until every worker has called this.
    fn barrier(&self);
}

/// A node of the reduction tree over parts `0..P`: `(level, index)` covers parts
/// `index·2^level .. (index+1)·2^level` (clipped to `P`).
pub type Node = (u32, u64);

/// The nodes a block of parts `start .. start + leaves.len()` contributes, each with its sum:
/// from left to right, the largest aligned subtree that starts where the previous one ended and
/// ends within the block. Summing them with [`combine`] gives the bits of [`combine`] over the
/// leaves themselves.
pub fn block_nodes(start: u64, leaves: Vec<Vec<f32>>) -> Vec<(Node, Vec<f32>)> {
    let end = start + leaves.len() as u64;
    let mut leaves = leaves.into_iter();
    let mut out = vec![];
    let mut at = start;
    while at < end {
        let mut level = 0u32;
        while level < 63 && at.is_multiple_of(2u64 << level) && at + (2u64 << level) <= end {
            level += 1;
        }
        let width = 1u64 << level;
        let part: Vec<Vec<f32>> = leaves.by_ref().take(width as usize).collect();
        let leaf_nodes = part
            .into_iter()
            .enumerate()
            .map(|(i, v)| ((0, at + i as u64), v))
            .collect();
        out.push(((level, at >> level), combine(leaf_nodes, width, at)));
        at += width;
    }
    out
}

/// The sum of the tree's nodes `nodes` (disjoint, together covering parts `offset .. offset +
/// count`): the subtree over those parts, each node `left + right`, element-wise in `f32`; a node
/// whose right half holds no part is its left half. Empty input: an empty vector.
pub fn combine(nodes: Vec<(Node, Vec<f32>)>, count: u64, offset: u64) -> Vec<f32> {
    let mut given: BTreeMap<Node, Vec<f32>> = nodes.into_iter().collect();
    if count == 0 {
        return vec![];
    }
    let mut top = 0u32;
    while (1u64 << top) < count {
        top += 1;
    }
    fn node(given: &mut BTreeMap<Node, Vec<f32>>, level: u32, index: u64) -> Option<Vec<f32>> {
        if let Some(v) = given.remove(&(level, index)) {
            return Some(v);
        }
        if level == 0 {
            return None;
        }
        let left = node(given, level - 1, 2 * index);
        let right = node(given, level - 1, 2 * index + 1);
        match (left, right) {
            (Some(mut l), Some(r)) => {
                for (a, b) in l.iter_mut().zip(&r) {
                    *a += b;
                }
                Some(l)
            }
            (l, None) => l,
            (None, r) => r,
        }
    }
    node(&mut given, top, offset >> top).unwrap_or_default()
}

/// Workers started by an MPI launcher (`mpirun -n N`, Slurm's `srun` with an MPI plugin):
/// MPI's `MPI_Allgatherv` on the world communicator.
#[cfg(feature = "mpi")]
pub struct Mpi {
    _universe: mpi::environment::Universe,
}

#[cfg(feature = "mpi")]
impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi({} of {})", self.rank(), self.size())
    }
}

#[cfg(feature = "mpi")]
impl Mpi {
    /// Initialise MPI (once per process; calls may come from any thread, one at a time).
    pub fn init() -> Option<Mpi> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized)?;
        Some(Mpi {
            _universe: universe,
        })
    }
}

#[cfg(feature = "mpi")]
impl Collective for Mpi {
    fn rank(&self) -> usize {
        use mpi::traits::Communicator;
        mpi::topology::SimpleCommunicator::world().rank() as usize
    }

    fn size(&self) -> usize {
        use mpi::traits::Communicator;
        mpi::topology::SimpleCommunicator::world().size() as usize
    }

    fn all_gather(&self, mine: &[f32]) -> Vec<Vec<f32>> {
        use mpi::datatype::PartitionMut;
        use mpi::traits::{Communicator, CommunicatorCollectives};
        let world = mpi::topology::SimpleCommunicator::world();
        let n = world.size() as usize;
        let mut counts = vec![0i32; n];
        world.all_gather_into(&(mine.len() as i32), &mut counts[..]);
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |at, &c| {
                let d = *at;
                *at += c;
                Some(d)
            })
            .collect();
        let total: i32 = counts.iter().sum();
        let mut all = vec![0f32; total as usize];
        {
            let mut partition = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            world.all_gather_varcount_into(mine, &mut partition);
        }
        counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec())
            .collect()
    }

    fn barrier(&self) {
        use mpi::traits::CommunicatorCollectives;
        mpi::topology::SimpleCommunicator::world().barrier();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|j| {
                (0..4)
                    .map(|i| ((j * 5 + i * 11) as f32).cos() * 10f32.powi((j % 3) as i32 * 4))
                    .collect()
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn every_division_of_the_parts_among_workers_gives_the_same_sum() {
        for parts in 1..=12usize {
            let all = leaves(parts);
            let whole = combine(
                all.iter()
                    .enumerate()
                    .map(|(j, v)| ((0, j as u64), v.clone()))
                    .collect(),
                parts as u64,
                0,
            );
            for workers in (1..=parts).filter(|w| parts.is_multiple_of(*w)) {
                let block = parts / workers;
                let nodes: Vec<(Node, Vec<f32>)> = (0..workers)
                    .flat_map(|r| {
                        block_nodes((r * block) as u64, all[r * block..(r + 1) * block].to_vec())
                    })
                    .collect();
                let sum = combine(nodes, parts as u64, 0);
                assert_eq!(bits(&sum), bits(&whole), "{parts} parts, {workers} workers");
            }
        }
    }

    #[test]
    fn an_aligned_block_is_one_node_and_others_split_into_aligned_subtrees() {
        let nodes: Vec<Node> = block_nodes(4, leaves(4))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(nodes, vec![(2, 1)]);
        let nodes: Vec<Node> = block_nodes(3, leaves(6))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(nodes, vec![(0, 3), (2, 1), (0, 8)]);
    }
}
