//! MovieLens, the yardstick data set: its files read into items, profiles and ratings, for
//! `streamrec import movielens DIR` (which stores them in a node) and for [`eval`] (the offline
//! evaluation `streamrec eval DIR` prints). Both layouts are understood: GroupLens'
//! `u.data`/`u.item`/`u.user` (Latin-1, `|` and tab separated) and RecBole's atomic files
//! (`*.inter`/`*.item`/`*.user`, tab separated with typed headers).
//!
//! Ratings become `rating` events with deterministic event ids, so importing twice stores each
//! rating once.

mod cold;
pub mod diversity;
pub mod eval;
mod fitted;
pub mod protocol;
mod tune;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{Event, EventKind, Item};

/// Why a directory could not be read as MovieLens.
#[derive(Debug, thiserror::Error)]
pub enum MovieLensError {
    #[error("{} has neither u.data nor a *.inter file: not a MovieLens directory", .0.display())]
    NotMovieLens(PathBuf),
    #[error("reading {}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: missing column {column}", .path.display())]
    NoField {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("{}: no `{name}` column", .path.display())]
    NoColumn { path: PathBuf, name: String },
    #[error("{}:{line}: bad {what}", .path.display())]
    Value {
        path: PathBuf,
        line: usize,
        what: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

type Result<T, E = MovieLensError> = std::result::Result<T, E>;

/// Parsed data, independent of the layout it came from.
#[derive(Debug, Default)]
pub struct Dataset {
    pub items: Vec<Item>,
    pub users: Vec<(String, serde_json::Value)>,
    /// (user, item, rating, epoch milliseconds)
    pub ratings: Vec<(String, String, f64, i64)>,
}

const GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

impl Dataset {
    /// The ratings as `rating` events, with ids made of user, item and time: a second import
    /// of the same files is dropped as duplicates.
    pub fn events(&self) -> Vec<Event> {
        self.ratings
            .iter()
            .map(|(user_id, item_id, rating, ts)| Event {
                event_id: format!("ml:{user_id}:{item_id}:{ts}"),
                user_id: user_id.clone(),
                item_id: item_id.clone(),
                kind: EventKind::Rating,
                value: Some(*rating),
                ts: *ts,
            })
            .collect()
    }
}

/// MovieLens files are Latin-1: every byte is one character.
fn read_latin1(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| MovieLensError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(bytes.into_iter().map(char::from).collect())
}

/// The non-blank lines of a Latin-1 file with their 0-based line numbers.
fn lines(path: &Path) -> Result<Vec<(usize, String)>> {
    Ok(read_latin1(path)?
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| (n, l.to_owned()))
        .collect())
}

fn find_ext(dir: &Path, ext: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == ext))
}

/// Reads the MovieLens files in `dir`; returns the layout found (`classic` or `atomic`) and the
/// data.
pub fn load(dir: &Path) -> Result<(&'static str, Dataset)> {
    if dir.join("u.data").is_file() {
        return Ok(("classic", load_classic(dir)?));
    }
    if let Some(inter) = find_ext(dir, "inter") {
        return Ok(("atomic", load_atomic(dir, &inter)?));
    }
    Err(MovieLensError::NotMovieLens(dir.to_owned()))
}

fn field<'a>(fields: &[&'a str], i: usize, path: &Path, line: usize) -> Result<&'a str> {
    fields
        .get(i)
        .copied()
        .ok_or_else(|| MovieLensError::NoField {
            path: path.to_owned(),
            line: line + 1,
            column: i + 1,
        })
}

/// `text` (field `what` of line `line`, 0-based) parsed as a `T`.
fn parse<T>(text: &str, what: &'static str, path: &Path, line: usize) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.trim().parse().map_err(|e| MovieLensError::Value {
        path: path.to_owned(),
        line: line + 1,
        what,
        source: Box::new(e),
    })
}

fn load_classic(dir: &Path) -> Result<Dataset> {
    let mut data = Dataset::default();
    let path = dir.join("u.data");
    for (n, line) in lines(&path)? {
        let f: Vec<&str> = line.split('\t').collect();
        let rating = parse(field(&f, 2, &path, n)?, "rating", &path, n)?;
        let ts: i64 = parse(field(&f, 3, &path, n)?, "timestamp", &path, n)?;
        data.ratings.push((
            field(&f, 0, &path, n)?.trim().to_owned(),
            field(&f, 1, &path, n)?.trim().to_owned(),
            rating,
            ts * 1000,
        ));
    }
    let path = dir.join("u.item");
    if path.is_file() {
        for (n, line) in lines(&path)? {
            let f: Vec<&str> = line.split('|').collect();
            let categories = GENRES
                .iter()
                .enumerate()
                .filter(|(g, _)| f.get(5 + g).is_some_and(|flag| flag.trim() == "1"))
                .map(|(_, name)| (*name).to_owned())
                .collect();
            let mut attributes = serde_json::Map::new();
            attributes.insert("release_date".into(), field(&f, 2, &path, n)?.into());
            data.items.push(item(
                field(&f, 0, &path, n)?,
                field(&f, 1, &path, n)?,
                categories,
                attributes,
            ));
        }
    }
    let path = dir.join("u.user");
    if path.is_file() {
        for (n, line) in lines(&path)? {
            let f: Vec<&str> = line.split('|').collect();
            let profile = serde_json::json!({
                "age": field(&f, 1, &path, n)?, "gender": field(&f, 2, &path, n)?, "occupation": field(&f, 3, &path, n)?,
            });
            data.users
                .push((field(&f, 0, &path, n)?.to_owned(), profile));
        }
    }
    Ok(data)
}

