//! Connections to a cluster's PostgreSQL as its superuser: always TLS, without certificate
//! verification (Zalando's `sslmode=require`: Spilo's certificates are self-signed).
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("connecting to {host}/{database}: {source}")]
    Connect {
        host: String,
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Query(#[from] tokio_postgres::Error),
}

/// Accepts any server certificate, still checking the handshake signatures: encryption
/// without authentication of the server, as `sslmode=require`.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// Connects as `user` to `database` on `host`:5432; the connection runs in its own task
/// and ends when the client is dropped.
pub async fn connect(
    host: &str,
    user: &str,
    password: &str,
    database: &str,
) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = tokio_postgres::Config::new()
        .host(host)
        .port(5432)
        .user(user)
        .password(password)
        .dbname(database)
                .application_name("pgop")
        // Encrypted always (Spilo offers TLS), so a password never crosses the network in
        // the clear even if something else answers at a reused pod address.
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(10))
        // A master gone without closing the connection is noticed within a minute.
        .keepalives_idle(Duration::from_secs(20))
        .tcp_user_timeout(Duration::from_secs(60))
        // No statement of pgop's waits or runs forever, and failed ones (which may carry
        // password verifiers) are not written to the server's log.
        .options("-c statement_timeout=60000 -c lock_timeout=10000 -c log_min_error_statement=panic -c log_statement=none")
        .connect(tls())
        .await
        .map_err(|source| DbError::Connect {
            host: host.to_string(),
            database: database.to_string(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("database connection ended: {e}");
        }
    });
    Ok(client)
}
