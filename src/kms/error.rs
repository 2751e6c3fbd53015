//! [`KmsError`]: what went wrong talking to a KMS, named the way AWS names it, and whether
//! trying again could help. Messages come from the KMS or from us; never key material.

/// A KMS failure. `message` texts are the server's (or ours) and never contain key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    #[error("KMS key not found (NotFoundException): {0}")]
    NotFound(String),
    #[error("KMS key is disabled (DisabledException): {0}")]
    Disabled(String),
    #[error("KMS key state does not allow this (KMSInvalidStateException): {0}")]
    InvalidState(String),
    #[error("ciphertext is invalid or its encryption context does not match (InvalidCiphertextException): {0}")]
    InvalidCiphertext(String),
    #[error("ciphertext was made under a different KMS key (IncorrectKeyException): {0}")]
    IncorrectKey(String),
    #[error("{} ({code}): {message}", denied_by(code))]
    AccessDenied { code: String, message: String },
    #[error("already exists (AlreadyExistsException): {0}")]
    AlreadyExists(String),
    #[error("KMS is throttling requests (ThrottlingException): {0}")]
    Throttled(String),
    #[error("KMS is unavailable ({code}): {message}")]
    Unavailable { code: String, message: String },
    #[error("KMS request timed out: {0}")]
    Timeout(String),
    #[error("KMS rejected the request ({code}): {message}")]
    Validation { code: String, message: String },
    #[error("unexpected answer from the KMS: {0}")]
    Protocol(String),
}

/// Who refused: the KMS, or the client that found no credentials to sign with
/// (`kms/credentials.rs`).
fn denied_by(code: &str) -> &'static str {
    match code {
        "NoCredentials" | "CredentialsError" => "no usable AWS credentials",
        "NoToken" => "no OpenBao token",
        "PermissionDenied" => "OpenBao refused the call",
        _ => "KMS refused the credentials or signature",
    }
}

impl KmsError {
    /// True when the same request may succeed later: throttling, server errors, timeouts
    /// and connection failures. Everything else will fail the same way again.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            KmsError::Throttled(_) | KmsError::Unavailable { .. } | KmsError::Timeout(_)
        )
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        KmsError::Validation {
            code: "ValidationException".into(),
            message: message.into(),
        }
    }

    pub(crate) fn serialization(message: impl Into<String>) -> Self {
        KmsError::Validation {
            code: "SerializationException".into(),
            message: message.into(),
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        KmsError::Unavailable {
            code: "KMSInternalException".into(),
            message: message.into(),
        }
    }

    /// The AWS error name (`__type`) for this error.
    pub fn aws_code(&self) -> &str {
        match self {
            KmsError::NotFound(_) => "NotFoundException",
            KmsError::Disabled(_) => "DisabledException",
            KmsError::InvalidState(_) => "KMSInvalidStateException",
            KmsError::InvalidCiphertext(_) => "InvalidCiphertextException",
            KmsError::IncorrectKey(_) => "IncorrectKeyException",
            KmsError::AlreadyExists(_) => "AlreadyExistsException",
            KmsError::Throttled(_) => "ThrottlingException",
            KmsError::Timeout(_) => "RequestTimeout",
            KmsError::Protocol(_) => "ProtocolError",
            KmsError::AccessDenied { code, .. }
            | KmsError::Unavailable { code, .. }
            | KmsError::Validation { code, .. } => code,
        }
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        match self {
            KmsError::NotFound(m)
            | KmsError::Disabled(m)
            | KmsError::InvalidState(m)
            | KmsError::InvalidCiphertext(m)
            | KmsError::IncorrectKey(m)
            | KmsError::AlreadyExists(m)
            | KmsError::Throttled(m)
            | KmsError::Timeout(m)
            | KmsError::Protocol(m) => m,
            KmsError::AccessDenied { message, .. }
            | KmsError::Unavailable { message, .. }
            | KmsError::Validation { message, .. } => message,
        }
    }

    /// The HTTP status AWS KMS answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            KmsError::Unavailable { .. } => 500,
            // AWS's common errors: only a missing token is 403; JSON services answer bad
            // or unknown credentials and signatures with 400.
            KmsError::AccessDenied { code, .. }
                if code == "MissingAuthenticationTokenException" =>
            {
                403
            }
            _ => 400,
        }
    }

    /// Classifies an AWS error answer. `code` may carry a `namespace#` prefix, which is
    /// dropped; unknown codes fall back on the HTTP status.
    pub fn from_aws(status: u16, code: &str, message: String) -> Self {
        let code = code.rsplit('#').next().unwrap_or(code);
        let code = code.split(':').next().unwrap_or(code).trim();
        match code {
            "NotFoundException" => KmsError::NotFound(message),
            "DisabledException" => KmsError::Disabled(message),
            "KMSInvalidStateException" => KmsError::InvalidState(message),
            "InvalidCiphertextException" => KmsError::InvalidCiphertext(message),
            "IncorrectKeyException" => KmsError::IncorrectKey(message),
            "AlreadyExistsException" => KmsError::AlreadyExists(message),
            "ThrottlingException" | "LimitExceededException" | "TooManyRequestsException" => {
                KmsError::Throttled(message)
            }
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignatureException"
            | "MissingAuthenticationTokenException"
            | "ExpiredTokenException"
            | "SignatureDoesNotMatch" => KmsError::AccessDenied {
                code: code.into(),
                message,
            },
            "KMSInternalException"
            | "DependencyTimeoutException"
            | "ServiceUnavailable"
            | "InternalFailure" => KmsError::Unavailable {
                code: code.into(),
                message,
            },
            _ if status >= 500 => KmsError::Unavailable {
                code: if code.is_empty() {
                    format!("HTTP {status}")
                } else {
                    code.into()
                },
                message,
            },
            "" => KmsError::Protocol(format!("HTTP {status} without an error name: {message}")),
            _ => KmsError::Validation {
                code: code.into(),
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_codes_round_trip_and_retryability() {
        for code in [
            "NotFoundException",
            "DisabledException",
            "KMSInvalidStateException",
            "InvalidCiphertextException",
            "IncorrectKeyException",
            "AlreadyExistsException",
            "ThrottlingException",
            "InvalidSignatureException",
            "ValidationException",
            "KMSInternalException",
        ] {
            let e = KmsError::from_aws(400, &format!("com.amazonaws.kms#{code}"), "m".into());
            assert_eq!(e.aws_code(), code);
            let retry = matches!(code, "ThrottlingException" | "KMSInternalException");
            assert_eq!(e.retryable(), retry, "{code}");
        }
        assert!(KmsError::from_aws(503, "", String::new()).retryable());
        assert!(!KmsError::from_aws(400, "", String::new()).retryable());
    }
}
