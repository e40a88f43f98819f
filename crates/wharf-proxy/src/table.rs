//! The routing table: host name, then the longest path prefix, to a value (a compiled route).
//!
//! Pure and allocation-free on lookup (except for host names with upper-case letters).
//! Precedence: an exact host beats a wildcard (`*.example.com`, longest suffix first), which
//! beats a route without hosts; within each, the longest matching path prefix wins and config
//! order breaks ties. A host whose routes match no prefix falls through to the next group.

use std::borrow::Cow;
use std::collections::HashMap;

/// Host and path to `T`.
#[derive(Debug)]
pub(crate) struct RouteTable<T> {
    exact: HashMap<Box<str>, Vec<Entry<T>>>,
    /// Suffix including the leading dot (`.example.com`), longest first.
    wildcard: Vec<(Box<str>, Vec<Entry<T>>)>,
    any: Vec<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    prefix: Box<str>,
    value: T,
}

impl<T: Clone> RouteTable<T> {
    /// Builds the table from `(hosts, prefix, value)` in config order.
    pub(crate) fn new<'a>(routes: impl IntoIterator<Item = (&'a [String], &'a str, T)>) -> Self {
        let mut exact: HashMap<Box<str>, Vec<Entry<T>>> = HashMap::new();
        let mut wildcard: Vec<(Box<str>, Vec<Entry<T>>)> = Vec::new();
        let mut any = Vec::new();
        for (hosts, prefix, value) in routes {
            let entry = || Entry {
                prefix: prefix.into(),
                value: value.clone(),
            };
            if hosts.is_empty() {
                any.push(entry());
            }
            for host in hosts {
                let host = host.to_ascii_lowercase();
                if let Some(suffix) = host.strip_prefix('*') {
                    match wildcard.iter_mut().find(|(s, _)| **s == *suffix) {
                        Some((_, list)) => list.push(entry()),
                        None => wildcard.push((suffix.into(), vec![entry()])),
                    }
                } else {
                    exact.entry(host.into()).or_default().push(entry());
                }
            }
        }
        // Stable sorts keep config order among equal lengths.
        let by_prefix =
            |list: &mut Vec<Entry<T>>| list.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        exact.values_mut().for_each(by_prefix);
        wildcard.iter_mut().for_each(|(_, list)| by_prefix(list));
        by_prefix(&mut any);
        wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        RouteTable {
            exact,
            wildcard,
            any,
        }
    }

    /// The route for `host` (without port) and `path` (without query).
    pub(crate) fn find(&self, host: &str, path: &str) -> Option<&T> {
        let host: Cow<str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let host = host.strip_suffix('.').unwrap_or(&host);
        if let Some(v) = self
            .exact
            .get(host)
            .and_then(|list| first_prefix(list, path))
        {
            return Some(v);
        }
        for (suffix, list) in &self.wildcard {
            if let Some(label) = host.strip_suffix(&**suffix)
                && !label.is_empty()
                && !label.contains('.')
                && let Some(v) = first_prefix(list, path)
            {
                return Some(v);
            }
        }
        first_prefix(&self.any, path)
    }
}

fn first_prefix<'a, T>(list: &'a [Entry<T>], path: &str) -> Option<&'a T> {
    list.iter()
        .find(|e| prefix_matches(&e.prefix, path))
        .map(|e| &e.value)
}

/// `/api` matches `/api`, `/api/` and `/api/x` but not `/apix`; `/api/` matches `/api/x`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable<&'static str> {
        let s = |v: &[&str]| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        let routes = [
            (s(&["app.example.com"]), "/", "app"),
            (s(&["app.example.com"]), "/api", "app-api"),
            (s(&["*.example.com"]), "/", "wild"),
            (s(&["*.b.example.com"]), "/", "wild-b"),
            (s(&[]), "/", "default"),
            (s(&[]), "/static/", "static"),
            (s(&["only.example.com"]), "/x", "only-x"),
        ];
        RouteTable::new(routes.iter().map(|(h, p, v)| (h.as_slice(), *p, *v)))
    }

    /// One row per case: host, path, expected route.
    #[test]
    fn lookups() {
        let t = table();
        let cases = [
            ("app.example.com", "/", Some("app")),
            ("APP.Example.com", "/api/v1", Some("app-api")),
            ("app.example.com.", "/api", Some("app-api")),
            ("app.example.com", "/apix", Some("app")),
            ("x.example.com", "/", Some("wild")),
            ("x.b.example.com", "/", Some("wild-b")),
            ("x.y.c.example.com", "/", Some("default")),
            ("example.com", "/", Some("default")),
            ("other", "/static/a.css", Some("static")),
            ("other", "/static", Some("default")),
            // no prefix matches for the exact host: falls through to the wildcard
            ("only.example.com", "/y", Some("wild")),
            ("only.example.com", "/x/1", Some("only-x")),
        ];
        for (host, path, want) in cases {
            assert_eq!(t.find(host, path).copied(), want, "host {host} path {path}");
        }
    }

    #[test]
    fn no_default_route_means_none() {
        let hosts = vec!["a.test".to_string()];
        let t = RouteTable::new([(hosts.as_slice(), "/", 1)]);
        assert_eq!(t.find("b.test", "/"), None);
        assert_eq!(t.find("a.test", "/"), Some(&1));
    }
}
