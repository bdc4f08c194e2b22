//! Reading a `postgresql` object the watcher passed on as JSON. What the API server accepts
//! in the schemaless parts may still not be a valid manifest: the error then names the
//! field but never repeats its value, which could be a password.
use pgop_common::crd::Postgresql;

pub fn parse(json: &[u8]) -> Result<Postgresql, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", without_value(&e.inner().to_string()))
    })
}

/// serde's messages quote the offending value (`invalid type: string "s3cr3t", expected
/// i64`); keep what is wrong and what was expected.
fn without_value(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    for kind in [
        "invalid type",
        "invalid value",
        "unknown variant",
        "unknown field",
    ] {
        if message.starts_with(kind) {
            return match message.find(", expected ") {
                Some(i) => format!("{kind}{}", &message[i..]),
                None => kind.to_string(),
            };
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(spec_extra: &str) -> Vec<u8> {
        format!(
            r#"{{"apiVersion":"acid.zalan.do/v1","kind":"postgresql",
                "metadata":{{"name":"acid-a","namespace":"ns"}},
                "spec":{{"teamId":"acid","numberOfInstances":1,"volume":{{"size":"1Gi"}},
                         "postgresql":{{"version":"15"}}{spec_extra}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn errors_name_the_field_without_its_value() {
        let table = [
            (
                r#","tolerations":[{"key":"a","tolerationSeconds":"soon"}]"#,
                "spec.tolerations[0].tolerationSeconds: invalid type, expected i64",
                "soon",
            ),
            (
                r#","env":[{"name":"PASSWORD","value":1234567}]"#,
                "spec.env[0].value: invalid type, expected a string",
                "1234567",
            ),
        ];
        for (extra, want, secret) in table {
            let err = parse(&manifest(extra)).unwrap_err();
            assert_eq!(err, want);
            assert!(!err.contains(secret), "{err}");
        }
        assert!(parse(&manifest("")).is_ok());
        assert!(parse(b"{}").unwrap_err().contains("missing field"));
    }
}
