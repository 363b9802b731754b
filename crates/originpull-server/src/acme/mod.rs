//! Certificates without a person (RFC 8555): every bucket domain that no configured
//! certificate covers gets one from `https.acme.directory_url`, through HTTP-01 challenges
//! answered on the plain listener ([`challenges`]). Orders run in the background, one domain
//! per certificate, one at a time; until a domain has its certificate its handshakes get the
//! default one. A certificate is renewed `renew_before_days` before it expires (at most a third
//! of its lifetime before, so short-lived certificates are not renewed in a loop), a little
//! earlier by a jitter taken from its serial number so a fleet's renewals spread out. A failed
//! order is retried with doubling backoff and jitter. Outcomes are counted in
//! `originpull_acme_orders_total{outcome}`; keys and certificates never reach a log.
//!
//! Account and certificates are kept in `state_dir`, or with `store.backend: s3` in the store
//! the fleet shares ([`state`]), read back at start; with the store, one node orders a domain
//! at a time (the store's lease), its HTTP-01 tokens are in the store so any node answers the
//! validation, and every node picks the certificate up from the store.

pub mod challenges;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Notify;

use challenges::challenge_name;
pub use challenges::Challenges;
use state::{AcmeState, StateDir};

use crate::edge::tls::certificate::{from_pem, now_secs};
use crate::edge::tls::{Certificates, LoadedCertificate};
use crate::live::reload::{Commit, ConfigHandle, GenerationPart};
use crate::metrics::METRICS;
use originpull_config::{AcmeSettings, Config, ConfigErrors};

/// Longest wait for one answer of the ACME server.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// Longest an order may take, validation and issuance included.
const ORDER_DEADLINE: Duration = Duration::from_secs(300);
/// How long the ACME server gets to validate the challenges, and then to issue.
const VALIDATION_WAIT: Duration = Duration::from_secs(90);
/// The first retry of a failed order; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// The service looks again at least this often (configuration changes wake it at once).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// While another node orders a domain, it is looked at again this often.
const OTHER_NODE_POLL: i64 = 5;

/// The background service that orders and renews certificates.
pub struct AcmeService {
    config: ConfigHandle,
    certificates: Arc<Certificates>,
    challenges: Arc<Challenges>,
    /// The store the fleet shares, when ACME keeps its state there; else `state_dir`.
    shared: Option<Arc<dyn AcmeState>>,
    wake: Arc<Notify>,
}

/// A domain's failed orders: how many in a row, and when to try again.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: i64,
}

/// Wakes the [`AcmeService`] with every new configuration generation (it may list new
/// domains, or drop a certificate that covered one).
#[derive(Default)]
pub struct AcmeWake(Arc<Notify>);

impl GenerationPart for AcmeWake {
    fn prepare(&self, _config: &Config) -> Result<Commit, ConfigErrors> {
        let wake = self.0.clone();
        Ok(Box::new(move || wake.notify_one()))
    }
}

impl AcmeService {
    pub fn new(
        config: ConfigHandle,
        certificates: Arc<Certificates>,
        challenges: Arc<Challenges>,
        shared: Option<Arc<dyn AcmeState>>,
        wake: &AcmeWake,
    ) -> AcmeService {
        AcmeService {
            config,
            certificates,
            challenges,
            shared,
            wake: wake.0.clone(),
        }
    }

    /// The bucket domains ACME is responsible for (those no configured certificate covers),
    /// each with its bucket.
    fn wanted_domains(&self) -> Vec<(String, String)> {
        let live = self.config.current();
        let mut domains: Vec<(String, String)> = live
            .routes
            .buckets()
            .flat_map(|bucket| {
                let name = &bucket.config.name;
                bucket
                    .config
                    .domains
                    .domains
                    .iter()
                    .map(move |domain| (domain.clone(), name.clone()))
            })
            .filter(|(domain, _)| !self.certificates.configured_covers(domain))
            .collect();
        domains.sort();
        domains
    }

