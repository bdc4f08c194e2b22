//! The teams API client (Zalando's `pkg/util/teams/teams.go`): `GET {teams_api_url}/teams/{team}`
//! with the OAuth bearer token, bounded in time and size. What the answer means for roles
//! is decided in `pure::roles::teams`.
use std::collections::BTreeSet;
use std::time::Duration;

use crate::pure::roles::teams::{parse_team, Team, TeamsError};

/// How long one teams API request may take (connect, answer and body), by default.
pub const TEAMS_API_TIMEOUT: Duration = Duration::from_secs(10);
/// A larger answer is refused (a team is a few hundred names at most).
const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// How much of an error answer's message is kept.
const MAX_MESSAGE_CHARS: usize = 200;

/// The members of `team`, de-duplicated in the API's order; empty when the API does not
/// know the team (404, as Zalando). Times out after [`TEAMS_API_TIMEOUT`].
pub async fn team_members(
    http: &reqwest::Client,
    teams_api_url: &str,
    token: &str,
    team: &str,
) -> Result<Vec<String>, TeamsError> {
    team_members_with_timeout(http, teams_api_url, token, team, TEAMS_API_TIMEOUT).await
}

/// [`team_members`] with another timeout.
pub async fn team_members_with_timeout(
    http: &reqwest::Client,
    teams_api_url: &str,
    token: &str,
    team: &str,
    timeout: Duration,
) -> Result<Vec<String>, TeamsError> {
    match team_info(http, teams_api_url, token, team, timeout).await {
        Ok(info) => {
            let mut seen = BTreeSet::new();
            Ok(info
                .members
                .into_iter()
                .filter(|m| !m.is_empty() && seen.insert(m.clone()))
                .collect())
        }
        Err(TeamsError::Status { status: 404, .. }) => {
            tracing::warn!(
                team,
                "the teams API does not know the team; it has no member roles"
            );
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// The team as the API describes it; any answer but 200 is an error (404 too).
pub async fn team_info(
    http: &reqwest::Client,
    teams_api_url: &str,
    token: &str,
    team: &str,
    timeout: Duration,
) -> Result<Team, TeamsError> {
    let url = team_url(teams_api_url, team)?;
    let shown = url.to_string();
    let request = async {
        let response = http
            .get(url)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| request_error(&shown, e))?;
        let status = response.status();
        let body = read_body(response, &shown).await?;
        Ok::<_, TeamsError>((status, body))
    };
    let (status, body) =
        tokio::time::timeout(timeout, request)
            .await
            .map_err(|_| TeamsError::Timeout {
                url: shown.clone(),
                timeout,
            })??;
    if status != reqwest::StatusCode::OK {
        return Err(TeamsError::Status {
            url: shown,
            status: status.as_u16(),
            message: error_message(&body),
        });
    }
    parse_team(&body).map_err(|reason| TeamsError::Parse { url: shown, reason })
}

/// `{teams_api_url}/teams/{team}` as Zalando builds it (trailing `/` trimmed); the team id
/// is one path segment.
pub fn team_url(teams_api_url: &str, team: &str) -> Result<reqwest::Url, TeamsError> {
    if team.is_empty() {
        return Err(TeamsError::NoTeam);
    }
    let invalid = |reason: String| TeamsError::InvalidUrl {
        url: teams_api_url.to_string(),
        reason,
    };
    let base = teams_api_url.trim().trim_end_matches('/');
    let mut url = reqwest::Url::parse(base).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    url.path_segments_mut()
        .map_err(|()| invalid("cannot be a base URL".into()))?
        .pop_if_empty()
        .push("teams")
        .push(team);
    Ok(url)
}

fn request_error(url: &str, error: reqwest::Error) -> TeamsError {
    let error = error.without_url();
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    TeamsError::Request {
        url: url.to_string(),
        reason,
    }
}

async fn read_body(mut response: reqwest::Response, url: &str) -> Result<Vec<u8>, TeamsError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| request_error(url, e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(TeamsError::Parse {
                url: url.to_string(),
                reason: format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The `error` field of an error answer (a JSON object), shortened.
fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = match value.get("error")? {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Some(message.chars().take(MAX_MESSAGE_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    // ---- the teams API client -------------------------------------------------------

    const TOKEN: &str = "s3cr3t-t0ken";

    /// Serves one request with `status` and `body` after `delay`; the handle yields the
    /// request's head lines (request line first).
    async fn serve_once(
        status: u16,
        body: &'static str,
        delay: Duration,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            tokio::time::sleep(delay).await;
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            String::from_utf8_lossy(&head)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        });
        (url, handle)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
        head.iter().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    #[tokio::test]
    async fn asks_zalandos_url_with_the_bearer_token() {
        let body = r#"{"dn": "cn=100100,ou=official", "id": "acid", "id_name": "acid",
            "team_id": "111222", "type": "official", "name": "Acid team name",
            "alias": ["acid"], "mail": ["email1@example.com"],
            "member": ["member1", "member2", "member3", "member1", ""],
            "cost_center": "00099999", "delivery_lead": "member4",
            "infrastructure-accounts": [{"id": "1234512345", "name": "acid", "provider": "aws"}]}"#;
        let (url, server) = serve_once(200, body, Duration::ZERO).await;
        let members = team_members(&client(), &format!("{url}/api/"), TOKEN, "acid")
            .await
            .unwrap();
        assert_eq!(members, strings(&["member1", "member2", "member3"]));
        let head = server.await.unwrap();
        assert_eq!(head[0], "GET /api/teams/acid HTTP/1.1");
        assert_eq!(header(&head, "authorization"), Some("Bearer s3cr3t-t0ken"));
        assert_eq!(header(&head, "accept"), Some("application/json"));
    }

    #[tokio::test]
    async fn answers() {
        type Expect = Result<Vec<&'static str>, &'static str>;
        let cases: Vec<(u16, &'static str, Expect)> = vec![
            (200, r#"{"id": "acid", "member": []}"#, Ok(vec![])),
            (200, r#"{"id": "acid", "member": null}"#, Ok(vec![])),
            (200, r#"{"id": "acid"}"#, Ok(vec![])),
            (
                200,
                r#"{"id": "acid", "members": ["a", "b"]}"#,
                Ok(vec!["a", "b"]),
            ),
            (200, r#"{"member": ["a"], "members": ["b"]}"#, Ok(vec!["a"])),
            (200, r#"["a", "b", "a"]"#, Ok(vec!["a", "b"])),
            // An unknown team has no members.
            (404, r#"{"error": "no such team"}"#, Ok(vec![])),
            (404, "not json", Ok(vec![])),
            // Zalando's teams_test.go cases.
            (
                401,
                r#"{"error": "Access Token not valid"}"#,
                Err("failed with status code 401 and message: \"Access Token not valid\""),
            ),
            (
                418,
                r#"{"status": "I'm a teapot'"}"#,
                Err("failed with status code 418"),
            ),
            (
                418,
                r#"{"status": "I'm a teapot"#,
                Err("failed with status code 418"),
            ),
            (200, r#"{"status": "I'm a teapot"#, Err("could not parse")),
            (
                500,
                r#"{"error": "boom"}"#,
                Err("failed with status code 500 and message: \"boom\""),
            ),
            (503, "", Err("failed with status code 503")),
            (200, r#"{"member": "alice"}"#, Err("member is not a list")),
            (200, r#"{"member": ["alice", 7]}"#, Err("other than a name")),
            (200, r#""alice""#, Err("expected a JSON object")),
        ];
        for (status, body, expected) in cases {
            let (url, server) = serve_once(status, body, Duration::ZERO).await;
            let result = team_members(&client(), &url, TOKEN, "acid").await;
            server.await.unwrap();
            match (result, expected) {
                (Ok(members), Ok(want)) => assert_eq!(members, strings(&want), "{body}"),
                (Err(error), Err(want)) => {
                    let shown = error.to_string();
                    assert!(shown.contains(want), "{body}: {shown}");
                    assert!(shown.contains(&format!("{url}/teams/acid")), "{shown}");
                    assert!(!format!("{shown} {error:?}").contains(TOKEN));
                }
                (got, want) => panic!("{status} {body}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_500_is_an_error_with_its_status() {
        let (url, server) = serve_once(500, r#"{"error": "boom"}"#, Duration::ZERO).await;
        let error = team_members(&client(), &url, TOKEN, "acid")
            .await
            .unwrap_err();
        server.await.unwrap();
        match error {
            TeamsError::Status {
                status, message, ..
            } => {
                assert_eq!(status, 500);
                assert_eq!(message.as_deref(), Some("boom"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_slow_api_times_out() {
        let (url, server) = serve_once(200, r#"{"member": []}"#, Duration::from_secs(30)).await;
        let started = std::time::Instant::now();
        let error =
            team_members_with_timeout(&client(), &url, TOKEN, "acid", Duration::from_millis(200))
                .await
                .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            matches!(error, TeamsError::Timeout { timeout, .. } if timeout == Duration::from_millis(200)),
            "{error:?}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn unreachable_api_and_bad_urls() {
        // A port nobody listens on.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let error = team_members(&client(), &url, TOKEN, "acid")
            .await
            .unwrap_err();
        assert!(matches!(error, TeamsError::Request { .. }), "{error:?}");
        assert!(!error.to_string().contains(TOKEN));

        for url in [
            "coffee://localhost/",
            "http://[::1/",
            "not a url",
            "mailto:x@y",
        ] {
            let error = team_members(&client(), url, TOKEN, "acid")
                .await
                .unwrap_err();
            assert!(
                matches!(error, TeamsError::InvalidUrl { .. }),
                "{url}: {error:?}"
            );
        }
        let error = team_members(&client(), "http://localhost", TOKEN, "")
            .await
            .unwrap_err();
        assert!(matches!(error, TeamsError::NoTeam), "{error:?}");
    }

    #[test]
    fn urls() {
        let cases = [
            (
                "https://teams.example.com/api/",
                "acid",
                "https://teams.example.com/api/teams/acid",
            ),
            (
                "https://teams.example.com/api//",
                "acid",
                "https://teams.example.com/api/teams/acid",
            ),
            (
                "http://fake-teams-api.default.svc.cluster.local",
                "acid",
                "http://fake-teams-api.default.svc.cluster.local/teams/acid",
            ),
            (
                "http://127.0.0.1:8080/",
                "a/b c",
                "http://127.0.0.1:8080/teams/a%2Fb%20c",
            ),
        ];
        for (base, team, expected) in cases {
            assert_eq!(team_url(base, team).unwrap().as_str(), expected);
        }
    }
}
