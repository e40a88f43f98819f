//! Turning what the user typed (`web`, `shop/web`, `web.2`) into a stack, a service and a slot.

use wharf_types::ServiceSummary;

use crate::error::CliError;

/// A service, fully named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    pub stack: String,
    pub service: String,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.stack, self.service)
    }
}

/// Resolves `stack/service`, or `service` when exactly one stack has a service of that name.
/// Unknown names get a did-you-mean; ambiguous ones list the candidates.
pub fn resolve_service(input: &str, services: &[ServiceSummary]) -> Result<ServiceRef, CliError> {
    let input = input.trim();
    if let Some((stack, service)) = input.split_once('/') {
        if stack.is_empty() || service.is_empty() || service.contains('/') {
            return Err(CliError::bad_input(
                format!("invalid service name \"{input}\": expected `stack/service` or `service`"),
                None,
            ));
        }
        if services
            .iter()
            .any(|s| s.stack == stack && s.name == service)
        {
            return Ok(ServiceRef {
                stack: stack.to_string(),
                service: service.to_string(),
            });
        }
        let qualified: Vec<String> = services
            .iter()
            .map(|s| format!("{}/{}", s.stack, s.name))
            .collect();
        return Err(unknown(input, &qualified, services.is_empty()));
    }
    let matches: Vec<&ServiceSummary> = services.iter().filter(|s| s.name == input).collect();
    match matches.as_slice() {
        [one] => Ok(ServiceRef {
            stack: one.stack.clone(),
            service: one.name.clone(),
        }),
        [] => {
            let mut names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
            names.sort();
            names.dedup();
            Err(unknown(input, &names, services.is_empty()))
        }
        many => {
            let mut candidates: Vec<String> = many
                .iter()
                .map(|s| format!("{}/{}", s.stack, s.name))
                .collect();
            candidates.sort();
            Err(CliError::bad_input(
                format!(
                    "service name \"{input}\" is ambiguous: {} stacks have it",
                    candidates.len()
                ),
                Some(format!("name one of: {}", candidates.join(", "))),
            ))
        }
    }
}

fn unknown(input: &str, candidates: &[String], none_at_all: bool) -> CliError {
    let hint = if none_at_all {
        "there are no services; deploy a stack with `wharf stack deploy`".to_string()
    } else {
        match did_you_mean(input, candidates) {
            Some(s) => format!("did you mean `{s}`?"),
            None => "list the services with `wharf service ls`".to_string(),
        }
    };
    CliError::bad_input(format!("no service named \"{input}\""), Some(hint))
}

/// The closest candidate, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(input: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| {
            (
                strsim::jaro_winkler(input, c),
                strsim::levenshtein(input, c),
                c,
            )
        })
        .filter(|(jw, lev, c)| *jw >= 0.85 || *lev <= (c.chars().count() / 3).max(1))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, _, c)| c.as_str())
}

/// `web`, `shop/web`, or either with `.N` for slot N (`web.2`): the service and the slot.
pub(crate) async fn resolve_with_slot(
    client: &wharf_client::Client,
    input: &str,
) -> Result<(ServiceRef, Option<u32>), CliError> {
    let services = client.list_services(None).await?;
    match resolve_service(input, &services) {
        Ok(r) => Ok((r, None)),
        Err(e) => match input.rsplit_once('.') {
            Some((svc, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                let slot = n.parse().map_err(|_| e)?;
                Ok((resolve_service(svc, &services)?, Some(slot)))
            }
            _ => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::DeployMode;

    fn svc(stack: &str, name: &str) -> ServiceSummary {
        ServiceSummary {
            stack: stack.into(),
            name: name.into(),
            image: "img".into(),
            mode: DeployMode::Replicated,
            replicas: 1,
            running: 1,
            healthy: 0,
            ports: vec![],
            updated_at: 0,
        }
    }

    fn all() -> Vec<ServiceSummary> {
        vec![
            svc("shop", "web"),
            svc("shop", "worker"),
            svc("blog", "web"),
            svc("blog", "db"),
        ]
    }

    fn r(stack: &str, service: &str) -> ServiceRef {
        ServiceRef {
            stack: stack.into(),
            service: service.into(),
        }
    }

    #[test]
    fn unique_and_qualified_names_resolve() {
        assert_eq!(
            resolve_service("worker", &all()).unwrap(),
            r("shop", "worker")
        );
        assert_eq!(resolve_service("db", &all()).unwrap(), r("blog", "db"));
        assert_eq!(
            resolve_service("shop/web", &all()).unwrap(),
            r("shop", "web")
        );
        assert_eq!(
            resolve_service("blog/web", &all()).unwrap(),
            r("blog", "web")
        );
    }

    #[test]
    fn ambiguous_names_list_candidates() {
        let e = resolve_service("web", &all()).unwrap_err();
        assert_eq!(e.exit_status(), 2);
        assert_eq!(
            e.render(),
            vec![
                "error: service name \"web\" is ambiguous: 2 stacks have it",
                "  hint: name one of: blog/web, shop/web",
            ]
        );
    }

    #[test]
    fn unknown_names_suggest_close_ones() {
        let e = resolve_service("wrker", &all()).unwrap_err();
        assert_eq!(e.exit_status(), 2);
        assert_eq!(
            e.render(),
            vec![
                "error: no service named \"wrker\"",
                "  hint: did you mean `worker`?"
            ]
        );
        let e = resolve_service("shop/db", &all()).unwrap_err();
        assert_eq!(e.render()[1], "  hint: did you mean `shop/web`?");
        let e = resolve_service("zzzzzz", &all()).unwrap_err();
        assert_eq!(
            e.render()[1],
            "  hint: list the services with `wharf service ls`"
        );
        let e = resolve_service("web", &[]).unwrap_err();
        assert!(e.render()[1].contains("there are no services"));
        assert!(resolve_service("a/b/c", &all()).is_err());
        assert!(resolve_service("/web", &all()).is_err());
    }
}
