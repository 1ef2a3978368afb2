//! Parameters by canonical name: listing, host copies, gradients, and replacement, through
//! burn's module visitor and mapper (which report module paths as they descend).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

/// Maps a burn module path to a canonical parameter name.
pub type Namer = fn(&[String]) -> String;

/// A tensor copied to the host: canonical name, shape, little-endian `f32` data.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub data: TensorData,
}

#[cfg(target_endian = "big")]
compile_error!("tensor bytes are hashed as stored; this engine supports little-endian hosts only");

impl HostTensor {
    /// Copy `t` to the host under `name`.
    pub fn from_tensor<B: Backend, const D: usize>(name: String, t: Tensor<B, D>) -> Self {
        let shape = t.dims().iter().map(|&d| d as u64).collect();
        HostTensor {
            name,
            shape,
            data: t.into_data(),
        }
    }

    /// Raw canonical bytes (little-endian `f32`).
    pub fn bytes(&self) -> &[u8] {
        self.data.as_bytes()
    }

    /// Element count.
    pub fn len(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }

    /// True for a tensor without elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
}

struct Lister<'a> {
    path: PathStack,
    namer: Namer,
    out: &'a mut Vec<(String, Vec<usize>)>,
}

impl<B: Backend> ModuleVisitor<B> for Lister<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out
            .push(((self.namer)(&self.path.0), param.val().dims().to_vec()));
    }
}

/// Canonical names and shapes of all float parameters, in visit order.
pub fn list<B: Backend, M: Module<B>>(module: &M, namer: Namer) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    module.visit(&mut Lister {
        path: PathStack::default(),
        namer,
        out: &mut out,
    });
    out
}

struct Copier<'a> {
    path: PathStack,
    namer: Namer,
    keep: &'a dyn Fn(&str) -> bool,
    out: &'a mut Vec<HostTensor>,
}

impl<B: Backend> ModuleVisitor<B> for Copier<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = (self.namer)(&self.path.0);
        if (self.keep)(&name) {
            self.out.push(HostTensor::from_tensor(name, param.val()));
        }
    }
}

/// Host copies of the float parameters whose canonical name `keep` accepts, in visit order
/// (the others are not copied: a frozen base stays where it is).
pub fn to_host<B: Backend, M: Module<B>>(
    module: &M,
    namer: Namer,
    keep: &dyn Fn(&str) -> bool,
) -> Vec<HostTensor> {
    let mut out = Vec::new();
    module.visit(&mut Copier {
        path: PathStack::default(),
        namer,
        keep,
        out: &mut out,
    });
    out
}

struct GradReader<'a, B: AutodiffBackend> {
    path: PathStack,
    namer: Namer,
    grads: &'a B::Gradients,
    out: Vec<(String, Option<Tensor<B::InnerBackend, 1>>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradReader<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let grad = param.val().grad(self.grads).map(|g| {
            let n = g.dims().iter().product::<usize>();
            g.reshape([n])
        });
        self.out.push(((self.namer)(&self.path.0), grad));
    }
}

/// The gradient of every float parameter, flattened, in visit order; `None` for a parameter
/// the loss does not depend on.
pub fn gradients<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
    namer: Namer,
) -> Vec<(String, Option<Tensor<B::InnerBackend, 1>>)> {
    let mut reader = GradReader::<B> {
        path: PathStack::default(),
        namer,
        grads,
        out: Vec::new(),
    };
    module.visit(&mut reader);
    reader.out
}

struct Replacer<'a, F> {
    path: PathStack,
    namer: Namer,
    trainable: &'a dyn Fn(&str) -> bool,
    f: F,
}

impl<B, F> ModuleMapper<B> for Replacer<'_, F>
where
    B: AutodiffBackend,
    F: FnMut(&str, Tensor<B::InnerBackend, 1>) -> Tensor<B::InnerBackend, 1>,
{
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = (self.namer)(&self.path.0);
        let (id, tensor, mapper) = param.consume();
        let inner = tensor.inner();
        let dims = inner.dims();
        let n = dims.iter().product::<usize>();
        let new = Tensor::from_inner((self.f)(&name, inner.reshape([n])).reshape(dims));
        let new = if (self.trainable)(&name) {
            new.require_grad()
        } else {
            new
        };
        Param::from_mapped_value(id, new, mapper)
    }
}

/// Replace every float parameter by `f(canonical name, current value flattened)`, reshaped
/// back; the result is a fresh leaf, which requires gradients when `trainable(name)`.
pub fn replace<B, M, F>(module: M, namer: Namer, trainable: &dyn Fn(&str) -> bool, f: F) -> M
where
    B: AutodiffBackend,
    M: Module<B>,
    F: FnMut(&str, Tensor<B::InnerBackend, 1>) -> Tensor<B::InnerBackend, 1>,
{
    module.map(&mut Replacer {
        path: PathStack::default(),
        namer,
        trainable,
        f,
    })
}
