//! A define-by-run tape. A [`Var`] wraps a GPU tensor; every op on vars records its inputs and
//! a backward closure that owns what the op saved, right beside the forward call (see
//! `ops.rs`). [`Var::backward`] walks the recorded graph in reverse topological order,
//! accumulates gradients, and drops each closure, with its saved tensors, as soon as it ran.
//!
//! Parameters are leaf vars that require a gradient; their gradients accumulate in the var
//! until [`Var::zero_grad`]. Inside [`no_grad`] nothing is recorded.

mod attention;
mod ops;
pub use attention::AttentionPath;
pub use ops::WeightLayout;
mod params;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

pub use params::{ParamGroup, ParamStore};

use crate::error::Result;
use crate::ops::elementwise;
use crate::tensor::Tensor;

type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    inputs: Vec<Var>,
    backward: BackwardFn,
}

struct Inner {
    id: u64,
    value: Tensor,
    requires_grad: bool,
    grad: RefCell<Option<Tensor>>,
    node: RefCell<Option<Node>>,
}

/// A tensor on the tape. Cloning shares the var.
#[derive(Clone)]
pub struct Var(Rc<Inner>);

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Var#{}({:?}, requires_grad: {})",
            self.0.id, self.0.value, self.0.requires_grad
        )
    }
}

thread_local! {
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

fn next_id() -> u64 {
    NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    })
}

/// Returns whether ops record onto the tape on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// Runs `f` without recording: for evaluation, where no backward follows.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let previous = GRAD_ENABLED.with(|g| g.replace(false));
    let out = f();
    GRAD_ENABLED.with(|g| g.set(previous));
    out
}

impl Var {
    /// Wraps a constant: no gradient flows into it.
    pub fn constant(value: Tensor) -> Var {
        Var::leaf(value, false)
    }

    /// Wraps a leaf that receives a gradient, such as a parameter.
    pub fn parameter(value: Tensor) -> Var {
        Var::leaf(value, true)
    }

    fn leaf(value: Tensor, requires_grad: bool) -> Var {
        Var(Rc::new(Inner {
            id: next_id(),
            value,
            requires_grad,
            grad: RefCell::new(None),
            node: RefCell::new(None),
        }))
    }

    /// Records the result of an op. `backward` maps the output gradient to one gradient per
    /// input (`None` where an input takes none). Nothing is recorded when no input needs a
    /// gradient or recording is off.
    pub(crate) fn from_op(
        value: Tensor,
        inputs: &[&Var],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        let requires_grad = is_grad_enabled() && inputs.iter().any(|v| v.requires_grad());
        let node = requires_grad.then(|| Node {
            inputs: inputs.iter().map(|v| (*v).clone()).collect(),
            backward: Box::new(backward),
        });
        Var(Rc::new(Inner {
            id: next_id(),
            value,
            requires_grad,
            grad: RefCell::new(None),
            node: RefCell::new(node),
        }))
    }

    pub fn value(&self) -> &Tensor {
        &self.0.value
    }

    pub fn shape(&self) -> &[usize] {
        self.0.value.shape()
    }

    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// Returns the accumulated gradient of a leaf, if any.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.borrow().clone()
    }

    pub fn zero_grad(&self) {
        self.0.grad.borrow_mut().take();
    }

    /// Returns a constant with the same value, cut off from the tape.
    pub fn detach(&self) -> Var {
        Var::constant(self.0.value.clone())
    }

    /// Backpropagates from this scalar (a one-element var) with seed gradient 1.
    pub fn backward(&self) -> Result<()> {
        let seed = Tensor::full(self.shape(), 1.0);
        self.backward_with(seed)
    }

    /// Backpropagates from this var with the given output gradient.
    pub fn backward_with(&self, grad: Tensor) -> Result<()> {
        let order = self.topological_order();
        let mut grads: HashMap<u64, Tensor> = HashMap::new();
        grads.insert(self.0.id, grad);

        for var in order.iter().rev() {
            let Some(node) = var.0.node.borrow_mut().take() else {
                continue;
            };
            let Some(grad) = grads.remove(&var.0.id) else {
                // No gradient reached this var; its closure and saved tensors drop here.
                continue;
            };
            let input_grads = (node.backward)(&grad)?;
            debug_assert_eq!(input_grads.len(), node.inputs.len());
            for (input, g) in node.inputs.iter().zip(input_grads) {
                let Some(g) = g else { continue };
                if !input.requires_grad() {
                    continue;
                }
                if input.is_leaf() {
                    input.accumulate_grad(g)?;
                } else {
                    let total = match grads.remove(&input.0.id) {
                        Some(existing) => elementwise::add(&existing, &g)?,
                        None => g,
                    };
                    grads.insert(input.0.id, total);
                }
            }
        }
        // A leaf root (backward on a parameter itself) takes the seed.
        if self.is_leaf()
            && self.requires_grad()
            && let Some(g) = grads.remove(&self.0.id)
        {
            self.accumulate_grad(g)?;
        }
        Ok(())
    }

    fn is_leaf(&self) -> bool {
        self.0.node.borrow().is_none()
    }

    fn accumulate_grad(&self, g: Tensor) -> Result<()> {
        // Gradients may share a buffer with another input's gradient (the backward of `add`
        // hands the same tensor to both inputs), so accumulation never writes in place.
        let mut slot = self.0.grad.borrow_mut();
        let total = match slot.take() {
            Some(existing) => elementwise::add(&existing, &g)?,
            None => g,
        };
        *slot = Some(total);
        Ok(())
    }

    /// Vars reachable from this one through recorded nodes, each after all of its inputs.
    fn topological_order(&self) -> Vec<Var> {
        let mut order = Vec::new();
        let mut visited = std::collections::HashSet::new();
        // Iterative depth-first search: (var, inputs already pushed).
        let mut stack = vec![(self.clone(), false)];
        while let Some((var, expanded)) = stack.pop() {
            if expanded {
                order.push(var);
                continue;
            }
            if !visited.insert(var.0.id) {
                continue;
            }
            stack.push((var.clone(), true));
            if let Some(node) = var.0.node.borrow().as_ref() {
                for input in &node.inputs {
                    if input.requires_grad() && !visited.contains(&input.0.id) {
                        stack.push((input.clone(), false));
                    }
                }
            }
        }
        order
    }
}