    /// Where the state is: the shared store, else `state_dir`.
    fn state(&self, settings: &AcmeSettings) -> Result<Arc<dyn AcmeState>, String> {
        if let Some(shared) = &self.shared {
            return Ok(shared.clone());
        }
        let dir = settings
            .state_dir
            .as_deref()
            .ok_or("https.acme.state_dir is not set")?;
        StateDir::open(dir)
            .map(|dir| Arc::new(dir) as Arc<dyn AcmeState>)
            .map_err(|e| format!("https.acme.state_dir {}: cannot use it: {e}", dir.display()))
    }

    /// One pass: reads kept certificates, orders what is missing or due; returns how long to
    /// sleep until the next thing is due.
    async fn pass(
        &self,
        settings: &AcmeSettings,
        session: &mut AcmeSession,
        obtained: &mut HashMap<String, Arc<LoadedCertificate>>,
    ) -> Duration {
        let state = match self.state(settings) {
            Ok(state) => state,
            Err(why) => {
                log::error!("ACME: {why}");
                return FIRST_BACKOFF;
            }
        };
        let now = now_secs();
        let mut next = now + MAX_SLEEP.as_secs() as i64;
        for (domain, bucket) in self.wanted_domains() {
            let due_at = |cert: Option<&Arc<LoadedCertificate>>| {
                cert.map_or(now, |cert| renewal_time(cert, settings.renew_before_days))
            };
            if due_at(obtained.get(&domain)) <= now {
                // Kept from an earlier run, or obtained by another node of the fleet.
                if let Some(kept) = kept_certificate(state.as_ref(), &bucket, &domain).await {
                    self.adopt(obtained, &domain, kept);
                }
            }
            let mut due = due_at(obtained.get(&domain));
            if let Some(backoff) = session.backoff.get(&domain) {
                due = due.max(backoff.until);
            }
            if due > now {
                next = next.min(due);
                continue;
            }
            let claim = match state.claim(&bucket, &domain).await {
                Ok(Some(claim)) => claim,
                Ok(None) => {
                    // Another node orders it; its certificate is read from the store.
                    next = next.min(now + OTHER_NODE_POLL);
                    continue;
                }
                Err(why) => {
                    log::warn!("ACME: cannot claim the order of {domain} in the store: {why}");
                    next = next.min(now + FIRST_BACKOFF.as_secs() as i64);
                    continue;
                }
            };
            if state.shared() {
                // It may have just finished on the node that held the claim before.
                if let Some(kept) = kept_certificate(state.as_ref(), &bucket, &domain).await {
                    self.adopt(obtained, &domain, kept);
                    let due = due_at(obtained.get(&domain));
                    if due > now {
                        next = next.min(due);
                        continue;
                    }
                }
            }
            let renewing = obtained.contains_key(&domain);
            let order = self.order(settings, session, state.as_ref(), &bucket, &domain);
            let outcome = match tokio::time::timeout(ORDER_DEADLINE, order).await {
                Ok(result) => result,
                Err(_) => Err("the order took longer than 5 minutes".to_string()),
            };
            drop(claim);
            match outcome {
                Ok(cert) => {
                    log::info!(
                        "ACME: certificate for {domain} {} (serial {}, expires {})",
                        if renewing { "renewed" } else { "issued" },
                        cert.serial,
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH
                                + Duration::from_secs(cert.not_after.max(0) as u64)
                        )
                    );
                    let outcome = if renewing { "renewed" } else { "issued" };
                    METRICS.acme_orders.with_label_values(&[outcome]).inc();
                    session.backoff.remove(&domain);
                    next = next.min(renewal_time(&cert, settings.renew_before_days));
                    obtained.insert(domain.clone(), Arc::new(cert));
                    self.publish(obtained);
                }
                Err(why) => {
                    METRICS.acme_orders.with_label_values(&["failed"]).inc();
                    let failures = session.backoff.get(&domain).map_or(0, |b| b.failures) + 1;
                    let wait = backoff_delay(failures);
                    log::error!(
                        "ACME: ordering a certificate for {domain} failed (attempt {failures}): \
                         {why}; next attempt in {}s",
                        wait.as_secs()
                    );
                    let until = now_secs() + wait.as_secs() as i64;
                    session
                        .backoff
                        .insert(domain.clone(), Backoff { failures, until });
                    next = next.min(until);
                }
            }
        }
        Duration::from_secs((next - now_secs()).clamp(1, MAX_SLEEP.as_secs() as i64) as u64)
    }

    /// Serves `kept` for `domain` unless the same certificate is served already.
    fn adopt(
        &self,
        obtained: &mut HashMap<String, Arc<LoadedCertificate>>,
        domain: &str,
        kept: Arc<LoadedCertificate>,
    ) {
        if obtained.get(domain).map(|c| &c.serial) != Some(&kept.serial) {
            obtained.insert(domain.to_string(), kept);
            self.publish(obtained);
        }
    }

    fn publish(&self, obtained: &HashMap<String, Arc<LoadedCertificate>>) {
        let mut certs: Vec<_> = obtained.iter().collect();
        certs.sort_by(|a, b| a.0.cmp(b.0));
        self.certificates
            .set_obtained(certs.into_iter().map(|(_, c)| c.clone()).collect());
    }

    /// One order for `domain`: the account, the HTTP-01 challenges, the certificate.
    async fn order(
        &self,
        settings: &AcmeSettings,
        session: &mut AcmeSession,
        state: &dyn AcmeState,
        bucket: &str,
        domain: &str,
    ) -> Result<LoadedCertificate, String> {
        let account = session.account(settings, state, bucket).await?;
        let identifiers = [Identifier::Dns(domain.to_string())];
        let mut order = deadline(account.new_order(&NewOrder::new(&identifiers)))
            .await?
            .map_err(|e| format!("new order: {e}"))?;
        let mut pending = PendingChallenges {
            table: &self.challenges,
            tokens: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = deadline(authorizations.next()).await? {
            let mut authorization = authorization.map_err(|e| format!("authorization: {e}"))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or("the ACME server offers no http-01 challenge")?;
            let token = challenge.token.clone();
            let key_authorization = challenge.key_authorization().as_str().to_string();
            pending.table.insert(&token, &key_authorization);
            pending.tokens.push(token.clone());
            if state.shared() {
                // The ACME server may ask any node of the fleet.
                state
                    .write(
                        bucket,
                        &challenge_name(&token),
                        Bytes::from(key_authorization),
                    )
                    .await
                    .map_err(|e| format!("cannot share the challenge in the store: {e}"))?;
            }
            deadline(challenge.set_ready())
                .await?
                .map_err(|e| format!("challenge ready: {e}"))?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(VALIDATION_WAIT);
        let status = order.poll_ready(&retries).await;
        if state.shared() {
            for token in &pending.tokens {
                let _ = state.remove(bucket, &challenge_name(token)).await;
            }
        }
        drop(pending);
        let status = status.map_err(|e| format!("validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("the order is {status:?} after validation"));
        }
        let key_pem = deadline(order.finalize())
            .await?
            .map_err(|e| format!("finalize: {e}"))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        let cert = from_pem(&chain_pem, &key_pem, now_secs())
            .map_err(|e| format!("the issued certificate is unusable: {e}"))?;
        // The key first: a chain is never read without its key.
        state
            .write(bucket, &format!("{domain}.key"), Bytes::from(key_pem))
            .await
            .and(
                state
                    .write(bucket, &format!("{domain}.pem"), Bytes::from(chain_pem))
                    .await,
            )
            .map_err(|e| format!("cannot keep the certificate: {e}"))?;
        Ok(cert)
    }
}

/// The accounts (by bucket: a shared store keeps one with each bucket), created on first use
/// and kept in the state; and the backoff of failing domains.
#[derive(Default)]
struct AcmeSession {
    accounts: HashMap<(String, String), Account>,
    backoff: HashMap<String, Backoff>,
}

impl AcmeSession {
    async fn account(
        &mut self,
        settings: &AcmeSettings,
        state: &dyn AcmeState,
        bucket: &str,
    ) -> Result<Account, String> {
        let cache_key = (settings.directory_url.clone(), bucket.to_string());
        if let Some(account) = self.accounts.get(&cache_key) {
            return Ok(account.clone());
        }
        let builder = || match &settings.ca_file {
            Some(ca) => Account::builder_with_root(ca)
                .map_err(|e| format!("https.acme.ca_file {}: {e}", ca.display())),
            None => Account::builder().map_err(|e| format!("ACME client: {e}")),
        };
        let directory = state.read(bucket, "directory_url").await?;
        let kept = match directory {
            Some(url) if url.as_ref() == settings.directory_url.as_bytes() => state
                .read(bucket, "account.json")
                .await?
                .and_then(|json| serde_json::from_slice(&json).ok()),
            _ => None,
        };
        let account = match kept {
            Some(credentials) => deadline(builder()?.from_credentials(credentials))
                .await?
                .map_err(|e| format!("account: {e}"))?,
            None => {
                let contact: Vec<&str> = settings.contact.as_deref().into_iter().collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) =
                    deadline(builder()?.create(&new, settings.directory_url.clone(), None))
                        .await?
                        .map_err(|e| format!("new account: {e}"))?;
                let json = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
                state
                    .write(bucket, "account.json", Bytes::from(json))
                    .await
                    .map_err(|e| format!("cannot keep the account: {e}"))?;
                state
                    .write(
                        bucket,
                        "directory_url",
                        Bytes::from(settings.directory_url.clone()),
                    )
                    .await
                    .map_err(|e| format!("cannot keep the account: {e}"))?;
                log::info!("ACME: account created at {}", settings.directory_url);
                account
            }
        };
        self.accounts.insert(cache_key, account.clone());
        Ok(account)
    }
}

/// The challenges of one order, removed from the table whatever way the order ends.
struct PendingChallenges<'a> {
    table: &'a Challenges,
    tokens: Vec<String>,
}

