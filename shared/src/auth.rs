//! Identity: Argon2id password hashes and signed, expiring bearer tokens (HS256, algorithm pinned).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::error::{AuthError, GatewayError};
use crate::ids::UserId;
use crate::secret::Secret;

const ISSUER: &str = "ai-gateway";
/// Seconds a token is still taken after its `exp`, for clocks a little apart.
const LEEWAY_SECS: u64 = 5;
/// Verified tokens remembered at most; past it the memory starts over.
const MAX_VERIFIED: usize = 4096;

/// Hashes a password with Argon2id (OWASP's parameters, the crate's defaults) and a random salt.
/// CPU-bound for tens of milliseconds: call it from a blocking task.
pub fn hash_password(password: &str) -> Result<String, GatewayError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| GatewayError::Internal(format!("hashing a password failed: {e}")))
}

/// Checks `password` against a stored PHC hash. Unparseable hashes never match.
pub fn verify_password(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Spends the same time as a real check when the email is unknown, so response times do not reveal
/// which emails have accounts.
pub fn verify_against_dummy(password: &str) {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    if let Some(hash) = DUMMY.get_or_init(|| hash_password(&uuid::Uuid::new_v4().to_string()).ok())
    {
        let _ = verify_password(password, hash);
    }
}

/// The claims inside an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub email: String,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
}

/// The caller, once their token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: UserId,
    pub email: String,
}

/// Issues and checks access tokens.
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    /// Tokens this process verified, by the whole token: a client sends the same token with every
    /// request, and once its signature, algorithm and issuer checked out only its expiry can
    /// change. Decoding and signing again cost more than the rest of a request's checks together.
    verified: Mutex<HashMap<String, Verified>>,
}

/// A token that checked out: whom it names, and until when.
struct Verified {
    caller: Caller,
    exp: u64,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl TokenIssuer {
    pub fn new(secret: &Secret, ttl: Duration) -> Result<TokenIssuer, ConfigError> {
        let invalid = |e: jsonwebtoken::errors::Error| ConfigError::Invalid {
            name: "JWT_SECRET",
            reason: e.to_string(),
        };
        // Only HS256 is accepted: a token claiming `none` or any other algorithm is refused before
        // its signature is even looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Ok(TokenIssuer {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()).map_err(invalid)?,
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()).map_err(invalid)?,
            validation,
            ttl,
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn issue(&self, user_id: &UserId, email: &str) -> Result<String, GatewayError> {
        let iat = unix_now();
        let claims = Claims {
            sub: user_id.to_string(),
            email: email.to_owned(),
            iss: ISSUER.to_owned(),
            iat,
            exp: iat + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| GatewayError::Internal(format!("signing a token failed: {e}")))
    }

    /// Checks signature, algorithm, issuer and expiry; a token verified before, only its expiry.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        self.verify_at(token, unix_now())
    }

    /// [`TokenIssuer::verify`] with the time (epoch seconds) remembered tokens are checked at.
    fn verify_at(&self, token: &str, now: u64) -> Result<Caller, AuthError> {
        {
            let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(known) = verified.get(token) {
                if known.exp.saturating_add(LEEWAY_SECS) >= now {
                    return Ok(known.caller.clone());
                }
                verified.remove(token);
                return Err(AuthError::ExpiredToken);
            }
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::ExpiredToken,
                _ => AuthError::InvalidToken,
            })?;
        let caller = Caller {
            user_id: UserId::from(data.claims.sub),
            email: data.claims.email,
        };
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        let known = Verified {
            caller: caller.clone(),
            exp: data.claims.exp,
        };
        verified.insert(token.to_owned(), known);
        Ok(caller)
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Signs arbitrary claims with this issuer's key; lets tests forge expired tokens.
    pub fn sign_claims(&self, claims: &Claims) -> Result<String, GatewayError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| GatewayError::Internal(format!("signing a token failed: {e}")))
    }
}

