//! The executor that runs inside the container init, right before the workload:
//! sets the secret variables from their files ([`crate::secret_env`]), installs
//! the default seccomp filter, then executes the entrypoint.

use std::sync::Arc;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

use crate::{seccomp, secret_env};

/// Berth's executor: `DefaultExecutor` plus secret variables and the
/// seccomp filter.
#[derive(Clone, Debug)]
pub struct BerthExecutor {
    filter: Option<Arc<Vec<seccomp::Insn>>>,
}

impl BerthExecutor {
    /// An executor that installs the default filter when `seccomp` is true.
    pub fn new(seccomp: bool) -> Self {
        Self {
            filter: seccomp.then(|| Arc::new(seccomp::default_program())),
        }
    }
}

impl Executor for BerthExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // Read as the container's user, in its mount namespace; the values
        // exist only in this process's environment, which the workload
        // inherits (the init is single-threaded here).
        let secrets = secret_env::resolve(spec).map_err(|e| ExecutorError::Other(e.to_string()))?;
        for (name, value) in secrets {
            std::env::set_var(name, value);
        }
        if let Some(filter) = &self.filter {
            seccomp::install(filter).map_err(|e| {
                ExecutorError::Other(format!("cannot install the seccomp filter: {e}"))
            })?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