impl Drop for PendingChallenges<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.table.remove(token);
        }
    }
}

async fn deadline<T>(future: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(REQUEST_DEADLINE, future)
        .await
        .map_err(|_| format!("no answer within {}s", REQUEST_DEADLINE.as_secs()))
}

/// The certificate kept in `state` for `domain`, if it is still usable.
async fn kept_certificate(
    state: &dyn AcmeState,
    bucket: &str,
    domain: &str,
) -> Option<Arc<LoadedCertificate>> {
    let chain = state.read(bucket, &format!("{domain}.pem")).await.ok()??;
    let key = state.read(bucket, &format!("{domain}.key")).await.ok()??;
    let text = |bytes: &Bytes| String::from_utf8_lossy(bytes).into_owned();
    match from_pem(&text(&chain), &text(&key), now_secs()) {
        Ok(cert) => Some(Arc::new(cert)),
        Err(why) => {
            log::warn!("ACME: the certificate kept for {domain} is not used: {why}");
            None
        }
    }
}

/// When `cert` is renewed: `renew_before_days` before it expires, but no earlier than two
/// thirds into its lifetime, less a jitter of up to a tenth of its lifetime (at most an hour)
/// drawn from its serial number.
fn renewal_time(cert: &LoadedCertificate, renew_before_days: u64) -> i64 {
    let lifetime = (cert.not_after - cert.not_before).max(1);
    let before = (renew_before_days as i64 * 86_400).min(lifetime / 3);
    let window = (lifetime / 10).clamp(1, 3600);
    let seed = cert
        .serial
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    cert.not_after - before - (seed % window as u64) as i64
}