/// Reads `Authorization: Bearer <token>`.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::MissingToken)?
        .as_bytes();
    // What `HeaderValue::to_str` accepts (a header value holds no control character but tab),
    // checked a word at a time rather than byte by byte: a token is a few hundred bytes, and
    // `to_str` was 2.4K instructions of every authenticated request.
    if !value.is_ascii() {
        return Err(AuthError::InvalidToken);
    }
    let value = std::str::from_utf8(value).map_err(|_| AuthError::InvalidToken)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(AuthError::InvalidToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::InvalidToken);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(
            &Secret::new("0123456789abcdef0123456789abcdef"),
            Duration::from_secs(60),
        )
        .expect("valid secret")
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn issued_tokens_verify() {
        let issuer = issuer();
        let token = issuer.issue(&UserId::from("u1"), "a@b.c").expect("token");
        let caller = issuer.verify(&token).expect("valid");
        assert_eq!(caller.user_id, UserId::from("u1"));
    }

    #[test]
    fn tokens_signed_with_another_key_are_refused() {
        let other = TokenIssuer::new(
            &Secret::new("another-secret-another-secret-xx"),
            Duration::from_secs(60),
        )
        .expect("valid secret");
        let token = other.issue(&UserId::from("u1"), "a@b.c").expect("token");
        assert_eq!(issuer().verify(&token), Err(AuthError::InvalidToken));
    }

    #[test]
    fn alg_none_is_refused() {
        // GIVEN a token whose header says alg=none and whose signature is empty
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let claims = b64.encode(
            serde_json::to_vec(&Claims {
                sub: "u1".into(),
                email: "a@b.c".into(),
                iss: ISSUER.into(),
                iat: unix_now(),
                exp: unix_now() + 600,
            })
            .expect("json"),
        );
        // THEN it is refused
        assert_eq!(
            issuer().verify(&format!("{header}.{claims}.")),
            Err(AuthError::InvalidToken)
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let issuer = issuer();
        let token = issuer
            .sign_claims(&Claims {
                sub: "u1".into(),
                email: "a@b.c".into(),
                iss: ISSUER.into(),
                iat: 1,
                exp: 2,
            })
            .expect("token");
        assert_eq!(issuer.verify(&token), Err(AuthError::ExpiredToken));
    }

    fn claims_until(exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            email: "a@b.c".into(),
            iss: ISSUER.into(),
            iat: unix_now(),
            exp,
        }
    }

    #[test]
    fn a_remembered_token_still_expires() {
        // GIVEN a token valid for a minute, verified once (and so remembered)
        let issuer = issuer();
        let exp = unix_now() + 60;
        let token = issuer.sign_claims(&claims_until(exp)).expect("token");
        assert!(issuer.verify(&token).is_ok());
        // THEN it is taken up to the end of its leeway, and refused as expired after it
        assert!(issuer.verify_at(&token, exp + LEEWAY_SECS).is_ok());
        assert_eq!(
            issuer.verify_at(&token, exp + LEEWAY_SECS + 1),
            Err(AuthError::ExpiredToken)
        );
    }

    #[test]
    fn a_changed_copy_of_a_remembered_token_is_checked_in_full() {
        // GIVEN a verified token
        let issuer = issuer();
        let token = issuer
            .sign_claims(&claims_until(unix_now() + 60))
            .expect("token");
        assert!(issuer.verify(&token).is_ok());
        // WHEN its claims are swapped for another user's, its signature kept
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut other = claims_until(unix_now() + 60);
        other.sub = "u2".into();
        let forged_claims = b64.encode(serde_json::to_vec(&other).expect("json"));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        // THEN it is refused, as are its signature changed or a byte added
        assert_eq!(issuer.verify(&forged), Err(AuthError::InvalidToken));
        let signature = parts[2];
        let first = if signature.starts_with('A') { "B" } else { "A" };
        let resigned = format!("{}.{}.{first}{}", parts[0], parts[1], &signature[1..]);
        assert_eq!(issuer.verify(&resigned), Err(AuthError::InvalidToken));
        assert_eq!(
            issuer.verify(&format!("{token} ")),
            Err(AuthError::InvalidToken)
        );
    }

    #[test]
    fn the_memory_of_verified_tokens_is_bounded() {
        let issuer = issuer();
        for n in 0..=MAX_VERIFIED {
            let token = issuer
                .issue(&UserId::from(format!("u{n}")), "a@b.c")
                .expect("token");
            assert!(issuer.verify(&token).is_ok());
        }
        let remembered = issuer.verified.lock().expect("lock").len();
        assert!(remembered <= MAX_VERIFIED, "{remembered}");
    }

    #[test]
    fn bearer_header_parsing() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer_token(&headers), Err(AuthError::MissingToken));
        headers.insert("authorization", "Basic abc".parse().expect("header"));
        assert_eq!(bearer_token(&headers), Err(AuthError::InvalidToken));
        headers.insert("authorization", "bearer abc".parse().expect("header"));
        assert_eq!(bearer_token(&headers), Ok("abc"));
        headers.insert(
            "authorization",
            " Bearer \t abc \t".parse().expect("header"),
        );
        assert_eq!(bearer_token(&headers), Ok("abc"));
        for empty in ["Bearer", "Bearer ", "Bearer \t "] {
            headers.insert("authorization", empty.parse().expect("header"));
            assert_eq!(
                bearer_token(&headers),
                Err(AuthError::InvalidToken),
                "{empty:?}"
            );
        }
        // Bytes past ASCII (a header may carry them; a token never does) are refused here, UTF-8
        // or not.
        for bytes in [
            &b"Bearer t\xc3\xb6ken"[..],
            b"Bearer t\xffken",
            b"Bearer abc\xc2\xa0",
        ] {
            let value = http::HeaderValue::from_bytes(bytes).expect("a valid header value");
            headers.insert("authorization", value);
            assert_eq!(
                bearer_token(&headers),
                Err(AuthError::InvalidToken),
                "{bytes:?}"
            );
        }
    }
}