/// Column positions of an atomic file by field name (`user_id:token` → `user_id`).
fn columns(header: &str) -> HashMap<String, usize> {
    header
        .split('\t')
        .enumerate()
        .map(|(i, h)| (h.split(':').next().unwrap_or(h).trim().to_owned(), i))
        .collect()
}

/// A header without a column the layout needs.
fn no_column(path: &Path, name: &str) -> MovieLensError {
    MovieLensError::NoColumn {
        path: path.to_owned(),
        name: name.to_owned(),
    }
}

fn load_atomic(dir: &Path, inter: &Path) -> Result<Dataset> {
    let mut data = Dataset::default();
    let text = read_latin1(inter)?;
    let mut lines = text.lines().enumerate();
    let cols = columns(lines.next().map(|(_, l)| l).unwrap_or_default());
    let col = |name: &str| {
        cols.get(name)
            .copied()
            .ok_or_else(|| no_column(inter, name))
    };
    let (u, i, r, t) = (
        col("user_id")?,
        col("item_id")?,
        col("rating")?,
        col("timestamp")?,
    );
    for (n, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let rating: f64 = parse(field(&f, r, inter, n)?, "rating", inter, n)?;
        let ts: f64 = parse(field(&f, t, inter, n)?, "timestamp", inter, n)?;
        data.ratings.push((
            field(&f, u, inter, n)?.to_owned(),
            field(&f, i, inter, n)?.to_owned(),
            rating,
            (ts * 1000.0) as i64,
        ));
    }
    if let Some(path) = find_ext(dir, "item") {
        let text = read_latin1(&path)?;
        let mut lines = text.lines().enumerate();
        let cols = columns(lines.next().map(|(_, l)| l).unwrap_or_default());
        let id = cols
            .get("item_id")
            .copied()
            .ok_or_else(|| no_column(&path, "item_id"))?;
        for (n, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            let get = |name: &str| {
                cols.get(name)
                    .and_then(|&c| f.get(c))
                    .map(|s| s.trim())
                    .unwrap_or_default()
            };
            let categories = get("class").split_whitespace().map(str::to_owned).collect();
            let mut attributes = serde_json::Map::new();
            if !get("release_year").is_empty() {
                attributes.insert("release_year".into(), get("release_year").into());
            }
            let title = if get("movie_title").is_empty() {
                field(&f, id, &path, n)?
            } else {
                get("movie_title")
            };
            data.items.push(item(
                field(&f, id, &path, n)?,
                title,
                categories,
                attributes,
            ));
        }
    }
    if let Some(path) = find_ext(dir, "user") {
        let text = read_latin1(&path)?;
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .split('\t')
            .map(|h| h.split(':').next().unwrap_or(h).to_owned())
            .collect();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            let mut profile = serde_json::Map::new();
            let mut user_id = None;
            for (name, value) in header.iter().zip(&f) {
                if name == "user_id" {
                    user_id = Some(value.to_string());
                } else if name != "zip_code" {
                    profile.insert(name.clone(), (*value).into());
                }
            }
            if let Some(user_id) = user_id {
                data.users.push((user_id, profile.into()));
            }
        }
    }
    Ok(data)
}

fn item(
    id: &str,
    title: &str,
    categories: Vec<String>,
    attributes: serde_json::Map<String, serde_json::Value>,
) -> Item {
    Item {
        item_id: id.trim().to_owned(),
        title: title.trim().to_owned(),
        categories,
        tags: Vec::new(),
        attributes,
        available: true,
        updated_at: common::now_millis(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_layouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let classic = dir.path().join("classic");
        std::fs::create_dir(&classic).expect("dir");
        std::fs::write(
            classic.join("u.data"),
            "1\t10\t5\t881250949\n2\t10\t3\t881250950\n",
        )
        .expect("write");
        let mut flags = vec!["0"; 19];
        flags[5] = "1";
        std::fs::write(
            classic.join("u.item"),
            format!(
                "10|Caf\u{e9} (1995)|01-Jan-1995||http://x|{}\n",
                flags.join("|")
            ),
        )
        .expect("write");
        let (format, data) = load(&classic).expect("classic");
        assert_eq!(format, "classic");
        assert_eq!(
            data.ratings[0],
            ("1".into(), "10".into(), 5.0, 881_250_949_000)
        );
        assert_eq!(data.items[0].categories, vec!["Comedy"]);

        let atomic = dir.path().join("atomic");
        std::fs::create_dir(&atomic).expect("dir");
        std::fs::write(
            atomic.join("ml.inter"),
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t3\t4\t100\n",
        )
        .expect("write");
        std::fs::write(
            atomic.join("ml.item"),
            "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n3\tHeat\t1995\tAction Crime\n",
        )
        .expect("write");
        let (format, data) = load(&atomic).expect("atomic");
        assert_eq!(format, "atomic");
        assert_eq!(data.ratings, vec![("7".into(), "3".into(), 4.0, 100_000)]);
        let events = data.events();
        assert_eq!(
            (events[0].event_id.as_str(), events[0].kind, events[0].value),
            ("ml:7:3:100000", EventKind::Rating, Some(4.0))
        );
        assert_eq!(data.items[0].categories, vec!["Action", "Crime"]);
        assert!(load(dir.path()).is_err());
    }
}
