//! HTTP plumbing of the runner's own: the name resolver of its HTTP
//! clients.

use std::net::IpAddr;
use std::sync::mpsc;

/// A ureq agent whose name lookups never panic. ureq's own resolver runs
/// each lookup that has a timeout on a `std::thread::spawn` thread, which
/// panics when the OS refuses a thread (a task limit), taking the
/// scheduler or a request with it. Here an IP literal needs no lookup at
/// all; a name is looked up on a thread of ours when one can be had
/// (bounded by the timeout), else on the caller's.
pub fn client(config: ureq::config::Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        Resolver,
    )
}

#[derive(Debug)]
struct Resolver;

impl ureq::unversioned::resolver::Resolver for Resolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        use ureq::unversioned::resolver::DefaultResolver;
        use ureq::unversioned::transport::time::Duration as UreqDuration;
        let mut now = timeout;
        now.after = UreqDuration::NotHappening;
        let literal = uri.host().is_some_and(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok()
        });
        if literal || timeout.after.is_not_happening() {
            // Without a deadline ureq's resolver looks up on this thread.
            return DefaultResolver::default().resolve(uri, config, now);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let (uri2, config2) = (uri.clone(), config.clone());
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                let _ = tx.send(DefaultResolver::default().resolve(&uri2, &config2, now));
            });
        if spawned.is_err() {
            return DefaultResolver::default().resolve(uri, config, now);
        }
        match rx.recv_timeout(*timeout.after) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ureq::Error::Timeout(timeout.reason)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ureq::Error::HostNotFound),
        }
    }
}
