//! What every AWS stage shares: the client settings and one way to run an async call to
//! completion, stopping when the command is cancelled.

use std::future::Future;
use std::time::Duration;

use crate::{Context, Error, Result};

/// AWS client settings: the endpoint override of the settings (tests point it at moto), else
/// the SDK's own (`AWS_ENDPOINT_URL`, profile, ...).
pub fn client_settings(ctx: &Context<'_>) -> webake_aws::ClientSettings {
    webake_aws::ClientSettings {
        endpoint_url: ctx.settings.aws_endpoint.clone(),
        ..webake_aws::ClientSettings::default()
    }
}

/// Run `fut` on a fresh runtime; a cancellation of the context drops it (the libraries record
/// what they created before every await, see webake-aws's ledger) and returns `Interrupted`.
pub fn block_on<T, E>(ctx: &Context<'_>, fut: impl Future<Output = Result<T, E>>) -> Result<T>
where
    E: Into<Error>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("the async runtime", e))?;
    let cancel = ctx.cancel.clone();
    rt.block_on(async {
        tokio::select! {
            r = fut => r.map_err(Into::into),
            _ = async {
                while !(cancel.is_cancelled() || webake_sys::cancel::signalled()) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            } => Err(Error::Interrupted),
        }
    })
}
