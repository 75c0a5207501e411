//! How rules find values: anything that maps a dotted path to a JSON value.

use std::marker::PhantomData;

use serde_json::{Map, Value};

/// Finds the value a rule's `field` path names, or `None` when nothing is there.
pub trait Resolve {
    fn resolve(&self, path: &str) -> Option<&Value>;
}

/// A JSON document resolves paths by walking objects by key and lists by index
/// (`data.request.headers`, `items.0.sku`).
impl Resolve for Value {
    fn resolve(&self, path: &str) -> Option<&Value> {
        walk(self, path)
    }
}

impl Resolve for Map<String, Value> {
    fn resolve(&self, path: &str) -> Option<&Value> {
        let (first, rest) = match path.split_once('.') {
            Some((first, rest)) => (first, Some(rest)),
            None => (path, None),
        };
        let value = self.get(first)?;
        match rest {
            Some(rest) => walk(value, rest),
            None => Some(value),
        }
    }
}

impl<T: Resolve + ?Sized> Resolve for &T {
    fn resolve(&self, path: &str) -> Option<&Value> {
        (**self).resolve(path)
    }
}

/// A resolver from a closure over borrowed data: `FnResolver::new(|path| lookup(&lead, path))`.
pub struct FnResolver<'v, F> {
    resolve: F,
    borrowed: PhantomData<&'v Value>,
}

impl<'v, F> FnResolver<'v, F>
where
    F: Fn(&str) -> Option<&'v Value>,
{
    pub fn new(resolve: F) -> Self {
        FnResolver { resolve, borrowed: PhantomData }
    }
}

impl<'v, F> Resolve for FnResolver<'v, F>
where
    F: Fn(&str) -> Option<&'v Value>,
{
    fn resolve(&self, path: &str) -> Option<&Value> {
        (self.resolve)(path)
    }
}

fn walk<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |current, segment| match current {
        Value::Object(object) => object.get(segment),
        Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}
