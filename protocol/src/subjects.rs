//! Subject templates and NATS wildcard matching.
//!
//! Templates carry `{merchant_id}` and `{connector}` placeholders; a stream or a worker
//! subscription uses the template with every placeholder turned into `*`.

/// Placeholders a template may use.
pub const PLACEHOLDERS: [&str; 2] = ["{merchant_id}", "{connector}"];

/// Whether `token` can stand as one subject token (no dots, wildcards or whitespace).
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty() && !token.chars().any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control())
}

/// Checks a template: dot-separated tokens, each a valid token, a placeholder, or `*`/`>`.
pub fn validate_template(template: &str) -> Result<(), String> {
    let tokens: Vec<&str> = template.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        let ok = is_valid_token(t) || PLACEHOLDERS.contains(t) || *t == "*" || (*t == ">" && i == tokens.len() - 1);
        if !ok {
            return Err(format!("invalid subject token {t:?} in {template:?}"));
        }
    }
    Ok(())
}

/// The template with placeholders turned into `*`: what a stream or a worker subscribes to.
pub fn wildcard(template: &str) -> String {
    template.split('.').map(|t| if PLACEHOLDERS.contains(&t) { "*" } else { t }).collect::<Vec<_>>().join(".")
}

/// Fills the placeholders. Values must be valid tokens: a merchant id with a dot would
/// otherwise land on another subject.
pub fn render(template: &str, merchant_id: &str, connector: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for t in template.split('.') {
        let v = match t {
            "{merchant_id}" => merchant_id,
            "{connector}" => connector,
            other => other,
        };
        if (t == "{merchant_id}" || t == "{connector}") && !is_valid_token(v) {
            return Err(format!("{v:?} cannot be used in a subject (it replaces {t})"));
        }
        out.push(v);
    }
    Ok(out.join("."))
}

/// Whether a concrete subject matches a filter with `*` and `>` wildcards.
pub fn matches(filter: &str, subject: &str) -> bool {
    overlap(filter, subject)
}

/// Whether some concrete subject matches both filters.
pub fn overlap(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    let mut i = 0;
    loop {
        match (a.get(i), b.get(i)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (Some(x), Some(y)) => {
                if *x != "*" && *y != "*" && x != y {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert!(matches("hyperswitch.payments.>", "hyperswitch.payments.sync"));
        assert!(matches("hyperswitch.payments.*.capture", "hyperswitch.payments.m1.capture"));
        assert!(!matches("hyperswitch.payments.*.capture", "hyperswitch.payments.m1.sync"));
        assert!(!matches("hyperswitch.payments.capture", "hyperswitch.payments.capture.x"));
        assert!(matches("hyperswitch.payments.authorize", "hyperswitch.payments.authorize"));
        assert!(matches("hyperswitch.payments.*", "hyperswitch.payments.authorize"));
        assert!(matches(">", "a"));
        assert!(!matches("hyperswitch.payments", "hyperswitch.payments.authorize"));
        assert!(!matches("hyperswitch.refunds.*", "hyperswitch.payments.authorize"));
        assert!(!matches("hyperswitch.payments.authorize.x", "hyperswitch.payments.authorize"));
        assert!(overlap("a.*.c", "a.b.*"));
        assert!(!overlap("a.b", "a.b.c"));
    }

    #[test]
    fn rendering() {
        let t = "hyperswitch.payments.{merchant_id}.capture";
        assert_eq!(wildcard(t), "hyperswitch.payments.*.capture");
        assert_eq!(render(t, "m1", "x").unwrap(), "hyperswitch.payments.m1.capture");
        assert!(render(t, "m.1", "x").is_err());
        assert!(render(t, "", "x").is_err());
        assert!(validate_template("a.{merchant_id}.>").is_ok());
        assert!(validate_template("a..b").is_err());
        assert!(validate_template("a.>.b").is_err());
    }
}
