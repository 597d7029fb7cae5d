//! The one HTTP client of the forges: JSON requests with the token in a header, errors that name
//! the forge, method and path, and never the token.

use std::time::Duration;

use super::ForgeError;

/// Generous for one small JSON request; a hung forge must not hang a pipeline forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How the token is sent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth {
    /// `Authorization: Bearer TOKEN` (GitHub).
    Bearer,
    /// `PRIVATE-TOKEN: TOKEN` (GitLab personal, project and group access tokens).
    PrivateToken,
}

pub(crate) struct Client {
    pub forge: &'static str,
    api_base: String,
    token_env: String,
    token: String,
    auth: Auth,
    headers: &'static [(&'static str, &'static str)],
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("forge", &self.forge)
            .field("api_base", &self.api_base)
            .field("token_env", &self.token_env)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(
        forge: &'static str,
        api_base: &str,
        token_env: &str,
        token: String,
        auth: Auth,
        headers: &'static [(&'static str, &'static str)],
    ) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("webake/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            forge,
            api_base: api_base.trim_end_matches('/').to_string(),
            token_env: token_env.to_string(),
            token,
            auth,
            headers,
            agent: config.into(),
        }
    }

    /// Remove the token from any text that could reach an error.
    pub fn redact(&self, text: &str) -> String {
        if self.token.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.token, "***")
        }
    }

    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        value: serde_json::Value,
    ) -> Result<T, ForgeError> {
        serde_json::from_value(value).map_err(|e| ForgeError::Decode {
            forge: self.forge,
            method,
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    /// One request: `GET`, or `POST`/`PATCH`/`PUT` with a JSON body. The JSON answer (`Null`
    /// when empty), or a typed error.
    pub fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ForgeError> {
        let url = format!("{}{path}", self.api_base);
        tracing::debug!(forge = self.forge, method, %url, "forge request");
        let transport = |e: ureq::Error| ForgeError::Transport {
            forge: self.forge,
            method,
            path: path.to_string(),
            message: self.redact(&e.to_string()),
        };
        let (auth_name, auth_value) = match self.auth {
            Auth::Bearer => ("Authorization", format!("Bearer {}", self.token)),
            Auth::PrivateToken => ("PRIVATE-TOKEN", self.token.clone()),
        };
        macro_rules! with_headers {
            ($req:expr) => {{
                let mut req = $req.header(auth_name, &auth_value);
                for (name, value) in self.headers {
                    req = req.header(*name, *value);
                }
                req
            }};
        }
        let response = match (method, body) {
            ("GET", _) => with_headers!(self.agent.get(&url)).call(),
            ("POST", Some(b)) => with_headers!(self.agent.post(&url)).send_json(&b),
            ("PATCH", Some(b)) => with_headers!(self.agent.patch(&url)).send_json(&b),
            ("PUT", Some(b)) => with_headers!(self.agent.put(&url)).send_json(&b),
            _ => unreachable!("forge requests are GET, or POST/PATCH/PUT with a body"),
        };
        let mut response = response.map_err(transport)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(transport)?;
        if status == 401 || status == 403 && !text.contains("rate limit") {
            return Err(ForgeError::Auth {
                forge: self.forge,
                method,
                path: path.to_string(),
                status,
                env: self.token_env.clone(),
            });
        }
        if !(200..300).contains(&status) {
            return Err(ForgeError::Http {
                forge: self.forge,
                method,
                path: path.to_string(),
                status,
                message: self.redact(&error_message(&text)),
            });
        }
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| ForgeError::Decode {
            forge: self.forge,
            method,
            path: path.to_string(),
            message: e.to_string(),
        })
    }
}

/// The message of an error body: GitHub's `{"message", "errors": [...]}`, GitLab's
/// `{"message": "..." | [...] | {...}}` or `{"error": "..."}`; else the start of the text.
fn error_message(text: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return text.chars().take(500).collect();
    };
    let flat = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut message = match (value.get("message"), value.get("error")) {
        (Some(m), _) => flat(m),
        (None, Some(e)) => flat(e),
        (None, None) => text.chars().take(500).collect(),
    };
    if let Some(errors) = value.get("errors").and_then(|e| e.as_array())
        && !errors.is_empty()
    {
        let list: Vec<String> = errors.iter().map(|v| v.to_string()).collect();
        message = format!("{message} ({})", list.join("; "));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_both_forges() {
        assert_eq!(
            error_message(r#"{"message":"Validation Failed","errors":[{"code":"custom"}]}"#),
            r#"Validation Failed ({"code":"custom"})"#
        );
        assert_eq!(
            error_message(r#"{"message":["Another open merge request already exists"]}"#),
            r#"["Another open merge request already exists"]"#
        );
        assert_eq!(
            error_message(r#"{"error":"insufficient_scope"}"#),
            "insufficient_scope"
        );
        assert_eq!(error_message("<html>bad gateway"), "<html>bad gateway");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = Client::new(
            "GitHub",
            "http://127.0.0.1:1",
            "T",
            "sekrit-token".into(),
            Auth::Bearer,
            &[],
        );
        assert!(!format!("{c:?}").contains("sekrit"));
        assert_eq!(c.redact("x sekrit-token y"), "x *** y");
    }
}
