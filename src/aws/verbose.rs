//! `--verbose` for AWS calls: an SDK interceptor that reports each attempt of each call as one
//! debug line (service, operation, HTTP status, attempt).
//!
//! It reads only the operation's name and the answer's status: the SDK's requests carry `SigV4`
//! signatures and session tokens in their headers, and tokens and keys in their bodies, and
//! none of that is looked at here.

use aws_sdk_sts::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_sts::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;

use crate::report::DebugLog;

/// Reports every AWS call attempt to a [`DebugLog`].
#[derive(Debug)]
pub(crate) struct CallLog(pub(crate) DebugLog);

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "ecr-push call log"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.line(|| {
            let (service, operation) = cfg
                .load::<Metadata>()
                .map_or(("aws", "call"), |m| (m.service(), m.name()));
            let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
            let answer = context.response().map_or_else(
                || "no answer".to_owned(),
                |response| format!("HTTP {}", response.status().as_u16()),
            );
            format!("aws: {service}.{operation} -> {answer} (attempt {attempt})")
        });
        Ok(())
    }
}
