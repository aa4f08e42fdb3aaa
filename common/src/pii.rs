//! Which profile fields are personal (`pii.fields`), decided in one place for every use: sealing
//! at rest, and keeping them out of content features and model artifacts.
//!
//! A name is personal when it equals a configured field ignoring case (`Email`, `EMAIL`). A value
//! is personal when it is held under a personal name, at any depth: `{"contact": {"email": ..}}`
//! holds one, and so does `{"people": [{"Name": ..}]}`. Walks are iterative, so no input nests
//! deep enough to exhaust the stack.

use serde_json::Value;

/// The configured personal field names.
#[derive(Clone, Copy, Debug)]
pub struct PersonalFields<'a> {
    fields: &'a [String],
}

impl<'a> PersonalFields<'a> {
    pub fn new(fields: &'a [String]) -> Self {
        Self { fields }
    }

    /// Whether `name` is a personal field, ignoring case.
    pub fn is_personal(&self, name: &str) -> bool {
        self.fields.iter().any(|f| same_ignoring_case(f, name))
    }

    /// Whether `value` has a personal field name among its keys, at any depth.
    pub fn holds_personal(&self, value: &Value) -> bool {
        let mut pending = vec![value];
        while let Some(v) = pending.pop() {
            match v {
                Value::Object(map) => {
                    if map.keys().any(|k| self.is_personal(k)) {
                        return true;
                    }
                    pending.extend(map.values());
                }
                Value::Array(values) => pending.extend(values),
                _ => {}
            }
        }
        false
    }

    /// Removes every personal field, with everything under it, at any depth.
    pub fn strip(&self, value: &mut Value) {
        let mut pending = vec![value];
        while let Some(v) = pending.pop() {
            match v {
                Value::Object(map) => {
                    map.retain(|k, _| !self.is_personal(k));
                    pending.extend(map.values_mut());
                }
                Value::Array(values) => pending.extend(values.iter_mut()),
                _ => {}
            }
        }
    }

    /// Whether a content feature token was made from a personal attribute: `a:<name>` followed
    /// by `=`, `:` or `~` (the shapes `models::content` gives attribute features), the name
    /// compared ignoring case. Errs on the side of personal when a key itself holds one of those
    /// separators.
    pub fn is_personal_token(&self, token: &str) -> bool {
        let Some(rest) = token.strip_prefix("a:") else {
            return false;
        };
        rest.match_indices(['=', ':', '~'])
            .any(|(at, _)| self.is_personal(&rest[..at]))
    }
}

fn same_ignoring_case(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<String> {
        ["email", "name", "notes"].map(String::from).to_vec()
    }

    #[test]
    fn personal_names_match_ignoring_case_at_any_depth() {
        let fields = fields();
        let p = PersonalFields::new(&fields);
        assert!(p.is_personal("Email") && p.is_personal("NAME") && !p.is_personal("names"));
        let mut profile = serde_json::json!({
            "age": 36,
            "Notes": "private",
            "contact": {"EMail": "ada@example.org", "city": "London"},
            "people": [{"name": "Charles"}, {"role": "friend"}],
        });
        assert!(p.holds_personal(&profile["contact"]));
        assert!(p.holds_personal(&profile["people"]));
        assert!(!p.holds_personal(&serde_json::json!({"city": ["x", {"y": 1}]})));
        p.strip(&mut profile);
        assert_eq!(
            profile,
            serde_json::json!({
                "age": 36,
                "contact": {"city": "London"},
                "people": [{}, {"role": "friend"}],
            })
        );
    }

    #[test]
    fn attribute_tokens_of_personal_fields_are_recognised() {
        let fields = fields();
        let p = PersonalFields::new(&fields);
        for token in ["a:email=a@b.c", "a:Email:ada", "a:NOTES~1990", "a:name:x=y"] {
            assert!(p.is_personal_token(token), "{token}");
        }
        for token in [
            "a:age=36",
            "a:username=x",
            "c:email",
            "w:name",
            "a:emails:x",
        ] {
            assert!(!p.is_personal_token(token), "{token}");
        }
    }

    #[test]
    fn deep_nesting_does_not_exhaust_the_stack() {
        let fields = fields();
        let p = PersonalFields::new(&fields);
        let mut deep = Value::Null;
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        assert!(!p.holds_personal(&deep));
        p.strip(&mut deep);
        // Dropping a deep value recurses in serde_json; unwind it by hand.
        while let Value::Array(mut inner) = deep {
            deep = inner.pop().unwrap_or(Value::Null);
        }
    }
}
