//! Email by SMTP (`lettre`, tokio transport, no TLS stack built in).
//!
//! The `Message-ID` is derived from the delivery id, so a message re-sent
//! after a crash between the server's 250 and our bookkeeping is
//! recognisable as the same message.

use super::config::SmtpConfig;
use super::error::DeliveryError;
use super::policy::Delivery;
use super::template;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use schemas::{Classify, Fault};
use std::time::Duration;

/// The SMTP channel.
/// Why the SMTP channel cannot be set up: the configuration is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SmtpConfigError {
    #[error("notifications.smtp.from: {0}")]
    From(lettre::address::AddressError),
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
    pub fn new(c: &SmtpConfig, timeout: Duration) -> Result<Smtp, SmtpConfigError> {
        let from: Mailbox = c.from.parse().map_err(SmtpConfigError::From)?;
        // Plain SMTP (optionally authenticated): TLS is a relay's job here.
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host)
            .port(c.port)
            .timeout(Some(timeout));
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            b = b.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(Smtp {
            transport: b.build(),
            from,
        })
    }

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
            Err(e) if e.is_permanent() => Err(DeliveryError::permanent(format!("smtp: {e}"))),
            Err(e) => Err(DeliveryError::transient(format!("smtp: {e}"))),
        }
    }
}
