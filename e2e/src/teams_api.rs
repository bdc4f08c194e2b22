//! A small teams API on loopback, shaped like the one Zalando's operator asks for team
//! members: `GET /teams/<team>` with `Authorization: Bearer <token>` answers
//! `{"id": "<team>", "member": [...]}`; a wrong token gets 401, an unknown team 404.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Clone)]
pub struct TeamsApi {
    pub url: String,
    teams: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
    /// Requests served, as "METHOD PATH".
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl TeamsApi {
    pub async fn start(token: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let api = Self {
            url,
            teams: Arc::default(),
            requests: Arc::default(),
        };
        let (teams, requests, token) = (api.teams.clone(), api.requests.clone(), token.to_string());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (teams, requests, token) = (teams.clone(), requests.clone(), token.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &teams, &requests, &token).await;
                });
            }
        });
        Ok(api)
    }

    pub fn set_members(&self, team: &str, members: &[&str]) {
        self.teams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(team.into(), members.iter().map(|m| m.to_string()).collect());
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    teams: &Mutex<BTreeMap<String, Vec<String>>>,
    requests: &Mutex<Vec<String>>,
    token: &str,
) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization")
                && value.trim() == format!("Bearer {token}")
            {
                authorized = true;
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{method} {path}"));
    let team = path.trim_start_matches("/teams/").trim_matches('/');
    let members = teams
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(team)
        .cloned();
    let (status, body) = match (authorized, members) {
        (false, _) => (
            "401 Unauthorized",
            r#"{"error":"unauthorized"}"#.to_string(),
        ),
        (true, None) => ("404 Not Found", r#"{"error":"no such team"}"#.to_string()),
        (true, Some(members)) => (
            "200 OK",
            serde_json::json!({"id": team, "id_name": team, "member": members}).to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = reader.into_inner();
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}
