//! `arv-local`: put files into, and read them back from, a crunch-run local store
//! (`crunch-run --local-store DIR`), so a container can be run without an Arvados cluster.
//!
//!   arv-local put DIR NAME FILE...   store the files as one collection, print its PDH
//!   arv-local cat DIR PDH PATH       write one file of a collection to stdout
//!   arv-local show DIR UUID          print a container record

use std::io;
use std::path::Path;
use std::process::ExitCode;

use crunch_run::arvados::manifest::{Manifest, single_stream_manifest};
use crunch_run::collection::stream_file;
use crunch_run::local_store::LocalStore;
use crunch_run::output::store_file;
use crunch_run::store::{ApiStore, FileBlocks};

fn main() -> ExitCode {
    // Any argument that is not UTF-8 leaves none, hence the usage (std::env::args would
    // panic on it).
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string().ok())
        .collect::<Option<_>>()
        .unwrap_or_default();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["put", dir, name, files @ ..] if !files.is_empty() => put(dir, name, files),
        ["cat", dir, pdh, path] => cat(dir, pdh, path),
        ["show", dir, uuid] => show(dir, uuid),
        _ => {
            eprintln!("usage: arv-local put DIR NAME FILE... | cat DIR PDH PATH | show DIR UUID");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arv-local: {e}");
            ExitCode::from(1)
        }
    }
}

type Error = Box<dyn std::error::Error>;

fn put(dir: &str, name: &str, files: &[&str]) -> Result<(), Error> {
    let store = LocalStore::open(Path::new(dir))?;
    let mut entries = Vec::new();
    for path in files {
        let ranges = store_file(&store, Path::new(path))?;
        let size = ranges.iter().map(|r| r.len).sum();
        let locators = ranges.into_iter().map(|r| r.locator).collect();
        let base = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("file name is not UTF-8")?;
        entries.push(FileBlocks {
            name: base.to_string(),
            locators,
            size,
        });
    }
    let saved = store.create_collection(name, &single_stream_manifest(&entries))?;
    println!("{}", saved.portable_data_hash);
    Ok(())
}

fn cat(dir: &str, pdh: &str, path: &str) -> Result<(), Error> {
    let store = LocalStore::open(Path::new(dir))?;
    let manifest = Manifest::parse(&store.get_collection_manifest(pdh)?)?;
    let file = manifest
        .files()
        .into_iter()
        .find(|f| f.path == path.as_bytes())
        .ok_or_else(|| format!("{pdh} has no file {path}"))?;
    stream_file(&store, &file, &mut io::stdout().lock(), &|| Ok(()))?;
    Ok(())
}

fn show(dir: &str, uuid: &str) -> Result<(), Error> {
    let store = LocalStore::open(Path::new(dir))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&store.get_container(uuid)?)?
    );
    Ok(())
}