/// The wait after the `failures`-th failed order in a row: doubling from [`FIRST_BACKOFF`] up
/// to [`MAX_BACKOFF`], plus up to half of it at random.
fn backoff_delay(failures: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    base + base.mul_f64(rand::random::<f64>() / 2.0)
}

#[async_trait::async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut session = AcmeSession::default();
        let mut obtained = HashMap::new();
        loop {
            let settings = self
                .config
                .current()
                .config
                .https
                .as_ref()
                .and_then(|https| https.acme.clone());
            let sleep = match settings {
                Some(settings) => self.pass(&settings, &mut session, &mut obtained).await,
                None => MAX_SLEEP,
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(sleep) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_bounded_by_a_third_of_the_lifetime() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        let now = now_secs();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let made = params.self_signed(&key).unwrap();
        let long = from_pem(&made.pem(), &key.serialize_pem(), now).unwrap();
        let at = renewal_time(&long, 30);
        assert!(at <= long.not_after - 30 * 86_400 && at >= long.not_after - 30 * 86_400 - 3600);
        assert!(backoff_delay(1) >= FIRST_BACKOFF && backoff_delay(1) <= FIRST_BACKOFF * 3 / 2);
        assert!(backoff_delay(40) <= MAX_BACKOFF * 3 / 2);
    }
}
