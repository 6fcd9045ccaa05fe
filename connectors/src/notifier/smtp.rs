//! Email by SMTP (`lettre`, tokio transport): plain, STARTTLS or implicit
//! TLS (rustls), as `notifications.smtp.tls` says.
//!
//! The `Message-ID` is derived from the delivery id, so a message re-sent
//! after a crash between the server's 250 and our bookkeeping is
//! recognisable as the same message.

use super::config::{SmtpConfig, SmtpTls};
use super::error::DeliveryError;
use super::policy::Delivery;
use super::template;
use crate::tls::{TlsError, TlsFiles};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Identity, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use schemas::{Classify, Fault};
use std::time::Duration;

/// The SMTP channel.
/// Why the SMTP channel cannot be set up: the configuration is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SmtpConfigError {
    #[error("notifications.smtp.from: {0}")]
    From(lettre::address::AddressError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("notifications.smtp.tls: {0}")]
    TlsParameters(lettre::transport::smtp::Error),
}

impl Classify for SmtpConfigError {
    fn fault(&self) -> Fault {
        Fault::Config
    }
}

#[derive(Clone)]
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Smtp {
    /// The transport `c` describes; `tls` is `notifications.tls` (extra
    /// CA, client certificate).
    pub fn new(c: &SmtpConfig, tls: &TlsFiles, timeout: Duration) -> Result<Smtp, SmtpConfigError> {
        let from: Mailbox = c.from.parse().map_err(SmtpConfigError::From)?;
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host)
            .port(c.port)
            .timeout(Some(timeout));
        let mode = c.tls_mode();
        if mode != SmtpTls::None {
            crate::tls::install_provider();
            let params = tls_parameters(&c.host, tls).map_err(|e| match e {
                ParamsError::Files(e) => SmtpConfigError::Tls(e),
                ParamsError::Lettre(e) => SmtpConfigError::TlsParameters(e),
            })?;
            b = b.tls(match mode {
                SmtpTls::Implicit => Tls::Wrapper(params),
                _ => Tls::Required(params),
            });
        }
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            b = b.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(Smtp {
            transport: b.build(),
            from,
        })
    }
}

enum ParamsError {
    Files(TlsError),
    Lettre(lettre::transport::smtp::Error),
}

/// rustls parameters verifying `host` against the system roots plus
/// `tls.ca_file`, presenting `tls.cert_file` when set.
fn tls_parameters(host: &str, tls: &TlsFiles) -> Result<TlsParameters, ParamsError> {
    let loaded = tls.load("notifications.tls").map_err(ParamsError::Files)?;
    let mut p = TlsParameters::builder(host.to_owned());
    if let Some(ca) = &loaded.ca {
        p = p.add_root_certificate(Certificate::from_pem(ca).map_err(ParamsError::Lettre)?);
    }
    if let Some((cert, key)) = &loaded.identity {
        p = p.identify_with(Identity::from_pem(cert, key).map_err(ParamsError::Lettre)?);
    }
    p.build_rustls().map_err(ParamsError::Lettre)
}

impl Smtp {
    pub async fn send(&self, d: &Delivery, to: &str) -> Result<(), DeliveryError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| DeliveryError::permanent(format!("bad email address: {e}")))?;
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(template::subject(d))
            .message_id(Some(format!("<{}@inkstream>", d.id)))
            .multipart(MultiPart::alternative_plain_html(
                template::text(d),
                template::html(d),
            ))
            .map_err(|e| DeliveryError::permanent(format!("building the message: {e}")))?;
        match self.transport.send(msg).await {
            Ok(_) => Ok(()),
            // 5xx replies are permanent; 4xx replies, timeouts and
            // connection errors may pass.
            Err(e) if e.is_permanent() => Err(DeliveryError::permanent(smtp_reason(&e))),
            Err(e) => Err(DeliveryError::transient(smtp_reason(&e))),
        }
    }
}

/// What went wrong, without the server's reply text: a reply may quote the
/// recipient's address, and the reason is logged and dead-lettered.
fn smtp_reason(e: &lettre::transport::smtp::Error) -> String {
    let what = if e.is_tls() {
        "TLS failed (is the server's certificate trusted? notifications.tls.ca_file)"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_permanent() {
        "permanent error"
    } else if e.is_transient() {
        "transient error"
    } else if e.is_client() || e.is_response() {
        "protocol error"
    } else {
        "connection failed"
    };
    match e.status() {
        Some(code) => format!("smtp: {what} ({code})"),
        None => format!("smtp: {what}"),
    }
}
